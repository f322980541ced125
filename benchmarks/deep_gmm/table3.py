"""Analogue of the deep GMM paper's Table 3 on MNIST (spec deep-gmm.md section 6 (d)): unshared
block-diagonal layers (a bank of m blocks, one choice per position).

usage: .venv/bin/python benchmarks/deep_gmm/table3.py [--quick] [--L 1 2 3] [--m 4]
       [--em 10] [--first-updates 10000] [--updates 3000] [--lr 1e-3] [--threads 2] [--merge]
       [--stacks bottom intermediate gating] [--gating-epochs 10]

``--merge`` keeps the rows of the results file that this run does not retrain (e.g. ``--L 3
--merge`` adds L = 3 to earlier L = 1, 2 rows); each row records its own date.

Stacks, data side first: "bottom HC only" = 3 HC + L x ubd<m> (p(x) factorises over positions:
exact log p and the exact best path per position), "intermediate HC" = 3 HC + (ubd<m> + 3 HC)
x (L-1) + ubd<m> (coordinate E step), and "+ gating" = the intermediate stack (bottom HC only
at L = 1, where there is no intermediate layer) with gating networks as its path prior, trained
in ``--gating-epochs`` epochs after the EM iterations (the paper's third row; the gates make
the positions coupled, so the E step is the coordinate search). Reports the validation/test lower bound, UB* = LB + log
#paths (= LB + 49 L ln m) and the exact value where tractable, nats per image.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import merged_rows, sample_grid, splits, summary, train_hard_em, write_results
from deepmix.errors import NoDensityError
from deepmix.models import DeepGMM, DeepGMMConfig


def evaluate(model: DeepGMM, x: torch.Tensor) -> dict:
    x = x.float()
    with torch.no_grad():
        lb = model.log_prob_lower_bound(x, generator=torch.Generator().manual_seed(0))
        out = {"lb": summary(lb), "ub": summary(lb + model.log_n_paths)}
        try:
            out["exact"] = summary(model.log_prob(x))
        except NoDensityError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--L", type=int, nargs="+", default=None)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--em", type=int, default=None)
    ap.add_argument("--first-updates", type=int, default=None)
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stacks", nargs="+", default=["bottom", "intermediate", "gating"],
                    choices=["bottom", "intermediate", "gating"])
    ap.add_argument("--gating-epochs", type=int, default=None,
                    help="epochs of gate training after EM (default 10; --quick 2)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the earlier rows of models this run does not train")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    Ls = args.L or ([1, 2] if args.quick else [1, 2, 3])
    em = args.em or (3 if args.quick else 10)
    first = args.first_updates or (1000 if args.quick else 10000)
    later = args.updates or (300 if args.quick else 3000)
    train, valid, test = splits(args.quick)
    rows = []
    trained = []
    bank = f"ubd{args.m}"
    gating_epochs = args.gating_epochs or (2 if args.quick else 10)
    for L in Ls:
        bottom = ",".join(["hc5"] * 3 + [bank] * L)
        inter = ",".join(["hc5"] * 3 + ([bank] + ["hc5"] * 3) * (L - 1) + [bank])
        stacks = []
        if "bottom" in args.stacks:
            stacks.append(("bottom HC only", bottom, {}))
        if L > 1 and "intermediate" in args.stacks:
            stacks.append(("intermediate HC", inter, {}))
        if "gating" in args.stacks:
            stacks.append(("intermediate HC + gating" if L > 1 else "bottom HC + gating",
                           inter if L > 1 else bottom, {"gating_epochs": gating_epochs}))
        for label, layers, options in stacks:
            model = DeepGMM(DeepGMMConfig(shape=(28, 28, 1), fold=4, layers=layers,
                                          dtype="float32",
                                          prior="gating" if options else "uniform"))
            t = time.perf_counter()
            obj = train_hard_em(model, train.float(), first_updates=first, later_updates=later,
                                em_iterations=em, lr=args.lr, **options)
            v, te = evaluate(model, valid), evaluate(model, test)
            row = {"model": f"{label}, L={L}", "layers": layers, "params": model.n_params(),
                   "gate params": model.n_gate_params(),
                   "log_paths": round(model.log_n_paths, 2),
                   "train_lb_per_e_step": [round(s, 1) for s in obj.e_scores],
                   "valid": v, "test": te, "seconds": round(time.perf_counter() - t, 1),
                   "date": time.strftime("%Y-%m-%d"),
                   "valid LB": f"{v['lb']['nats']:.1f}", "valid UB*": f"{v['ub']['nats']:.1f}",
                   "valid exact": f"{v['exact']['nats']:.1f}" if "exact" in v else "-",
                   "test LB": f"{te['lb']['nats']:.1f}",
                   "test exact": f"{te['exact']['nats']:.1f}" if "exact" in te else "-"}
            rows.append(row)
            trained.append((row["model"], model))
            print(f"{row['model']:26s} {row['params']:7d} params  valid LB {row['valid LB']:>8s}"
                  f"  UB* {row['valid UB*']:>8s}  exact {row['valid exact']:>8s}  test LB "
                  f"{row['test LB']:>8s}  {row['seconds']:7.1f} s", flush=True)
    name = "deep_gmm_table3" + ("_quick" if args.quick else "")
    png = sample_grid(trained, name + (f"_L{''.join(map(str, Ls))}" if args.merge else ""))
    if args.merge:
        rows = merged_rows(name, rows)
    print(f"samples (one row per model, in table order): {png}")
    out = write_results(name,
                        {"quick": args.quick, "em_iterations": em, "first_updates": first,
                         "updates": later, "m": args.m},
                        rows, ["model", "params", "gate params", "valid LB", "valid UB*", "valid exact",
                               "test LB", "test exact"])
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
