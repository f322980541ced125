"""MNIST single-class EinsumNetworks (thesis section 6.2) trained by EM, SGD and SSM.

usage: PYTHONPATH=src .venv/bin/python benchmarks/objectives/mnist_circuits.py [--quick]
       [--classes 4 7 8] [--objectives em sgd ssm] [--structure pd|rat] [--leaf gaussian|binomial]
       [--epochs E] [--append]

A full run (20 epochs, three classes, three objectives) takes about 45 minutes single-threaded;
``--append`` keeps earlier rows of the output, so it can be split, e.g. one command per class
and objective: ``--leaf binomial --classes 7 --objectives ssm --append``.

Setup (spec section 6.2, with deepmix's Gaussian leaves, section 7): Poon-Domingos 28x28, delta 7
(7x7-pixel leaf blocks), K = 10, Gaussian leaves on dequantised pixels (x + u) / 256 in [0, 1]
with variances in [min_var, max_var]; validation = the class's images among the last 10,000
training images, trained on the rest; batch 100. EM: online, frequency 1, stepsize 0.05.
SGD and SSM (1 Gaussian slice): Adam lr 0.2, x0.5 every 5 epochs (every epoch in --quick),
gradient-norm clipping 1.0. Full mode: 20 epochs; --quick: 3 epochs (a few minutes in all).

``--leaf binomial`` is the thesis' exact setup: Binomial(255) leaves on raw 0..255 pixels (no
dequantisation), whose log-likelihoods are in the thesis' units directly.

Reported: mean test log-likelihood per image in nats of the continuous density on [0, 1]^784,
and the same minus 784 ln 256, which (Jensen, over the dequantisation noise) lower-bounds the
discrete log-likelihood of 0..255 images and so is in the units of the thesis' Binomial-leaf
numbers printed next to it (different leaves: compare orders, not digits). Seconds per epoch
are wall time on whatever machine ran it (single-threaded torch; shared machines are noisy).
Writes benchmarks/results/mnist_circuits.{json,md} (``_binomial`` with Binomial leaves) and PNGs
(25 samples; in-painting of 25 test images with the top 14 rows marginalised, mean of 10
conditional samples) under the folder of the same name.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import deepmix
from deepmix.data import load_images
from deepmix.models import EinsumNetwork, poon_domingos, rat_spn
from deepmix.plots.grids import save_grid
from deepmix.training import FitConfig, make_objective
from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
# thesis captions, mean LL per image (nats, discrete Binomial likelihood): EM, SGD, SSM
PUBLISHED = {7: {"em": -11576, "sgd": -12972, "ssm": -16307},
             8: {"em": -15945, "sgd": -17796, "ssm": -22654},
             4: {"em": -13301, "sgd": -15626, "ssm": -20309}}
D = 784
DISCRETE_SHIFT = D * math.log(256.0)


def load_class(c: int | str, seed: int, leaf: str) -> dict[str, torch.Tensor]:
    """Flattened images of class c: train (first 50,000 training images), valid (last 10,000), test.

    Gaussian leaves: dequantised (x + u) / 256 in [0, 1]; Binomial leaves: raw 0..255 values.
    """
    gen = torch.Generator().manual_seed(seed)

    def pixels(ds):  # type: ignore[no-untyped-def]
        if leaf == "binomial":
            return torch.from_numpy(ds.images).to(torch.float32).reshape(len(ds), D)
        return ds.to_tensor(dequantize=True, generator=gen).reshape(len(ds), D)

    full = load_images("mnist", "train")
    x = pixels(full)
    labels = torch.from_numpy(full.labels)
    idx = torch.arange(len(full))
    if c == "all":  # the multi-class circuit: one density over every digit
        test = pixels(load_images("mnist", "test"))
        keep = torch.ones_like(labels, dtype=torch.bool)
    else:
        test = pixels(load_images("mnist", "test", classes=[int(c)]))
        keep = labels == int(c)
    return {"train": x[keep & (idx < 50_000)], "valid": x[keep & (idx >= 50_000)],
            "test": test.reshape(len(test), D)}


def build(structure: str, objective: str, seed: int, leaf: str, min_var: float, max_var: float) -> EinsumNetwork:
    opts = dict(seed=seed, init="em" if objective == "em" else "gradient", leaf=leaf, min_var=min_var,
                max_var=max_var)
    if structure == "pd":
        return poon_domingos(28, 28, [7], 10, **opts)
    return rat_spn(D, 3, 20, 10, **opts)


@torch.no_grad()
def mean_ll(model: EinsumNetwork, x: torch.Tensor, batch: int = 500) -> float:
    return float(torch.cat([model.log_prob(x[i:i + batch]) for i in range(0, len(x), batch)]).mean())


def train(model: EinsumNetwork, objective: str, x: torch.Tensor, epochs: int, decay_every: int,
          seed: int) -> tuple[list[float], int]:
    """Returns seconds per epoch and the number of skipped gradient steps.

    A step whose loss or gradient is not finite is skipped (as mixed-precision loss scalers do):
    in float32 the second derivatives of a log-einsum-exp whose inner sum is tiny can overflow
    under SSM, and one NaN step would otherwise poison every parameter through Adam.
    """
    times: list[float] = []
    if objective == "em":
        for e in range(epochs):
            t = time.perf_counter()
            model.fit_em(x, epochs=1, batch_size=100, stepsize=0.05, frequency=1, seed=seed + e)
            times.append(time.perf_counter() - t)
        return times, 0
    # The library's loop: Adam at 0.2 halved every decay_every epochs, clipping at 1.0,
    # non-finite steps skipped and counted.
    obj = make_objective("circuit", "mle" if objective == "sgd" else objective,
                         {"lr": 0.2, "clip": 1.0, "lr_decay_every": decay_every,
                          "lr_decay": 0.5, "skip_nonfinite": True})
    rows = deepmix.fit(model, x, obj, config=FitConfig(epochs=epochs, batch_size=100, seed=seed),
                       initialize=False)
    seconds = [r["seconds"] for r in rows]
    return [b - a for a, b in zip(seconds, seconds[1:])], obj.skipped


@torch.no_grad()
def pictures(model: EinsumNetwork, test: torch.Tensor, stem: Path, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    test = test / scale                        # pictures in [0, 1]
    samples = (model.sample(25, generator=gen) / scale).clamp(0, 1)
    save_grid(samples.reshape(25, 28, 28, 1), f"{stem}_samples.png", ncol=5)
    x = test[:25]
    mask = torch.ones(25, 28, 28, dtype=torch.bool)
    mask[:, :14] = False                       # the top 14 rows are missing
    mask = mask.reshape(25, D)
    filled = torch.stack([model.sample(condition=(x * scale, mask), generator=gen) / scale
                          for _ in range(10)]).mean(0)
    shown = torch.where(mask, x, torch.full_like(x, 0.5))
    grid = torch.cat([shown.reshape(5, 5, 28, 28), filled.reshape(5, 5, 28, 28), x.reshape(5, 5, 28, 28)], 1)
    # rows of five: masked input, in-painting (mean of 10 conditional samples), original
    save_grid(grid.reshape(75, 28, 28, 1).clamp(0, 1), f"{stem}_inpainting.png", ncol=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--classes", nargs="+", default=["4", "7", "8"],
                    help="digit classes, one circuit each; 'all' trains one multi-class circuit "
                         "on every digit")
    ap.add_argument("--objectives", nargs="+", default=["em", "sgd", "ssm"], choices=["em", "sgd", "sm", "ssm"])
    ap.add_argument("--structure", default="pd", choices=["pd", "rat"])
    ap.add_argument("--leaf", default="gaussian", choices=["gaussian", "binomial"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--min-var", type=float, default=1e-4)
    ap.add_argument("--max-var", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the output JSON (other classes / objectives), so a full "
                         "run can be split into several shorter commands")
    ap.add_argument("--out", default=None,
                    help="output stem (default benchmarks/results/mnist_circuits[_binomial])")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (3 if args.quick else 20)
    decay_every = 1 if args.quick else 5
    stem = "mnist_circuits" + ("_binomial" if args.leaf == "binomial" else "")
    out = Path(args.out or HERE.parent / "results" / stem)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.append and out.with_suffix(".json").exists():
        rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    for c in args.classes:
        c = c if c == "all" else int(c)
        data = load_class(c, args.seed, args.leaf)
        for obj in args.objectives:
            torch.manual_seed(args.seed)
            model = build(args.structure, obj, args.seed, args.leaf, args.min_var, args.max_var)
            times, skipped = train(model, obj, data["train"], epochs, decay_every, args.seed)
            row = {"class": c, "objective": obj, "structure": args.structure, "leaf": args.leaf, "epochs": epochs,
                   "n_train": len(data["train"]), "n_test": len(data["test"]),
                   "parameters": model.num_parameters(),
                   "valid_ll": mean_ll(model, data["valid"]), "test_ll": mean_ll(model, data["test"]),
                   "seconds_per_epoch": sum(times) / len(times), "published_ll": PUBLISHED.get(c, {}).get(obj),
                   "skipped_steps": skipped}
            # Binomial LLs are discrete already; Gaussian ones get the Jensen bound of the docstring
            row["test_ll_discrete_bound"] = row["test_ll"] - (DISCRETE_SHIFT if args.leaf == "gaussian" else 0.0)
            pictures(model, data["test"], out / f"class{c}_{obj}", args.seed,
                     255.0 if args.leaf == "binomial" else 1.0)
            rows = [r for r in rows if (r["class"], r["objective"]) != (c, obj)] + [row]
            kind = "[0,1] density" if args.leaf == "gaussian" else "discrete"
            print(f"class {c} {obj:3s}: test LL {row['test_ll']:9.1f} nats ({kind}), "
                  f"{row['test_ll_discrete_bound']:9.1f} (0..255 bound; thesis {row['published_ll']}), "
                  f"{row['seconds_per_epoch']:.1f} s/epoch", flush=True)
    meta = {"quick": args.quick, "epochs": epochs, "decay_every": decay_every, "structure": args.structure,
            "leaf": args.leaf,
            "min_var": args.min_var, "max_var": args.max_var, "seed": args.seed, "threads": args.threads,
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
    rows.sort(key=lambda r: (str(r["class"]), ["em", "sgd", "sm", "ssm"].index(r["objective"])))
    write_json_atomic(out.with_suffix(".json"), {"settings": meta, "rows": rows})
    write_report(out, rows, args.leaf, args.structure)


def write_report(out: Path, rows: list[dict], leaf: str, structure: str) -> None:
    """The Markdown table next to the JSON (each row says its epochs: appended runs may differ)."""
    if leaf == "gaussian":
        unit = ("Test LL = mean log-density per image in nats on dequantised [0, 1] pixels; 'bound' = "
                "test LL - 784 ln 256, a lower bound on the discrete LL of 0..255 images, the thesis' unit "
                "(its numbers: Binomial leaves, 20 epochs).")
    else:
        unit = ("Test LL = mean discrete Binomial log-likelihood per raw 0..255 image in nats, the thesis' "
                "unit and setup (its numbers: 20 epochs); 'bound' = the same number.")
    lines = [f"MNIST single-class EinsumNetworks ({structure.upper()}, K = 10, {leaf} leaves). {unit} "
             "Seconds per epoch: one thread on a shared machine, noisy. Skipped steps: gradient steps "
             "dropped for a non-finite loss or gradient (n/a: EM, or a run made before that guard existed, "
             "where a single such step would have turned the result into NaN).", "",
             "| class | objective | epochs | test LL | bound (0..255) | thesis | valid LL | s/epoch | skipped steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['class']} | {r['objective'].upper()} | {r['epochs']} | {r['test_ll']:.1f} | "
                     f"{r['test_ll_discrete_bound']:.1f} | {r['published_ll']} | {r['valid_ll']:.1f} | "
                     f"{r['seconds_per_epoch']:.1f} | {r.get('skipped_steps', 'n/a')} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
