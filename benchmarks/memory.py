r"""Peak resident memory of the commands users run on MNIST (issue 21's memory row).

usage: .venv/bin/python benchmarks/memory.py [--quick] [--limit-gb 1.5]
       [--json benchmarks/results/memory.json]

Each command runs in a fresh child process (``python -m deepmix ...``, 1 thread so that a
shared machine does not change the figures); its peak resident set size is the child's
``ru_maxrss`` (what GNU ``time -v`` reports as "Maximum resident set size"), read with
:func:`os.wait4`. For scale: the 60 000 MNIST training images are 188 MB as float32.

- ``deepmix demo --epochs 2`` (2L-c + classifier, sampling, in-painting, outliers, report);
- ``deepmix evaluate`` of the demo's run on the 10 000 test images;
- ``deepmix train --arch 2L-c --epochs 1`` (``--quick``: the demo's digits architecture).

Peak memory does not depend on the machine's load, so, unlike the timing benchmarks, this one
may run beside other work. ``--quick`` runs the same commands on the 8x8 digits.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak RSS in bytes, wall seconds, exit status) of ``cmd`` run as a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(err[-2000:])
    return usage.ru_maxrss * 1024.0, seconds, code       # ru_maxrss is in KiB on Linux


def commands(work: Path, data: str) -> list[tuple[str, list[str]]]:
    from deepmix.experiments.demo import DIGITS_ARCH

    run = str(work / "demo")
    py = [sys.executable, "-m", "deepmix"]
    arch = "2L-c" if data != "digits" else DIGITS_ARCH      # 2L-c's patches exceed 8x8
    return [("deepmix demo --epochs 2", py + ["demo", "--epochs", "2", "--data", data,
                                              "--out", run, "--no-progress"]),
            ("deepmix evaluate (demo run, test split)", py + ["evaluate",
                                                              str(Path(run) / "run")]),
            (f"deepmix train --arch {arch} --epochs 1", py + ["train", "--arch", arch, "--data",
                                                           data, "--epochs", "1", "--out",
                                                           str(work / "train"),
                                                           "--no-progress"])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the 8x8 digits instead of MNIST")
    p.add_argument("--limit-gb", type=float, default=1.5,
                   help="the goal for demo and evaluate (issue 21: 1.5 GB)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    data = "digits" if args.quick else "mnist"
    out = Path(args.json or HERE / "results" / ("memory_quick.json" if args.quick
                                                else "memory.json"))
    env = {**os.environ, "DEEPMIX_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepmix-memory-") as tmp:
        work = Path(tmp)
        for name, cmd in commands(work, data):
            rss, seconds, code = peak_rss(cmd, env)
            goal = args.limit_gb if name.split()[1] in ("demo", "evaluate") else None
            row = {"command": name, "data": data, "peak_rss_gb": rss / 1e9,
                   "seconds": seconds, "exit_code": code, "goal_gb": goal,
                   "meets_goal": None if goal is None else bool(code == 0
                                                               and rss / 1e9 <= goal)}
            rows.append(row)
            print(f"{name:45s} peak RSS {rss / 1e9:6.3f} GB  ({seconds:6.1f} s"
                  f"{'' if code == 0 else f', exit {code}'})"
                  + ("" if goal is None else f"  goal <= {goal} GB: "
                     f"{'met' if row['meets_goal'] else 'NOT met'}"), flush=True)
    import torch

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "threads": 1, "quick": args.quick,
            "measure": "ru_maxrss of the child process (os.wait4)"}
    from deepmix.utils.io import write_json_atomic, write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, {"meta": meta, "results": rows})
    lines = ["# Peak resident memory", "",
             f"{meta['machine']}; torch {meta['torch']}; 1 thread; data {data}; "
             f"`benchmarks/memory.py{' --quick' if args.quick else ''}`.", "",
             "| command | peak RSS (GB) | seconds | goal |", "|---|---:|---:|---|"]
    for r in rows:
        goal = "" if r["goal_gb"] is None else (f"<= {r['goal_gb']} GB: "
                                                f"{'met' if r['meets_goal'] else 'not met'}")
        lines.append(f"| `{r['command']}` | {r['peak_rss_gb']:.3f} | {r['seconds']:.1f} | "
                     f"{goal} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
