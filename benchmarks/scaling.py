r"""Scaling on torch.distributed: images/s of 1 and 2 processes (1 thread each), the time spent
in communication per step, and a projection to 8 and 64 machines.

usage: .venv/bin/python benchmarks/scaling.py [--workloads 2L-c gmm circuit] [--nproc 1 2]
       [--n-images 60000] [--batch-size B] [--epochs E] [--device cpu] [--quick]
       [--no-independent]
       [--json benchmarks/results/scaling.json]

Every workload trains through the library's one loop (``deepmix.fit`` / ``deepmix.train``) on
MNIST training images; each configuration runs in fresh processes started by torchrun's own
launcher (as ``deepmix train --nproc N`` does), one thread each, after an untimed warm-up. Each
workload runs with the defaults ``deepmix train`` gives it: 2L-c at batch 100 (1 epoch), the
flat GMM (K = 25, diagonal) by batch EM over the whole shard per step (5 EM iterations), the
circuit (RAT-SPN, EM) at batch 100 (1 epoch). The local batch is the same for every process
count (the global batch grows with it: weak scaling, as data-parallel training is used). ``images/s`` = global rows / wall time of the
slowest rank; ``comm`` is the time inside collectives (waiting for the slower rank included);
the all-reduce of each measured size alone, on idle processes, shows what the transport costs.

Projection (no measurement; printed with the formula): a ring all-reduce of S bytes over M
machines moves :math:`2\frac{M-1}{M}S` bytes through each link in :math:`2(M-1)` latency-bound
hops, so with bandwidth :math:`\beta` (10 Gbit/s) and per-hop latency :math:`\alpha`

.. math:: T_{step}(M) = T_{compute} + 2(M-1)\alpha + 2\frac{M-1}{M}\frac{S}{\beta},
          \qquad \text{images/s}(M) = M\,B / T_{step}(M)

with :math:`T_{compute}` the measured one-process step time at the local batch B and S the
measured bytes all-reduced per step (EM: one reduce per epoch, amortised over its steps).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINK_BITS_PER_S = 10e9       # 10 Gbit/s
HOP_LATENCY_S = 50e-6        # per ring hop; a typical TCP round on one switch
MACHINES = (8, 64)


#: Per workload: (local batch, timed epochs) that ``deepmix train`` defaults give (None: all rows).
DEFAULTS: dict[str, tuple[int | None, int]] = {"2L-c": (100, 1), "gmm": (None, 5),
                                               "circuit": (100, 1)}


def _worker(workload: str, n_images: int, batch: int | None, epochs: int, device: str,
            independent: bool = False) -> dict:
    """One rank: warm up, then time ``epochs`` epochs of ``workload``; returns its figures.
    ``independent``: join no group, train alone (the processes only share the machine)."""
    import warnings

    import torch

    # Short timed runs: DCGMM's "sigma will never anneal" warning is expected here.
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(int(os.environ.get("DEEPMIX_THREADS", "1")))
    import deepmix
    from deepmix.data import load_images
    from deepmix.models import MixtureDensity, rat_spn
    from deepmix.training import FitConfig, TrainConfig, fit, train
    from deepmix.utils.distributed import COMM_STATS, current_world

    if independent:
        os.environ["WORLD_SIZE"] = "1"
    world = current_world(device)
    images = load_images("mnist", "train").to_tensor()[:n_images]
    if workload != "2L-c":
        # The user's data preparation, before the fit and outside the timed region: the flat
        # rows in the model's dtype (float64, ``deepmix train``'s default), so that the fit's
        # input check converts nothing.
        images = images.reshape(images.shape[0], -1).to(torch.float64)

    def run(x: torch.Tensor, n_epochs: int) -> int:
        if workload == "2L-c":
            model = deepmix.DCGMM("2L-c", seed=0)
            rows = train(model, x, config=TrainConfig(epochs=n_epochs, batch_size=batch or 100,
                                                      delay=0.0, device=device),
                         progress=False)
        else:
            flat = x
            if workload == "gmm":
                model = MixtureDensity(25, flat.shape[1], "diag", dtype=torch.float64)
                model.initialize(flat[:500], "random", generator=torch.Generator().manual_seed(0))
                objective = "em"
            else:
                model = rat_spn(flat.shape[1], 3, 5, 10, seed=0, dtype=torch.float64, init="em")
                objective = "em"
            rows = fit(model, flat, objective, config=FitConfig(
                epochs=n_epochs, batch_size=batch, device=device), initialize=False)
        return rows[-1]["step"]

    run(images[: 4 * (batch or 100) * world.size], 1)          # warm-up (untimed)
    for k in COMM_STATS:
        COMM_STATS[k] = 0 if k != "seconds" else 0.0
    if world.distributed:
        world.all_reduce_([torch.zeros(1)])
    t = time.perf_counter()
    steps = run(images, epochs)
    seconds = time.perf_counter() - t
    return {"rank": world.rank, "seconds": seconds, "steps": steps,
            "comm_seconds": COMM_STATS["seconds"], "comm_calls": COMM_STATS["calls"],
            "comm_bytes": COMM_STATS["bytes"]}


def _allreduce_worker(nbytes: list[int], repeats: int, device: str) -> dict:
    """One rank: the median wall time of an all-reduce of each size, nothing else running."""
    import statistics

    import torch

    torch.set_num_threads(1)
    from deepmix.utils.distributed import current_world

    world = current_world(device)
    out = {}
    for n in nbytes:
        t = torch.ones(max(1, n // 4), device=world_device(device, world))
        times = []
        for i in range(repeats + 5):
            s = time.perf_counter()
            world.all_reduce_([t])
            if t.is_cuda:
                torch.cuda.synchronize()
            if i >= 5:                                  # (the first calls set up buffers)
                times.append(time.perf_counter() - s)
        out[n] = 1e3 * statistics.median(times)
    return out


def world_device(device: str, world) -> str:
    """The device of this rank's tensors (its own GPU on a CUDA run)."""
    return f"cuda:{world.local_rank}" if device.startswith("cuda") else device


