"""Training speed of DCGMM architectures: seconds per epoch on the 60 000 MNIST training images.

usage: .venv/bin/python benchmarks/train_speed.py [--archs 1L 2L-c B E F] [--batch-size 100]
       [--protocol shared|reference] [--n-images N] [--yardstick] [--rounds 3] [--no-fused]
       [--json benchmarks/results/train_speed.json]

Every GMM layer is active for the whole timed epoch (delay 0: the most work an epoch can hold),
after one untimed warm-up of 20 steps. With --yardstick the project's speed yardstick
(../shared/bench/naive_layer_epoch.py, a plainly written F(8,2)-G(25) torch epoch) runs in the
same process session, and each figure is also given as a ratio to it (machines differ; ratios
measured in one run are what to compare). The sitting is ``--rounds`` rounds (default 3) of the
yardstick followed by every architecture; each figure is the median over the rounds, each ratio
the median of the rounds' ratios (one yardstick epoch moved by up to 25 % between two runs on a
shared VM, so a ratio to a single yardstick run said as much about the machine as the code). ``--protocol reference`` times the papers' letters A-G
as the authors' outlier scripts train them (independent lower layers; see
``deepmix.experiments.dcgmm_outliers``); ``--n-images`` times a shorter epoch (step times are
also printed, so a short epoch gives the cost of a long run: steps x ms/step).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import deepmix
from deepmix.data import load_images
from deepmix.experiments.dcgmm_outliers import ARCHS, PROTOCOLS, protocol_spec
from deepmix.layers import GMM, fused_gmm

HERE = Path(__file__).resolve().parent
YARDSTICK = HERE.parent.parent / "shared" / "bench" / "naive_layer_epoch.py"


def time_epoch(arch: str, x: torch.Tensor, batch_size: int, seed: int = 0,
               device: str = "cpu") -> float:
    model = deepmix.DCGMM(arch, seed=seed)
    deepmix.train(model, x[: 20 * batch_size], config=deepmix.TrainConfig(
        epochs=1, batch_size=batch_size, delay=0.0, device=device), progress=False)  # warm-up
    model = deepmix.DCGMM(arch, seed=seed)
    t = time.perf_counter()
    deepmix.train(model, x, config=deepmix.TrainConfig(epochs=1, batch_size=batch_size,
                                                       delay=0.0, device=device), progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def yardstick() -> float | None:
    if not YARDSTICK.is_file():
        return None
    res = subprocess.run([sys.executable, str(YARDSTICK)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"yardstick failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["1L", "2L-c", "B", "E", "F"])
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--yardstick", action="store_true", help="also time the shared yardstick")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of (yardstick, every arch); figures are medians (default 3)")
    ap.add_argument("--json", default=str(HERE / "results" / "train_speed.json"))
    ap.add_argument("--device", default="cpu", help="torch device (the yardstick stays on the CPU)")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="shared",
                    help="reference: letters A-G as the authors' outlier scripts train them")
    ap.add_argument("--n-images", type=int, help="time an epoch of the first N training images")
    ap.add_argument("--no-fused", action="store_true",
                    help="time the pure-torch GMM path (no fused CPU kernel), for A/B runs")
    args = ap.parse_args()
    if args.no_fused:
        GMM.use_fused = False
    if args.n_images is not None and args.n_images < args.batch_size:
        raise SystemExit("--n-images must be at least --batch-size")

    x = load_images("mnist", "train").to_tensor()[: args.n_images]
    results = {"batch_size": args.batch_size, "n_images": int(x.shape[0]),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "device": args.device,
               "protocol": args.protocol,
               "fused_kernel": not args.no_fused and fused_gmm.kernel() is not None,
               "archs": {}}
    rounds = max(1, args.rounds)
    times: dict[str, list[float]] = {arch: [] for arch in args.archs}
    ratios: dict[str, list[float]] = {arch: [] for arch in args.archs}
    ys_runs: list[float] = []
    for rnd in range(rounds):
        ys = yardstick() if args.yardstick else None
        if ys is not None:
            ys_runs.append(ys)
            print(f"round {rnd + 1}/{rounds}: yardstick (naive F(8,2)-G(25) epoch): {ys:.2f} s")
        for arch in args.archs:
            spec = protocol_spec(arch, args.protocol) if arch in ARCHS else arch
            s = time_epoch(spec, x, args.batch_size, device=args.device)
            times[arch].append(s)
            if ys:
                ratios[arch].append(s / ys)
            print(f"round {rnd + 1}/{rounds}: {arch:>5}: {s:6.2f} s/epoch"
                  + (f"  {s / ys:.2f}x yardstick" if ys else ""))
    if ys_runs:
        results["yardstick_s"] = statistics.median(ys_runs)
        results["yardstick_runs_s"] = ys_runs
    results["rounds"] = rounds
    print(f"medians over {rounds} round(s):")
    for arch in args.archs:
        spec = protocol_spec(arch, args.protocol) if arch in ARCHS else arch
        s = statistics.median(times[arch])
        ms_step = 1000 * s / math.ceil(x.shape[0] / args.batch_size)
        row = {"spec": spec, "seconds_per_epoch": s, "ms_per_step": ms_step,
               "images_per_second": x.shape[0] / s, "runs_s": times[arch]}
        if ratios[arch]:
            row["ratio_to_yardstick"] = statistics.median(ratios[arch])
        results["archs"][arch] = row
        print(f"{arch:>5}: {s:6.2f} s/epoch  {ms_step:6.2f} ms/step  {x.shape[0] / s:8.0f} images/s"
              + (f"  {row['ratio_to_yardstick']:.2f}x yardstick" if ratios[arch] else ""))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    from deepmix.utils.io import write_json_atomic

    write_json_atomic(path, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
