"""Flat diagonal GMM on MNIST: deepmix's EM against scikit-learn's GaussianMixture, same run.

usage: .venv/bin/python benchmarks/gmm_vs_sklearn.py [--k 25 100] [--seeds 0 1 2]
       [--json FILE] [--no-sklearn] [--models float64 float32] [--threads 2]
       [--max-iter 100] [--tol 1e-3] [--verbose]

Pixels scaled to [0, 1], 784 dimensions, scikit-learn defaults on both sides (k-means init,
reg_covar 1e-6, tol 1e-3, max_iter 100). Prints, per seed, fit seconds, EM iterations, mean
train and test log-likelihood (nats per image), then the means over seeds and the time ratio:
the test log-likelihood depends on the k-means local optimum, so single seeds mislead.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from deepmix.data import load_images
from deepmix import GaussianMixture
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[25])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--models", nargs="*", default=["float64", "float32"],
                    choices=["float64", "float32"],
                    help="deepmix precisions to run (scikit-learn runs unless --no-sklearn)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--max-iter", type=int, default=100,
                    help="EM iterations at most (100 = scikit-learn's default); a small value "
                         "with --tol 0 compares the cost of init + a fixed number of iterations")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--verbose", action="store_true", help="scikit-learn prints its iterations")
    ap.add_argument("--json", default=str(HERE / "results" / "gmm_vs_sklearn.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tr, te = load_images("mnist", "train"), load_images("mnist", "test")
    Xtr = tr.images.reshape(len(tr), -1).astype(np.float64) / 255.0
    Xte = te.images.reshape(len(te), -1).astype(np.float64) / 255.0
    warnings.simplefilter("ignore")  # convergence warnings are reported as n_iter
    rows = []
    summary = []
    for K in args.k:
        dtypes = {"float64": torch.float64, "float32": torch.float32}
        common = {"max_iter": args.max_iter, "tol": args.tol}
        runs = [(f"deepmix {name}", lambda seed, dt=dtypes[name]:
                 GaussianMixture(K, random_state=seed, dtype=dt, **common)) for name in args.models]
        if not args.no_sklearn:
            from sklearn.mixture import GaussianMixture as SkGMM

            runs.append(("scikit-learn",
                         lambda seed: SkGMM(K, covariance_type="diag", random_state=seed,
                                            verbose=2 if args.verbose else 0, verbose_interval=1,
                                            **common)))
        for name, make in runs:
            for seed in args.seeds:
                model = make(seed)
                t = time.perf_counter()
                model.fit(Xtr)
                seconds = time.perf_counter() - t
                row = {"k": K, "model": name, "seed": seed, "fit_seconds": seconds,
                       "n_iter": int(model.n_iter_), "converged": bool(model.converged_),
                       "train_ll": float(model.score(Xtr)), "test_ll": float(model.score(Xte))}
                if getattr(model, "seconds_", None):
                    # deepmix: k-means initialisation + the first E-step, then the EM iterations
                    row["init_seconds"] = float(model.seconds_[0])
                rows.append(row)
                print(f"K={K:4d} {name:16s} seed {seed}: {seconds:7.2f} s  {row['n_iter']:3d} "
                      f"iterations  train {row['train_ll']:9.2f}  test {row['test_ll']:9.2f}",
                      flush=True)
                # Written after every fit, so a long K = 100 run that is cut short keeps its rows.
                write_json_atomic(args.json, {"threads": torch.get_num_threads(),
                                              "seeds": args.seeds, "max_iter": args.max_iter,
                                              "tol": args.tol, "rows": rows,
                                              "summary": summary})
            mine = [r for r in rows if r["k"] == K and r["model"] == name]
            summary.append({"k": K, "model": name,
                            "mean_fit_seconds": float(np.mean([r["fit_seconds"] for r in mine])),
                            "mean_test_ll": float(np.mean([r["test_ll"] for r in mine])),
                            "std_test_ll": float(np.std([r["test_ll"] for r in mine]))})
        sk = [m for m in summary if m["k"] == K and m["model"] == "scikit-learn"]
        for m in summary:
            if m["k"] != K:
                continue
            line = (f"K={K:4d} {m['model']:16s} mean over seeds {args.seeds}: "
                    f"{m['mean_fit_seconds']:6.2f} s, test {m['mean_test_ll']:.2f} "
                    f"± {m['std_test_ll']:.2f}")
            if sk and m["model"] != "scikit-learn":
                m["speedup_vs_sklearn"] = sk[0]["mean_fit_seconds"] / m["mean_fit_seconds"]
                m["test_ll_minus_sklearn"] = m["mean_test_ll"] - sk[0]["mean_test_ll"]
                line += (f"  ({m['speedup_vs_sklearn']:.2f}x faster, test LL "
                         f"{m['test_ll_minus_sklearn']:+.2f} nats vs scikit-learn)")
            print(line)
    write_json_atomic(args.json, {"threads": torch.get_num_threads(), "seeds": args.seeds,
                                  "max_iter": args.max_iter, "tol": args.tol,
                                  "rows": rows, "summary": summary})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