def allreduce_alone(nbytes: list[int], nproc: int, device: str,
                    repeats: int = 50) -> dict[int, float]:
    """ms of one all-reduce of each size in ``nbytes`` on ``nproc`` idle processes: what the
    transport itself costs here, beside the comm time measured inside the training steps."""
    import logging
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=uuid.uuid4().hex, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    ranks = elastic_launch(config, _allreduce_worker)(nbytes, repeats, device)
    return {n: max(r[n] for r in ranks.values()) for n in nbytes}


def measure(workload: str, nproc: int, n_images: int, batch: int | None, epochs: int,
            device: str, independent: bool = False) -> dict:
    """Run ``workload`` on ``nproc`` processes (torchrun's launcher, 1 thread each).

    ``independent``: the processes join no group and each trains the whole data alone, side by
    side; their summed images/s is what the machine gives without any communication (the
    ceiling of the distributed row)."""
    import logging
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ["DEEPMIX_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=uuid.uuid4().hex, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    ranks = elastic_launch(config, _worker)(workload, n_images, batch, epochs, device,
                                            independent)
    slowest = max(ranks.values(), key=lambda r: r["seconds"])
    if independent:
        one = measure_row(workload, 1, n_images, batch, epochs, slowest, ranks)
        one.update({"nproc": nproc, "independent": True, "global_batch": one["local_batch"],
                    "images_per_s": sum(n_images * epochs / r["seconds"]
                                        for r in ranks.values())})
        return one
    return measure_row(workload, nproc, n_images, batch, epochs, slowest, ranks)


