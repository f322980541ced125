"""Sierpinski modes of DRMMs with 3 components per layer: an L-layer model should have 3^L.

usage: .venv/bin/python benchmarks/drmm/sierpinski_modes.py [--layers 1 2 3 4] [--epochs 30]
       [--quick] [--json benchmarks/results/drmm_sierpinski_modes.json]

For each depth L: a DRMM(K=3, L) trained by the paper's hard EM (lr0 0.005, batch 64) on 4096
points of the depth-7 Sierpinski triangle (corners on the unit circle), then 20 000 forward
samples. Without output noise a sample is a sum of component means, so its mode is the sample
itself: modes are the distinct sample points holding at least 20 % of the uniform share
1/3^L; the JSON also records the closest distance between two modes (separate clusters) and the
training time. Issue 19 goal: 3^L modes for L = 1..4.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from deepmix.data import drmm_sierpinski
from deepmix.models import DRMM, DRMMConfig
from deepmix.utils.io import write_json_atomic

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=30, help="epochs of 64 batches of 64")
    ap.add_argument("--quick", action="store_true", help="depths 1-2, 10 epochs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(HERE / "results" / "drmm_sierpinski_modes.json"))
    args = ap.parse_args()
    if args.quick:
        args.layers, args.epochs = [1, 2], 10
    torch.set_num_threads(args.threads)
    x = drmm_sierpinski(4096, seed=0)
    rows = []
    for L in args.layers:
        t = time.perf_counter()
        model = DRMM(DRMMConfig(n_features=2, n_components=3, n_layers=L))
        model.fit(x, epochs=args.epochs, batch_size=64, seed=0)
        seconds = time.perf_counter() - t
        s = model.sample(20_000, generator=torch.Generator().manual_seed(0))
        modes, counts = torch.unique(s, dim=0, return_counts=True)
        big = modes[counts > 20_000 * 0.2 / 3 ** L]
        gap = float((torch.cdist(big, big) + 10 * torch.eye(len(big))).min()) if len(big) > 1 \
            else float("nan")
        row = {"layers": L, "modes": len(big), "expected": 3 ** L, "distinct_points":
               len(modes), "min_mode_distance": gap, "train_seconds": seconds,
               "steps": args.epochs * 64}
        rows.append(row)
        print(f"L={L}: {len(big)} modes (expected {3 ** L}), closest two {gap:.3f} apart, "
              f"trained in {seconds:.1f} s", flush=True)
    out = {"torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
           "epochs": args.epochs, "rows": rows}
    write_json_atomic(Path(args.json), out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
