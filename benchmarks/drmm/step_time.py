"""Training-step time of a DRMM against a flat GMM of the same parameter count, and the wall
time of the Swiss-roll tutorial run.

usage: .venv/bin/python benchmarks/drmm/step_time.py [--quick] [--configs 3x16 4x64 4x128 8x128 10x256]
       [--data-dim 6] [--batch 256] [--reps 30]

Step time: for each L x K, one DRMM hard-EM step (drmm-em: forward argmax pass, E-step, loss
of all layers, backward, Adam) and one step of a flat diagonal-covariance GMM
(deepmix MixtureDensity, objective ``sgd`` = minibatch maximum likelihood by Adam) with the
number of components that gives the same parameter count, on the same batch of arm-IK-like
random data (D = --data-dim), through each family's objective ``step`` (the call the one loop
makes). The two are interleaved in one process, so load from other processes hits both
alike; medians of wall time are reported, and the ratio of mean process CPU times (less
sensitive to other processes on a shared machine). Issue 19 goal: ratio <= 1.5. A third
interleaved step of the same DRMM with the compiled kernel off (``drmm_autograd_ms``) gives
the kernel's A/B against the autograd path in the same sitting.

Tutorial: the reference's Swiss-roll tutorial settings (16 components x 3 layers, batch 64,
40k steps, lr0 0.005) trained by ``model.fit`` on the one loop; goal < 2 minutes on 2 CPU cores.
With --quick only 2k steps are timed and the 40k-step time is extrapolated (labelled so).
A short warm-up fit first pays the process's one-off import of torch._dynamo (about 5 s).
Times are indicative only (shared CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_results  # noqa: E402

from deepmix.data import drmm_swissroll  # noqa: E402
from deepmix.models import DRMM, DRMMConfig  # noqa: E402
from deepmix.models.drmm.model import parameter_count  # noqa: E402
from deepmix.models.gmm import MixtureDensity  # noqa: E402
from deepmix.training.objectives import drmm_kernel, make_objective  # noqa: E402
from deepmix.training.objectives.base import LoopInfo  # noqa: E402


def bound(family: str, name: str, model, data: torch.Tensor, batch: int, steps: int,
          options: dict):
    gen = torch.Generator().manual_seed(0)
    obj = make_objective(family, name, options)
    obj.start(model, data, gen)
    obj.bind(model, LoopInfo(n=data.shape[0], batch_size=batch,
                             steps_per_epoch=steps, epochs=1, seed=0,
                             device=torch.device("cpu")))
    return obj, gen


def step_ratio(L: int, K: int, D: int, batch: int, reps: int) -> dict:
    P = parameter_count(D, K, L)
    kg = max(1, round(P / (2 * D + 1)))           # diagonal GMM: K (2D + 1) parameters
    # (at least K rows: the GMM's initialisation draws K distinct rows)
    data = torch.randn(max(4 * batch, 2048, kg), D, generator=torch.Generator().manual_seed(0))
    x = data[:batch]
    drmm = DRMM(DRMMConfig(n_features=D, n_components=K, n_layers=L))
    gmm = MixtureDensity(kg, D, "diag", generator=torch.Generator().manual_seed(0))
    steps = reps + 5
    d_obj, d_gen = bound("drmm", "drmm-em", drmm, data, batch, steps, {"init_batch": 1024})
    # random-row init: a step's cost does not depend on it, and k-means over the 228k
    # components of 10 x 256's equal-parameter GMM would take longer than the whole benchmark
    g_obj, g_gen = bound("gmm", "sgd", gmm, data, batch, steps, {"init": "random"})
    td, tg, ta, cd, cg = [], [], [], [], []
    default_work = drmm_kernel.MAX_WORK
    for i in range(steps):
        t, c = time.perf_counter(), time.process_time()
        d_obj.step(drmm, x, generator=d_gen, step=i)
        t1, c1 = time.perf_counter(), time.process_time()
        g_obj.step(gmm, x, generator=g_gen, step=i)
        t2, c2 = time.perf_counter(), time.process_time()
        # the same DRMM step on the autograd path (the compiled kernel off), for the A/B column
        drmm_kernel.MAX_WORK = 0
        try:
            d_obj.step(drmm, x, generator=d_gen, step=i)
        finally:
            drmm_kernel.MAX_WORK = default_work
        t3 = time.perf_counter()
        if i >= 5:
            td.append(t1 - t)
            tg.append(t2 - t1)
            ta.append(t3 - t2)
            cd.append(c1 - c)
            cg.append(c2 - c1)
    d, g, a = statistics.median(td), statistics.median(tg), statistics.median(ta)
    return {"drmm": f"{L}x{K}", "drmm_params": drmm.n_parameters, "gmm_K": kg,
            "gmm_params": sum(p.numel() for p in gmm.parameters()), "batch": batch, "D": D,
            "drmm_ms": 1e3 * d, "gmm_ms": 1e3 * g, "ratio": d / g,
            "ratio_cpu": statistics.mean(cd) / statistics.mean(cg),
            "drmm_autograd_ms": 1e3 * a}


def tutorial(steps: int, threads: int) -> dict:
    x = drmm_swissroll(64 * 1000, seed=0)
    # Warm-up: the first optimiser of a process imports torch._dynamo (about 5 s with torch
    # 2.13), a one-off cost that an extrapolation from 2k steps would multiply by 20.
    DRMM(DRMMConfig(n_features=2, n_components=16, n_layers=3)).fit(
        x[:640], epochs=1, batch_size=64, seed=0)
    per_epoch = 1000
    epochs = max(1, steps // per_epoch)
    model = DRMM(DRMMConfig(n_features=2, n_components=16, n_layers=3))
    t, c = time.perf_counter(), time.process_time()
    model.fit(x[:64 * per_epoch], epochs=epochs, batch_size=64, seed=0, lr=0.005)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    done = epochs * per_epoch
    # process CPU time: what the run costs one core when the shared machine is not contended
    return {"steps_timed": done, "seconds": seconds, "seconds_per_step": seconds / done,
            "seconds_40k": seconds * 40_000 / done, "cpu_seconds": cpu,
            "cpu_seconds_40k": cpu * 40_000 / done, "extrapolated": done != 40_000,
            "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+",
                    default=["3x16", "4x64", "4x128", "8x128", "10x256"])
    ap.add_argument("--data-dim", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--tutorial-steps", type=int, default=40_000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's, one per core, as a user gets)")
    ap.add_argument("--quick", action="store_true",
                    help="configs 3x16 4x64, 15 reps, tutorial timed over 2k steps")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.reps, args.tutorial_steps = ["3x16", "4x64"], 15, 2000
    torch.set_num_threads(args.threads)
    rows = []
    for c in args.configs:
        L, K = (int(v) for v in c.split("x"))
        r = step_ratio(L, K, args.data_dim, args.batch, args.reps)
        rows.append(r)
        print(f"DRMM {c} ({r['drmm_params']} params): {r['drmm_ms']:.2f} ms/step; GMM "
              f"K={r['gmm_K']} diag ({r['gmm_params']} params, sgd): {r['gmm_ms']:.2f} ms/step;"
              f" ratio {r['ratio']:.2f} wall, {r['ratio_cpu']:.2f} CPU time (goal <= 1.5); "
              f"DRMM on the autograd path {r['drmm_autograd_ms']:.2f} ms/step", flush=True)
    tut = tutorial(args.tutorial_steps, args.threads)
    label = "extrapolated from " + str(tut["steps_timed"]) + " steps" if tut["extrapolated"] \
        else "measured"
    print(f"Swiss-roll tutorial 16x3, batch 64: {tut['seconds_per_step'] * 1e3:.2f} ms/step, "
          f"40k steps {tut['seconds_40k']:.0f} s wall, {tut['cpu_seconds_40k']:.0f} s CPU time "
          f"({label}; goal < 120 s)", flush=True)
    name = "drmm_step_time_quick" if args.quick else "drmm_step_time"
    md = (f"# DRMM step time (`benchmarks/drmm/step_time.py{' --quick' if args.quick else ''}`)"
          f"\n\nMedian of {args.reps} interleaved steps, {args.threads} thread(s), shared CPU: "
          f"indicative only. Goal: ratio <= 1.5.\n\n"
          + markdown_table(rows, ["drmm", "drmm_params", "gmm_K", "gmm_params", "batch", "D",
                                  "drmm_ms", "gmm_ms", "ratio", "ratio_cpu",
                                  "drmm_autograd_ms"])
          + f"\n\nSwiss-roll tutorial (16 x 3, batch 64, lr0 0.005): "
            f"{tut['seconds_per_step'] * 1e3:.2f} ms/step over {tut['steps_timed']} steps; "
            f"40k steps: {tut['seconds_40k']:.0f} s wall, {tut['cpu_seconds_40k']:.0f} s process "
            f"CPU time ({label}); goal < 120 s.\n")
    write_results(name, {**environment(args.threads), "args": vars(args), "steps": rows,
                         "tutorial": tut}, md)


if __name__ == "__main__":
    main()
