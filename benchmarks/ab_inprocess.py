"""A/B of DCGMM training steps: this tree against a git revision, both imported in ONE process.

usage: .venv/bin/python benchmarks/ab_inprocess.py --base REV [--archs 2L-c E F]
       [--rounds 8] [--n-images 4000] [--json benchmarks/results/ab_inprocess.json]

``--archs`` takes DCGMM architectures (epochs through ``train``, batch 100, every layer active)
and ``circuit-mle`` / ``circuit-em``: ``rat_spn(784, 3, 5, 10)`` on dequantised MNIST through
``fit`` (Adam at 1e-2, or online EM at stepsize 0.05 from data-initialised leaves), as in
``benchmarks/circuits_vs_peers.py``. On 2026-12-07 it showed that the circuit rows, 1.45x slower
than five days before, were the machine's drift (0.975x and 1.01x the old revision's time).

Why: on a shared VM the speed of a core drifts by tens of per cent within seconds (one 2L-c
epoch took 1.1 to 2.3 s in one sitting, with no steal time in /proc/stat), so two timings
taken one after the other, even alternating processes, compare the machine's moments as much
as the code. Here the revision's ``src/deepmix`` is extracted (``git archive``) into a temporary
package ``deepmix_base`` (its absolute ``deepmix`` imports renamed), both packages are imported
side by side, and epochs of the same images alternate between a model of each version (the
order flips every round). Each round gives a ratio new/base; the figure is the median ratio.
Models keep training from round to round (sigma anneals alike in both). Kernels of the two
versions are built and cached separately (the cache key is the source).
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _extract(rev: str, into: Path) -> None:
    """``src/deepmix`` of ``rev`` as the package ``into/deepmix_base``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/deepmix"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    pkg = into / "deepmix_base"
    (into / "src" / "deepmix").rename(pkg)
    pattern = re.compile(r"^(\s*)(from|import) deepmix([. ])", re.MULTILINE)
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        new = pattern.sub(r"\1\2 deepmix_base\3", text)
        if new != text:
            f.write_text(new)


#: The circuit rows: objective name, its options, the model's init.
CIRCUITS = {"circuit-mle": ("mle", {"lr": 1e-2}, "gradient"),
            "circuit-em": ("em", {"stepsize": 0.05}, "em")}


def _epoch(lib, arch: str, x_images, x_flat):
    """A model of ``lib`` (deepmix or deepmix_base) and a function training it one epoch on
    its data: a DCGMM architecture, or a circuit row of :data:`CIRCUITS`."""
    if arch not in CIRCUITS:
        model = lib.DCGMM(arch, seed=0)
        cfg = lib.TrainConfig(epochs=1, batch_size=100, delay=0.0)
        return lambda n: lib.train(model, x_images[:n], config=cfg, progress=False)
    objective, options, init = CIRCUITS[arch]
    models = importlib.import_module(lib.__name__ + ".models")
    training = importlib.import_module(lib.__name__ + ".training")
    torch.manual_seed(0)
    model = models.rat_spn(784, 3, 5, 10, seed=0, init=init)
    if objective == "em":
        model.init_leaves_from_data(x_flat, seed=0)
    cfg = training.FitConfig(epochs=1, batch_size=100, seed=0)
    return lambda n: lib.fit(model, x_flat[:n], training.make_objective("circuit", objective,
                                                                          options),
                             config=cfg, initialize=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--archs", nargs="+", default=["2L-c", "E", "F"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--n-images", type=int, default=4000)
    ap.add_argument("--json", default=str(HERE / "results" / "ab_inprocess.json"))
    args = ap.parse_args()

    # Short epochs: the warning that sigma cannot anneal in them says nothing here.
    warnings.filterwarnings("ignore", message="sigma will never anneal")
    with tempfile.TemporaryDirectory() as tmp:
        _extract(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        import deepmix
        import deepmix_base
        from deepmix.data import load_images
        from deepmix.utils.io import write_json_atomic

        base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.base], check=True,
                                  capture_output=True, text=True).stdout.strip()
        train = load_images("mnist", "train")
        x = train.to_tensor()[:args.n_images]
        x_flat = None
        if any(a in CIRCUITS for a in args.archs):   # the circuits' protocol: dequantised
            x_flat = train.to_tensor(dequantize=True, generator=torch.Generator().manual_seed(0))
            x_flat = x_flat[:args.n_images].reshape(len(x), -1).contiguous()
        libs = {"base": deepmix_base, "new": deepmix}
        steps = -(-args.n_images // 100)
        out = {"base": base_rev, "n_images": args.n_images, "rounds": args.rounds, "archs": {}}
        for arch in args.archs:
            epochs = {k: _epoch(m, arch, x, x_flat) for k, m in libs.items()}
            for k in libs:   # warm-up: kernels built, caches filled
                epochs[k](1000)
            ms = {k: [] for k in libs}
            for r in range(args.rounds):
                for k in (("base", "new") if r % 2 == 0 else ("new", "base")):
                    t = time.perf_counter()
                    epochs[k](args.n_images)
                    ms[k].append((time.perf_counter() - t) / steps * 1e3)
            ratios = [a / b for a, b in zip(ms["new"], ms["base"])]
            row = {"ms_per_step_base": statistics.median(ms["base"]),
                   "ms_per_step_new": statistics.median(ms["new"]),
                   "ratio_new_to_base": statistics.median(ratios), "ratios": ratios}
            out["archs"][arch] = row
            print(f"{arch:>11}: base {row['ms_per_step_base']:.2f} ms/step, new "
                  f"{row['ms_per_step_new']:.2f} ms/step: new/base {row['ratio_new_to_base']:.3f} "
                  f"(rounds {min(ratios):.2f}-{max(ratios):.2f})", flush=True)
        write_json_atomic(Path(args.json), out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
