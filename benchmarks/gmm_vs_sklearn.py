"""Flat diagonal GMM on dequantised MNIST: deepmix against scikit-learn, defaults on both sides.

usage: .venv/bin/python benchmarks/gmm_vs_sklearn.py [--k 25 100] [--seeds 0 1 2]
       [--data mnist|digits] [--subset N] [--quick] [--plain] [--threads T] [--json FILE]
       [--sklearn-cache DIR]

The protocol density estimation uses: pixels dequantised, (p + u) / 256 with u ~ U[0, 1)
(one fixed draw per split, seed 0), flattened to 784 dimensions, 60 000 train / 10 000 test
rows as float64 arrays. Both libraries are called as a user calls them, with their defaults:
``deepmix.GaussianMixture(K, covariance_type="diag", random_state=seed)`` and
``sklearn.mixture.GaussianMixture(K, covariance_type="diag", random_state=seed)`` (k-means init,
reg_covar 1e-6, tol 1e-3, max_iter 100), alternating the two in one run (the library that goes
first alternates by seed). Prints per fit the seconds, EM iterations, convergence and train /
test log-likelihood (nats per image), then per K the means over seeds, the speed ratio
(scikit-learn seconds / deepmix seconds) and the test log-likelihood difference; the goal is a
ratio >= 3 at a test log-likelihood >= scikit-learn's. ``--plain`` adds a gentler, labelled
row per K: pixels / 255 without dequantisation (most variances collapse onto reg_covar and EM
stops early). ``--sklearn-cache DIR`` keeps every scikit-learn fit's row (and its per-image
test log-likelihoods, ``.npy``) in DIR and reuses it on later runs with the same data, K, seed
and scikit-learn version (its seconds are then those of the run that made it, marked
``cached``): a K = 100 scikit-learn fit takes minutes. ``--quick``: one seed, K = 25, 10 000 training rows (a smoke run; ``--data
digits`` needs no download). Writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.mixture import GaussianMixture as SkGMM

from deepmix import GaussianMixture
from deepmix.data import load_images
from deepmix.errors import DeepmixError
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent


def load(name: str, split: str, dequantize: bool, subset: int | None) -> np.ndarray:
    """One split as a float64 (N, D) array: dequantised (seed 0) or plain pixels / (levels-1)."""
    ds = load_images(name, split)
    x = ds.to_tensor(dequantize=dequantize, generator=torch.Generator().manual_seed(0))
    x = x.reshape(len(ds), -1).double().numpy()
    return x[:subset] if subset else x


def run_one(library: str, K: int, seed: int, Xtr: np.ndarray, Xte: np.ndarray,
            cache: Path | None = None, key: str = "") -> dict:
    """One fit and its scores; with ``cache`` (scikit-learn only) the row is read from / written
    to ``cache/key.json`` (per-image test log-likelihoods beside it, ``key.npy``)."""
    hit = cache / f"{key}.json" if cache is not None and library == "sklearn" else None
    if hit is not None and hit.exists():
        return {**json.loads(hit.read_text()), "cached": True}
    if library == "sklearn":
        model = SkGMM(K, covariance_type="diag", random_state=seed)
    else:   # "deepmix", or "deepmix-skinit": scikit-learn's k-means labels, then deepmix's EM
        model = GaussianMixture(K, covariance_type="diag", random_state=seed,
                                **({"init_params": "sklearn-kmeans"}
                                   if library == "deepmix-skinit" else {}))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported as "converged"
        model.fit(Xtr)
    seconds = time.perf_counter() - t
    row = {"library": library, "k": K, "seed": seed, "fit_seconds": seconds,
           "n_iter": int(model.n_iter_), "converged": bool(model.converged_),
           "train_ll": float(model.score(Xtr))}
    per_image = np.asarray(model.score_samples(Xte), dtype=np.float64)
    # The mean is swayed by a few test images far outside every component (a pixel that is
    # (nearly) constant in a component's training images has variance ~2e-6): the median
    # shows whether a difference is the bulk of the test set or a handful of images.
    row["test_ll"] = float(per_image.mean())
    row["test_ll_median"] = float(np.median(per_image))
    if hit is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"{key}.npy", per_image)
        write_json_atomic(hit, row)
    if library == "deepmix" and model.seconds_:
        # k-means initialisation + the first E-step, then the EM iterations
        row["init_seconds"] = float(model.seconds_[0])
    return row


def summarise(rows: list[dict], K: int, setting: str) -> dict:
    def mean(lib: str, key: str) -> float:
        return float(np.mean([r[key] for r in rows if r["library"] == lib]))

    out = {"k": K, "setting": setting}
    for lib in sorted({r["library"] for r in rows}):
        mine = [r for r in rows if r["library"] == lib]
        out[lib] = {"mean_fit_seconds": mean(lib, "fit_seconds"),
                    "mean_n_iter": mean(lib, "n_iter"),
                    "converged": sum(r["converged"] for r in mine),
                    "mean_train_ll": mean(lib, "train_ll"),
                    "mean_test_ll": mean(lib, "test_ll"),
                    "std_test_ll": float(np.std([r["test_ll"] for r in mine]))}
        if all("test_ll_median" in r for r in mine):
            out[lib]["mean_test_ll_median"] = mean(lib, "test_ll_median")
    out["speedup"] = out["sklearn"]["mean_fit_seconds"] / out["deepmix"]["mean_fit_seconds"]
    out["test_ll_minus_sklearn"] = out["deepmix"]["mean_test_ll"] - out["sklearn"]["mean_test_ll"]
    out["goal_met"] = bool(out["speedup"] >= 3.0 and out["test_ll_minus_sklearn"] >= 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[25, 100])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", default="mnist", help="mnist (default) or digits (no download)")
    ap.add_argument("--subset", type=int, default=None, help="first N training rows only")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: seed 0, K = 25, 10 000 training rows")
    ap.add_argument("--plain", action="store_true",
                    help="also the gentler setting (no dequantisation), as extra rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); scikit-learn keeps its own")
    ap.add_argument("--libraries", nargs="+", default=["deepmix", "sklearn"],
                    choices=["deepmix", "sklearn", "deepmix-skinit"],
                    help="fit only these (e.g. sklearn alone to fill --sklearn-cache); "
                         "deepmix-skinit: deepmix EM from scikit-learn's k-means labels "
                         "(init_params='sklearn-kmeans'), a parity row")
    ap.add_argument("--sklearn-cache", default=None, metavar="DIR",
                    help="reuse scikit-learn fits kept in DIR (written there when missing)")
    ap.add_argument("--json", default=None,
                    help="default benchmarks/results/gmm_vs_sklearn[_quick].json")
    args = ap.parse_args()
    if args.quick:
        args.k, args.seeds = [25], [0]
        args.subset = args.subset or 10_000
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.json or HERE / "results" /
                f"gmm_vs_sklearn{'_quick' if args.quick else ''}.json")
    settings = [("dequantised", True)] + ([("plain pixels (gentler)", False)] if args.plain
                                           else [])
    meta = {"data": args.data, "subset": args.subset, "seeds": args.seeds, "k": args.k,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "sklearn": sklearn.__version__, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
            "protocol": "default arguments on both sides; dequantised (p + u) / 256, u ~ "
                        "U[0,1) seed 0; test LL in nats per image"}
    rows: list[dict] = []
    summary: list[dict] = []
    print(f"{'setting':24s} {'K':>4s} {'library':8s} {'seed':>4s} {'fit s':>8s} {'iter':>4s} "
          f"{'conv':>5s} {'train LL':>9s} {'test LL':>9s}")
    for setting, dequantize in settings:
        try:
            Xtr = load(args.data, "train", dequantize, args.subset)
        except DeepmixError as exc:
            raise SystemExit(f"gmm_vs_sklearn: {exc}\n(a smoke run without a download: "
                             f"--quick --data digits)") from None
        Xte = load(args.data, "test", dequantize, None)
        for K in args.k:
            mine = []
            for i, seed in enumerate(args.seeds):
                order = (("deepmix", "sklearn") if i % 2 == 0 else ("sklearn", "deepmix")) + (
                    "deepmix-skinit",)
                for lib in (lib for lib in order if lib in args.libraries):
                    key = (f"{args.data}_{'deq' if dequantize else 'plain'}_n{len(Xtr)}_k{K}"
                           f"_s{seed}_sk{sklearn.__version__}")
                    row = {"setting": setting,
                           **run_one(lib, K, seed, Xtr, Xte,
                                     Path(args.sklearn_cache) if args.sklearn_cache else None,
                                     key)}
                    rows.append(row)
                    mine.append(row)
                    print(f"{setting:24s} {K:4d} {lib:8s} {seed:4d} {row['fit_seconds']:8.2f} "
                          f"{row['n_iter']:4d} {str(row['converged']):>5s} "
                          f"{row['train_ll']:9.2f} {row['test_ll']:9.2f}", flush=True)
                    # After every fit, so that a long run cut short keeps its rows.
                    write_json_atomic(path, {**meta, "rows": rows, "summary": summary})
            if {"deepmix", "sklearn"} <= set(args.libraries):
                summary.append(summarise(mine, K, setting))
    print()
    print(f"{'setting':24s} {'K':>4s} {'deepmix s':>10s} {'sklearn s':>10s} {'ratio':>6s} "
          f"{'deepmix LL':>11s} {'sklearn LL':>11s} {'LL diff':>8s} {'median diff':>11s} "
          f"{'train diff':>10s} {'iter d/s':>9s}  goal")
    for s in summary:
        d, k = s["deepmix"], s["sklearn"]
        med = d.get("mean_test_ll_median", np.nan) - k.get("mean_test_ll_median", np.nan)
        print(f"{s['setting']:24s} {s['k']:4d} {d['mean_fit_seconds']:10.2f} "
              f"{k['mean_fit_seconds']:10.2f} {s['speedup']:5.2f}x {d['mean_test_ll']:11.2f} "
              f"{k['mean_test_ll']:11.2f} {s['test_ll_minus_sklearn']:+8.2f} {med:+11.2f} "
              f"{d['mean_train_ll'] - k['mean_train_ll']:+10.2f} "
              f"{d['mean_n_iter']:4.0f}/{k['mean_n_iter']:<4.0f}  "
              f"{'met' if s['goal_met'] else 'not met'}")
        if "deepmix-skinit" in s:
            p = s["deepmix-skinit"]
            print(f"{'':24s} {'':4s} deepmix EM from scikit-learn's k-means labels: test LL "
                  f"{p['mean_test_ll']:.2f} ({p['mean_test_ll'] - k['mean_test_ll']:+.2f}), "
                  f"iterations {p['mean_n_iter']:.0f}, {p['mean_fit_seconds']:.1f} s")
    meta["load_after"] = os.getloadavg()[0]
    write_json_atomic(path, {**meta, "rows": rows, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
