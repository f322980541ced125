"""Training beside other work: a DCGMM epoch quiet and next to one CPU-bound neighbour process.

usage: .venv/bin/python benchmarks/contention.py [--arch 2L-c] [--n-images 20000]
       [--repeats 3] [--json benchmarks/results/contention.json]

Each figure is the median over ``--repeats`` of one training epoch (batch 100) in a fresh
process, in turn: quiet with the defaults a user gets; then beside a neighbour (a second
process spinning one core in pure Python, started before and stopped after the timed run) with
the defaults (the thread governor of ``deepmix.utils.threads`` on), with the threads pinned to
torch's count (the behaviour before the governor; ``deepmix --threads 2``) and pinned to 1.
The goal (issue "Speed on the protocols users run"): beside a neighbour, at most 1.3x the quiet
time with the defaults. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, sys, time, torch, deepmix
from deepmix.data import load_images
from deepmix.utils.threads import pin_threads
arch, n, pin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if pin != "auto":
    pin_threads(int(pin))
x = load_images("mnist", "train").to_tensor()[:n]
model = deepmix.DCGMM(arch, seed=0)
cfg = deepmix.TrainConfig(epochs=1, batch_size=100, seed=0, delay=0.0)
deepmix.train(model, x[:2000], config=cfg)            # warm-up, untimed
model = deepmix.DCGMM(arch, seed=0)
t = time.perf_counter()
deepmix.train(model, x, config=cfg)
print(json.dumps({"seconds": time.perf_counter() - t, "threads_at_end": torch.get_num_threads()}))
"""

NEIGHBOUR = "while True:\n    pass\n"


def _run(arch: str, n: int, pin: str, neighbour: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DEEPMIX_THREADS")}
    busy = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if neighbour else None
    try:
        if busy is not None:
            time.sleep(1.0)                          # the neighbour is running when we start
        out = subprocess.run([sys.executable, "-c", WORKER, arch, str(n), pin], env=env,
                             check=True, capture_output=True, text=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="2L-c")
    ap.add_argument("--n-images", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "contention.json"))
    args = ap.parse_args()
    cores = torch.get_num_threads()
    cases = [("quiet, defaults", "auto", False), ("neighbour, defaults (governor)", "auto", True),
             (f"neighbour, --threads {cores} (no governor)", str(cores), True),
             ("neighbour, --threads 1", "1", True)]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
    for _ in range(args.repeats):                    # interleaved, so drifts hit every case
        for name, pin, neighbour in cases:
            runs[name].append(_run(args.arch, args.n_images, pin, neighbour))
            print(f"{name:40s} {runs[name][-1]['seconds']:7.2f} s", flush=True)
    quiet = statistics.median(r["seconds"] for r in runs[cases[0][0]])
    rows = []
    for name, pin, neighbour in cases:
        med = statistics.median(r["seconds"] for r in runs[name])
        rows.append({"case": name, "median_seconds": med, "vs_quiet": med / quiet,
                     "seconds": [r["seconds"] for r in runs[name]],
                     "threads_at_end": runs[name][-1]["threads_at_end"]})
    result = {"arch": args.arch, "n_images": args.n_images, "repeats": args.repeats,
              "cores": cores, "rows": rows,
              "command": f"benchmarks/contention.py --arch {args.arch} --n-images "
                         f"{args.n_images} --repeats {args.repeats}"}
    lines = [f"# Training beside a CPU-bound neighbour ({args.arch}, {args.n_images} images, "
             f"batch 100, {cores} cores)", "", f"`{result['command']}`", "",
             "| case | median s | vs quiet |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['median_seconds']:.2f} | {r['vs_quiet']:.2f}x |")
        print(f"{r['case']:40s} median {r['median_seconds']:7.2f} s  {r['vs_quiet']:.2f}x quiet")
    write_json_atomic(args.json, result)
    write_text_atomic(Path(args.json).with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
