"""Flat diagonal GMM on MNIST: deepmix's EM against scikit-learn's GaussianMixture, same run.

usage: .venv/bin/python benchmarks/gmm_vs_sklearn.py [--k 25 100] [--json FILE] [--no-sklearn]

Pixels scaled to [0, 1], 784 dimensions, scikit-learn defaults on both sides (k-means init,
reg_covar 1e-6, tol 1e-3, max_iter 100, random_state 0). Prints fit seconds, EM iterations,
mean train and test log-likelihood (nats per image) and the time ratio.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from deepmix.data import load_images
from deepmix.models.gmm import GaussianMixture
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[25])
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--json", default=str(HERE / "results" / "gmm_vs_sklearn.json"))
    args = ap.parse_args()
    tr, te = load_images("mnist", "train"), load_images("mnist", "test")
    Xtr = tr.images.reshape(len(tr), -1).astype(np.float64) / 255.0
    Xte = te.images.reshape(len(te), -1).astype(np.float64) / 255.0
    warnings.simplefilter("ignore")  # convergence warnings are reported as n_iter
    rows = []
    for K in args.k:
        runs = [("deepmix float64", lambda: GaussianMixture(K, random_state=0)),
                ("deepmix float32", lambda: GaussianMixture(K, random_state=0,
                                                            dtype=torch.float32))]
        if not args.no_sklearn:
            from sklearn.mixture import GaussianMixture as SkGMM

            runs.append(("scikit-learn", lambda: SkGMM(K, covariance_type="diag", random_state=0)))
        for name, make in runs:
            model = make()
            t = time.perf_counter()
            model.fit(Xtr)
            seconds = time.perf_counter() - t
            row = {"k": K, "model": name, "fit_seconds": seconds, "n_iter": int(model.n_iter_),
                   "converged": bool(model.converged_), "train_ll": float(model.score(Xtr)),
                   "test_ll": float(model.score(Xte))}
            rows.append(row)
            print(f"K={K:4d} {name:16s} {seconds:7.2f} s  {row['n_iter']:3d} iterations  "
                  f"train {row['train_ll']:10.2f}  test {row['test_ll']:10.2f} nats/image")
        sk = [r for r in rows if r["k"] == K and r["model"] == "scikit-learn"]
        if sk:
            for r in rows:
                if r["k"] == K and r["model"] != "scikit-learn":
                    r["speedup_vs_sklearn"] = sk[0]["fit_seconds"] / r["fit_seconds"]
                    print(f"K={K:4d} {r['model']}: {r['speedup_vs_sklearn']:.2f}x faster than "
                          f"scikit-learn, test LL {r['test_ll'] - sk[0]['test_ll']:+.2f} nats")
    write_json_atomic(args.json, {"threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
