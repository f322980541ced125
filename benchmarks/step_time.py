"""Time of one GMM-layer training step (``GMM.train_step``) at fixed annealing radii sigma.

usage: .venv/bin/python benchmarks/step_time.py [--sigmas 1.0 0.35 0.15 0.01] [--steps 20]
       [--threads 1] [--json benchmarks/results/step_time.json]

A one-epoch speed test never reaches small sigma, so this times the step where long runs spend
their later part: for each layer (the first layer of 2L-c, of B, and the authors' independent
F(4,2)-G(121) of the classification table) on a batch of 100 MNIST images, the median of
``--steps`` steps (after 3 warm-up steps) at each sigma, learning rate 0 so that every step sees
the same parameters. Run it on two commits to compare them (machines differ between sessions).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import deepmix
from deepmix.data import load_images
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent
LAYERS = {"2L-c layer 1": "F(8,8,2,2)-G(25)", "B layer 1": "F(8,8,2,2)-G(49)",
          "F(4,2)-G(121,independent)": "F(4,4,2,2)-G(121,independent)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 0.35, 0.15, 0.01])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(HERE / "results" / "step_time.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = load_images("mnist", "train").to_tensor()[:100]
    out = {"threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
           "steps": args.steps, "ms_per_step": {}}
    for name, spec in LAYERS.items():
        model = deepmix.DCGMM(spec, seed=0)
        fold, gmm = model.layers[0], model.layers[1]
        row = {}
        for sigma in args.sigmas:
            gmm.sigma.fill_(sigma)
            for _ in range(3):
                gmm.train_step(x, 0.0, fold=fold)
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                gmm.train_step(x, 0.0, fold=fold)
                times.append(time.perf_counter() - t)
            row[str(sigma)] = 1e3 * statistics.median(times)
        out["ms_per_step"][name] = row
        print(f"{name:>27}: " + "  ".join(f"sigma {s}: {v:7.2f} ms" for s, v in row.items()),
              flush=True)
    write_json_atomic(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
