"""Analogue of the deep GMM paper's Table 2 on MNIST (spec deep-gmm.md section 6 (c)): deep
against wide at equal parameter count.

usage: .venv/bin/python benchmarks/deep_gmm/table2.py [--quick] [--k 1 2 4 8] [--n 4]
       [--em 10] [--first-updates 10000] [--updates 3000] [--lr 1e-3] [--threads 2]

3 HC (5x5) + k shared block-diagonal layers of n transformations (fold r = 4) against the
equal-parameter flat model 3 HC + 1 layer of n*k transformations, and scikit-learn's diagonal
GaussianMixture with K = params / (2*784 + 1) components. Hard EM on the library's loop
(coordinate E step once the paths exceed 10^4, else exact). Reports the validation and test
lower bound (best path found; exact log p where tractable) in nats per image and bits/dim.
What to look for: deep beats flat at equal parameters; validation LL falls once n is too large.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import sample_grid, splits, summary, train_hard_em, write_results
from deepmix.models import DeepGMM, DeepGMMConfig


def evaluate(model: DeepGMM, x: torch.Tensor) -> dict:
    with torch.no_grad():
        lb = model.log_prob_lower_bound(x.float(), generator=torch.Generator().manual_seed(0))
    return summary(lb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, nargs="+", default=None)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--em", type=int, default=None)
    ap.add_argument("--first-updates", type=int, default=None)
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = args.k or ([1, 2] if args.quick else [1, 2, 4, 8])
    em = args.em or (3 if args.quick else 10)
    first = args.first_updates or (1000 if args.quick else 10000)
    later = args.updates or (300 if args.quick else 3000)
    train, valid, test = splits(args.quick)
    rows = []
    trained = []
    for k in ks:
        for label, layers in ((f"deep: 3 HC + {k} x {args.n}",
                               ",".join(["hc5"] * 3 + [f"bd{args.n}"] * k)),
                              (f"flat: 3 HC + 1 x {args.n * k}",
                               ",".join(["hc5"] * 3 + [f"bd{args.n * k}"]))):
            if k == 1 and label.startswith("flat"):
                continue                                       # the same model
            model = DeepGMM(DeepGMMConfig(shape=(28, 28, 1), fold=4, layers=layers,
                                          dtype="float32"))
            t = time.perf_counter()
            obj = train_hard_em(model, train.float(), first_updates=first, later_updates=later,
                                em_iterations=em, lr=args.lr)
            row = {"model": label, "layers": layers, "params": model.n_params(),
                   "log_paths": round(model.log_n_paths, 2),
                   "train_lb_per_e_step": [round(v, 1) for v in obj.e_scores],
                   "valid": evaluate(model, valid), "test": evaluate(model, test),
                   "seconds": round(time.perf_counter() - t, 1)}
            rows.append(row)
            trained.append((label, model))
            print(f"{label:28s} {row['params']:8d} params  valid LB {row['valid']['nats']:8.1f} "
                  f"({row['valid']['bits_per_dim']:.3f} bits/dim)  test LB "
                  f"{row['test']['nats']:8.1f}  {row['seconds']:7.1f} s", flush=True)
            if not args.no_sklearn and label.startswith("deep"):
                from sklearn.mixture import GaussianMixture

                K = max(1, round(model.n_params() / (2 * 784 + 1)))
                t = time.perf_counter()
                gm = GaussianMixture(K, covariance_type="diag", random_state=0,
                                     reg_covar=1e-6).fit(train.numpy())
                srow = {"model": f"sklearn diagonal GMM K={K}", "params": K * (2 * 784 + 1),
                        "valid": summary(torch.tensor(gm.score_samples(valid.numpy()))),
                        "test": summary(torch.tensor(gm.score_samples(test.numpy()))),
                        "seconds": round(time.perf_counter() - t, 1)}
                rows.append(srow)
                print(f"{srow['model']:28s} {srow['params']:8d} params  valid "
                      f"{srow['valid']['nats']:8.1f}  test {srow['test']['nats']:8.1f}",
                      flush=True)
    for r in rows:
        r["valid nats"] = f"{r['valid']['nats']:.1f} ± {r['valid']['se']:.1f}"
        r["valid bits/dim"] = f"{r['valid']['bits_per_dim']:.3f}"
        r["test nats"] = f"{r['test']['nats']:.1f} ± {r['test']['se']:.1f}"
    name = "deep_gmm_table2" + ("_quick" if args.quick else "")
    png = sample_grid(trained, name)
    print(f"samples (one row per model, in table order): {png}")
    out = write_results(name,
                        {"quick": args.quick, "em_iterations": em, "first_updates": first,
                         "updates": later, "n": args.n},
                        rows, ["model", "params", "valid nats", "valid bits/dim", "test nats"])
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