def measure_row(workload: str, nproc: int, n_images: int, batch: int | None, epochs: int,
                slowest: dict, ranks: dict) -> dict:
    """The figures of one configuration from its ranks' reports."""
    steps = slowest["steps"]
    rows = n_images * epochs            # every timed epoch reads all images once
    local = batch if batch is not None else -(-n_images // nproc)     # whole shard per step
    return {"workload": workload, "nproc": nproc, "threads_per_process": 1,
            "local_batch": local, "global_batch": local * nproc, "epochs": epochs,
            "steps": steps,
            "seconds": slowest["seconds"], "images_per_s": rows / slowest["seconds"],
            "step_ms": 1e3 * slowest["seconds"] / max(steps, 1),
            "comm_ms_per_step": 1e3 * max(r["comm_seconds"] for r in ranks.values())
            / max(steps, 1),
            "comm_calls_per_step": slowest["comm_calls"] / max(steps, 1),
            "comm_bytes_per_step": slowest["comm_bytes"] / max(steps, 1)}


def project(one: dict, bytes_per_step: float, machines: int) -> dict:
    """Ring all-reduce projection of one workload's step on ``machines`` machines."""
    beta = LINK_BITS_PER_S / 8.0
    compute = one["seconds"] / max(one["steps"], 1)
    comm = 2 * (machines - 1) * HOP_LATENCY_S + 2 * (machines - 1) / machines * \
        bytes_per_step / beta
    step = compute + comm
    return {"machines": machines, "step_ms": 1e3 * step, "comm_ms": 1e3 * comm,
            "images_per_s": machines * one["local_batch"] / step,
            "efficiency": compute / step}


FORMULA = ("T_step(M) = T_compute + 2(M-1)*alpha + 2(M-1)/M * S/beta;  images/s(M) = M*B/T_step(M)"
           f"  (beta = {LINK_BITS_PER_S / 1e9:g} Gbit/s, alpha = {HOP_LATENCY_S * 1e6:g} us per "
           "hop, S = measured bytes all-reduced per step, T_compute = measured 1-process step)")


def markdown(results: list[dict], projections: list[dict], meta: dict) -> str:
    lines = ["# Scaling on torch.distributed", "",
             f"{meta['machine']}; torch {meta['torch']}; {meta['n_images']} MNIST images, "
             f"1 thread per process, device {meta['device']}; each workload at the batch and "
             f"for the epochs in its row (`deepmix train`'s defaults unless given).", "",
             "| workload | processes | epochs | local batch | global batch | images/s | speed-up "
             "| ms/step | comm ms/step | all-reduce calls/step | bytes/step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["workload"]: r for r in results if r["nproc"] == 1}
    for r in results:
        b = base.get(r["workload"])
        speed = r["images_per_s"] / b["images_per_s"] if b else float("nan")
        procs = f"{r['nproc']} independent" if r.get("independent") else r["nproc"]
        lines.append(f"| {r['workload']} | {procs} | {r.get('epochs', '')} | "
                     f"{r['local_batch']} | {r['global_batch']} | "
                     f"{r['images_per_s']:.0f} | {speed:.2f}x | {r['step_ms']:.2f} | "
                     f"{r['comm_ms_per_step']:.3f} | {r['comm_calls_per_step']:.2f} | "
                     f"{r['comm_bytes_per_step']:.0f} |")
    if meta.get("allreduce_alone_ms"):
        lines += ["", f"All-reduce alone ({meta['allreduce_alone_nproc']} idle processes, "
                  f"{meta.get('backend', 'gloo')}, median of 50): "
                  + ", ".join(f"{int(n)} B: {ms:.3f} ms"
                              for n, ms in meta["allreduce_alone_ms"].items())
                  + ". Where a workload's comm ms/step is close to its all-reduce alone, the "
                  "step waits on the transport rather than on the slower rank."]
    if any(r.get("independent") for r in results):
        lines += ["", "`N independent`: N processes that join no group, each training the "
                  "whole data alone, side by side (images/s summed): what the machine gives "
                  "without communication, the ceiling of the distributed row above it."]
    lines += ["", "## Projection (ring all-reduce)", "", f"`{FORMULA}`", "",
              "| workload | machines | ms/step | comm ms/step | images/s | efficiency |",
              "|---|---:|---:|---:|---:|---:|"]
    for p in projections:
        lines.append(f"| {p['workload']} | {p['machines']} | {p['step_ms']:.2f} | "
                     f"{p['comm_ms']:.3f} | {p['images_per_s']:.0f} | {p['efficiency']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=["2L-c", "gmm", "circuit"],
                   choices=["2L-c", "gmm", "circuit"])
    p.add_argument("--nproc", nargs="+", type=int, default=[1, 2])
    p.add_argument("--n-images", type=int, default=60000)
    p.add_argument("--batch-size", type=int, default=None,
                   help="local batch of every workload (default: each one's, see DEFAULTS)")
    p.add_argument("--epochs", type=int, default=None,
                   help="timed epochs of every workload (default: each one's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a smoke run: 400 images")
    p.add_argument("--no-independent", action="store_true",
                   help="skip the rows of independent processes side by side")
    p.add_argument("--json", default=str(HERE / "results" / "scaling.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n_images = min(args.n_images, 400)
    import torch

    results = []
    for workload in args.workloads:
        for n in args.nproc:
            batch, epochs = DEFAULTS[workload]
            batch = args.batch_size if args.batch_size is not None else batch
            epochs = args.epochs if args.epochs is not None else epochs
            r = measure(workload, n, args.n_images, batch, epochs, args.device)
            results.append(r)
            print(f"{workload:8s} {n} proc: {r['images_per_s']:9.0f} images/s, "
                  f"{r['step_ms']:8.2f} ms/step, comm {r['comm_ms_per_step']:.3f} ms/step "
                  f"({r['comm_bytes_per_step']:.0f} B/step)", flush=True)
            if n > 1 and not args.no_independent:
                r = measure(workload, n, args.n_images, batch, epochs, args.device,
                            independent=True)
                results.append(r)
                print(f"{workload:8s} {n} independent processes side by side: "
                      f"{r['images_per_s']:9.0f} images/s together (no communication)",
                      flush=True)
    # The transport alone, at each workload's measured bytes per call (and one float).
    sizes = sorted({4} | {int(r["comm_bytes_per_step"] / max(r["comm_calls_per_step"], 1e-9))
                          for r in results if r["nproc"] > 1 and r["comm_calls_per_step"]
                          and not r.get("independent")})
    most = max(args.nproc)
    alone = allreduce_alone(sizes, most, args.device) if most > 1 else {}
    for n, ms in alone.items():
        print(f"all-reduce of {n} B alone on {most} processes: {ms:.3f} ms", flush=True)
    projections = []
    for workload in args.workloads:
        one = next((r for r in results if r["workload"] == workload and r["nproc"] == 1), None)
        many = [r for r in results if r["workload"] == workload and r["nproc"] > 1
                and not r.get("independent")]
        if one is None or not many:
            continue
        for m in MACHINES:
            projections.append({"workload": workload,
                                **project(one, many[0]["comm_bytes_per_step"], m)})
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "n_images": args.n_images, "epochs": args.epochs,
            "batch_size": args.batch_size, "device": args.device, "formula": FORMULA,
            "quick": args.quick,
            "allreduce_alone_ms": {str(n): ms for n, ms in alone.items()},
            "allreduce_alone_nproc": most,
            "backend": "nccl" if args.device.startswith("cuda") else "gloo"}
    print(FORMULA)
    for pr in projections:
        print(f"{pr['workload']:8s} {pr['machines']:3d} machines: {pr['images_per_s']:9.0f} "
              f"images/s, efficiency {pr['efficiency']:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    from deepmix.utils.io import write_json_atomic, write_text_atomic

    write_json_atomic(out, {"meta": meta, "results": results, "projections": projections})
    write_text_atomic(out.with_suffix(".md"), markdown(results, projections, meta))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
