"""Time per training step of the gradient objectives on a flat GMM (MLE, exact SM, SSM-VR).

usage: .venv/bin/python benchmarks/objective_step_time.py [--k 25] [--d 784] [--batch 100]

One step = loss + backward + Adam update on a random batch, diagonal MixtureDensity. Exact SM and
SSM use the closed forms of deepmix.models.gmm.MixtureDensity; the autograd route of SM (D + 1
backward passes, what the thesis measured) is timed too where D is small enough. Prints the median
step time and its ratio to the MLE step; writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from deepmix.models.gmm import MixtureDensity
from deepmix.training.objectives import get_objective
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent


def step_time(objective: str, K: int, D: int, B: int, reps: int, **options) -> float:
    gen = torch.Generator().manual_seed(0)
    model = MixtureDensity(K, D, "diag", generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = get_objective(objective)
    x = torch.rand(B, D, generator=gen)
    times = []
    for i in range(reps + 3):
        t = time.perf_counter()
        loss = loss_fn(model, x, generator=gen, **options)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=str(HERE / "results" / "objective_step_time.json"))
    args = ap.parse_args()
    runs = [("mle", {}), ("sm", {}), ("ssm", {"n_slices": 1})]
    if args.d <= 64:
        runs.append(("sm", {"method": "autograd"}))
    out = {"k": args.k, "d": args.d, "batch": args.batch, "steps": {}}
    base = None
    for name, opts in runs:
        label = name + (" (autograd)" if opts.get("method") == "autograd" else "")
        t = step_time(name, args.k, args.d, args.batch, args.reps, **opts)
        base = base or t
        out["steps"][label] = {"seconds": t, "ratio_to_mle": t / base}
        print(f"{label:16s} {t * 1e3:8.2f} ms/step  {t / base:5.2f}x MLE")
    write_json_atomic(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
