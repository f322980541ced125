"""Circuits side by side in one run: spflow 1.1.0's Einet against deepmix's EinsumNetwork.

usage: .venv/bin/python benchmarks/circuits_vs_peers.py [--quick] [--threads N] [--seed 0]
       [--no-peer] [--peer-layer-types linsum einsum] [--json FILE]

Protocol (every row): dequantised MNIST, x = (v + u) / 256 with u ~ U[0, 1) (train noise seed 0,
test noise seed 1), flattened to 784 dimensions, the published 60 000 / 10 000 split; batch 100,
one shuffled epoch; "seconds" is the training pass alone (model construction, the one-off
import of torch._dynamo by the first optimiser of a process, and scoring excluded; data-driven
initialisation included); test LL = mean log-density of the test images
in nats (higher is better).

Rows:

- ``spflow Einet``: spflow's Einet in its configuration (``num_sums=10, num_leaves=10, depth=3,
  num_repetitions=5``, one ``Normal`` leaf module over the 784 variables, spflow's default
  initialisation and its default ``layer_type="linsum"``; ``--peer-layer-types linsum einsum``
  adds the einsum layers), trained by Adam at lr 1e-2 on the mean NLL. It runs in its own virtual
  environment, benchmarks/.peers/spflow (created once, cached: ``python -m venv`` then
  ``pip install torch==2.13.0 spflow==1.1.0``; spflow is never a dependency of deepmix), as a
  subprocess (benchmarks/peers/spflow_einet.py) on the same data passed as an .npz file.
- ``deepmix rat_spn(784, 3, 5, 10), Adam``: the same structure sizes, the same loop settings
  (Adam lr 1e-2, 1 epoch, batch 100) through deepmix's one training loop, defaults otherwise.
- ``deepmix rat_spn(784, 3, 5, 10), online EM``: deepmix's best training for circuits: ``init="em"``,
  leaves initialised from the data (:meth:`EinsumNetwork.init_leaves_from_data`), online EM with
  stepsize 0.05 after every batch.
- ``deepmix poon_domingos(28, 28, [7], 10)``: a Poon-Domingos circuit on the 28 x 28 image (7 x 7
  leaf blocks), by Adam and by online EM as above.

Ratios: peer seconds / deepmix seconds (how many times faster deepmix is) against the first peer
row (linsum), and the test-LL difference. Both sides use the same torch thread count
(``--threads``; default: torch's default here, passed on to the peer). ``--quick`` trains on
5 000 images and tests on 1 000 (a smoke run, not the figures). Writes
benchmarks/results/circuits_vs_peers[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import deepmix
from deepmix.data import load_images
from deepmix.models import EinsumNetwork, poon_domingos, rat_spn
from deepmix.training import FitConfig, make_objective
from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
PEER_ENV = HERE / ".peers" / "spflow"
PEER_SCRIPT = HERE / "peers" / "spflow_einet.py"
# torch pinned exactly: an unpinned install pulls a multi-GB CUDA build
PEER_PACKAGES = ["torch==2.13.0", "spflow==1.1.0"]


def peer_python() -> Path:
    """The spflow environment's interpreter, created on first use (``python -m venv`` + pip)."""
    python = PEER_ENV / "bin" / "python"
    check = "import spflow, torch; print(torch.__version__.split('+')[0], spflow.__version__)"
    if python.exists():
        out = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split() == ["2.13.0", "1.1.0"]:
            return python
    print(f"creating the peer environment {PEER_ENV} ({' '.join(PEER_PACKAGES)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_ENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def run_peer(data_file: Path, threads: int, seed: int, layer_type: str) -> dict[str, Any]:
    python = peer_python()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # nothing of deepmix
    cmd = [str(python), str(PEER_SCRIPT), str(data_file), "--epochs", "1", "--batch-size", "100",
           "--lr", "1e-2", "--seed", str(seed), "--threads", str(threads), "--layer-type", layer_type]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the spflow run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@torch.no_grad()
def mean_ll(model: EinsumNetwork, x: torch.Tensor) -> tuple[float, int]:
    ll = torch.cat([model.log_prob(x[i:i + 500]) for i in range(0, len(x), 500)]).double()
    return float(ll.mean()), int((~torch.isfinite(ll)).sum())


def run_deepmix(build: Callable[[], EinsumNetwork], training: str, train: torch.Tensor,
                test: torch.Tensor, seed: int) -> dict[str, Any]:
    """One deepmix row through the library's one loop; ``training`` "adam" or "em"."""
    torch.manual_seed(seed)
    model = build()
    t0 = time.perf_counter()
    if training == "adam":
        objective = make_objective("circuit", "mle", {"lr": 1e-2})
    else:
        model.init_leaves_from_data(train, seed=seed)
        objective = make_objective("circuit", "em", {"stepsize": 0.05})
    rows = deepmix.fit(model, train, objective,
                       config=FitConfig(epochs=1, batch_size=100, seed=seed), initialize=False)
    seconds = time.perf_counter() - t0
    ll, bad = mean_ll(model, test)
    return {"seconds": seconds, "test_ll": ll, "nonfinite_test_rows": bad,
            "train_ll_last_epoch": -float(rows[-1]["loss"]), "parameters": model.num_parameters()}


def load_data(quick: bool) -> tuple[torch.Tensor, torch.Tensor]:
    tr, te = load_images("mnist", "train"), load_images("mnist", "test")
    n_tr, n_te = (5000, 1000) if quick else (len(tr), len(te))
    x_tr = tr.to_tensor(dequantize=True, generator=torch.Generator().manual_seed(0))[:n_tr]
    x_te = te.to_tensor(dequantize=True, generator=torch.Generator().manual_seed(1))[:n_te]
    return x_tr.reshape(len(x_tr), -1).contiguous(), x_te.reshape(len(x_te), -1).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 000 train / 1 000 test images")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both sides (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-peer", action="store_true", help="deepmix rows only")
    ap.add_argument("--peer-layer-types", nargs="+", default=["linsum"], choices=["linsum", "einsum"])
    ap.add_argument("--json", default=None, help="output JSON (default benchmarks/results/...)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    train, test = load_data(args.quick)
    # The first torch optimiser of a process imports torch._dynamo (seconds, once); the peer
    # builds its optimiser before its clock starts, so pay that import here before ours.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows: list[dict[str, Any]] = []

    def add(name: str, setting: str, result: dict[str, Any]) -> None:
        rows.append({"name": name, "setting": setting, **result})
        print(f"{name:44s} {result['seconds']:8.1f} s   test LL {result['test_ll']:9.1f}", flush=True)

    if not args.no_peer:
        with tempfile.TemporaryDirectory() as tmp:
            data_file = Path(tmp) / "data.npz"
            np.savez(data_file, train=train.numpy(), test=test.numpy())
            for lt in args.peer_layer_types:
                add(f"spflow Einet ({lt})",
                    f"spflow 1.1.0 Einet(num_sums=10, num_leaves=10, depth=3, num_repetitions=5, "
                    f"layer_type='{lt}'), Normal leaves, Adam lr 1e-2",
                    run_peer(data_file, threads, args.seed, lt))
    s = args.seed
    rat = lambda init: lambda: rat_spn(784, 3, 5, 10, seed=s, init=init)      # noqa: E731
    pd = lambda init: lambda: poon_domingos(28, 28, [7], 10, seed=s, init=init)  # noqa: E731
    add("deepmix rat_spn(784, 3, 5, 10), Adam", "Adam lr 1e-2, defaults (init='gradient')",
        run_deepmix(rat("gradient"), "adam", train, test, s))
    add("deepmix rat_spn(784, 3, 5, 10), online EM",
        "init='em', leaves from data, online EM stepsize 0.05",
        run_deepmix(rat("em"), "em", train, test, s))
    add("deepmix poon_domingos(28, 28, [7], 10), Adam", "Adam lr 1e-2, defaults",
        run_deepmix(pd("gradient"), "adam", train, test, s))
    add("deepmix poon_domingos(28, 28, [7], 10), online EM",
        "init='em', leaves from data, online EM stepsize 0.05",
        run_deepmix(pd("em"), "em", train, test, s))

    peer = next((r for r in rows if r["name"].startswith("spflow")), None)
    for r in rows:
        if peer is not None:
            r["speedup_vs_spflow"] = peer["seconds"] / r["seconds"]
            r["test_ll_minus_spflow"] = r["test_ll"] - peer["test_ll"]
    settings = {"quick": args.quick, "n_train": len(train), "n_test": len(test), "epochs": 1,
                "batch_size": 100, "seed": args.seed, "threads": threads, "torch": torch.__version__,
                "deepmix": getattr(deepmix, "__version__", "?"), "machine": platform.machine(),
                "processor": platform.processor(), "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    stem = HERE / "results" / ("circuits_vs_peers_quick" if args.quick else "circuits_vs_peers")
    out = Path(args.json) if args.json else stem.with_suffix(".json")
    write_json_atomic(out, {"settings": settings, "rows": rows})
    write_text_atomic(out.with_suffix(".md"), report(rows, settings))
    print(report(rows, settings))


def report(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [f"Circuits on dequantised MNIST ({settings['n_train']} train / {settings['n_test']} test "
             f"images, 784 dims), batch 100, 1 epoch, {settings['threads']} torch thread(s), one run "
             f"({settings['date']}). Seconds: the training pass; speed-up = spflow seconds / row "
             "seconds; test LL in nats per image (higher is better).", "",
             "| model | training | seconds | speed-up vs spflow | test LL | vs spflow |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_spflow']:.2f}x" if "speedup_vs_spflow" in r else "n/a"
        dl = f"{r['test_ll_minus_spflow']:+.1f}" if "test_ll_minus_spflow" in r else "n/a"
        lines.append(f"| {r['name']} | {r['setting']} | {r['seconds']:.1f} | {sp} | "
                     f"{r['test_ll']:.1f} | {dl} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
