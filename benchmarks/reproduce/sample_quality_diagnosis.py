"""Where the sample-quality measure (paper Table III) loses a class: real images, blurred real
images, each GMM layer's reconstruction of real images, and samples, all scored by the same CNN.

usage: PYTHONPATH=src .venv/bin/python benchmarks/reproduce/sample_quality_diagnosis.py
       [--quick] [--archs E] [--datasets fashion-mnist] [--classes 0 .. 9] [--n 500]
       [--epochs 25] [--batch-size 20] [--sample-options JSON] [--cache DIR] [--out PATH]

``--archs`` also takes spec strings (e.g. a first layer of 100 components:
``"F(3,1)-G(100)-F(4,2)-G(25)-F(12,1)-G(49)"``).

For every class c, with the per-class model of ``sample_quality.py`` (same cache key: trained on
class c's training images), the reference CNN's accuracy (its prediction = c) on:

- ``real``: the first ``--n`` test images of class c (the measure's ceiling);
- ``blur s``: the same images under a Gaussian blur of std s pixels (how much detail the CNN
  needs);
- ``layer r``: variants of the real images started at GMM layer r (:func:`deepmix.inference.variants`,
  top-1, the paper's eq. 10 without kept activities): the image the model rebuilds from layer r's
  responsibilities, i.e. what survives its quantisation up to that depth;
- ``samples``: unconditional samples of the model (top-1), the Table III figure for that class.

A class whose ``layer 0`` column already falls far below ``real`` loses the detail the CNN looks
at in the first layer's prototypes, whatever the layers above do. Writes ``--out``.json/.md
(default benchmarks/results/sample_quality_diagnosis). --quick: E, Fashion-MNIST classes 4 and 6
(coat, shirt), 200 images each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from deepmix.data import load_images
from deepmix.experiments.dcgmm_papers import markdown_table, trained_model
from deepmix.experiments.reference_cnn import (
    ReferenceClassifier,
    load_reference_classifier,
)
from deepmix.inference import variants
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"
BLURS = (0.7, 1.0)


def hit_rate(clf: ReferenceClassifier, images: torch.Tensor, c: int) -> float:
    """Percentage of ``images`` the reference CNN ``clf`` assigns to class ``c``."""
    return 100.0 * float((clf.predict(images.cpu()) == c).float().mean())


def gaussian_blur(images: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W, C) images, kernel radius ceil(3 std), edges
    replicated (so a flat image stays flat)."""
    r = max(1, int(-(-3 * std // 1)))
    t = torch.arange(-r, r + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (t / std) ** 2)
    k = k / k.sum()
    C = images.shape[-1]
    x = images.permute(0, 3, 1, 2)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(C, 1, 1, 1),
                 groups=C)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(C, 1, 1, 1),
                 groups=C)
    return x.permute(0, 2, 3, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=["A", "B", "E", "F"])
    p.add_argument("--datasets", nargs="+", default=["fashion-mnist"])
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--n", type=int, default=500, help="test images (and samples) per class")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="folder of trained runs to reuse "
                                                 "(the one given to sample_quality.py)")
    p.add_argument("--sample-options", type=json.loads, default={},
                   help='JSON passed to model.sample for the samples column, e.g. '
                        '\'{"top_s": 2, "divisor": 20, "use_pi": true, "sharpen": true}\'')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "sample_quality_diagnosis"))
    args = p.parse_args()
    if args.quick:
        args.archs, args.datasets, args.classes, args.n = ["E"], ["fashion-mnist"], [4, 6], 200
        if args.out == str(RESULTS / "sample_quality_diagnosis"):
            args.out += "_quick"
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    results: dict = {"config": vars(args), "cells": {}}
    sections = []
    for data in args.datasets:
        # As sample_quality.py: a missing CNN is trained for the paper's 15 epochs.
        clf = load_reference_classifier(data, epochs=15, progress=True)
        test = load_images(data, "test")
        x_test, y_test = test.to_tensor(), torch.as_tensor(test.labels)
        for arch in args.archs:
            rows, header = [], None
            for c in args.classes:
                real = x_test[y_test == c][:args.n]

                model = trained_model(arch, data, classes=[c], epochs=args.epochs,
                                      batch_size=args.batch_size, seed=args.seed,
                                      cache=args.cache)[0]
                cell = {"real": hit_rate(clf, real, c)}
                for s in BLURS:
                    cell[f"blur {s}"] = hit_rate(clf, gaussian_blur(real, s), c)
                for r in range(len(model.gmm_indices)):
                    cell[f"layer {r}"] = hit_rate(clf, variants(model, real, layer=r, seed=args.seed), c)
                cell["samples"] = hit_rate(clf, model.sample(len(real), seed=args.seed + c,
                                                                batch_size=500,
                                                                **args.sample_options), c)
                results["cells"][f"{data}/{arch}/{c}"] = cell
                header = header or list(cell)
                rows.append([c] + [f"{v:.1f}" for v in cell.values()])
                print(f"{data} {arch} class {c}: " +
                      ", ".join(f"{k} {v:.1f}" for k, v in cell.items()), file=sys.stderr)
            means = [sum(float(r[i + 1]) for r in rows) / len(rows) for i in range(len(header))]
            rows.append(["mean"] + [f"{v:.1f}" for v in means])
            sections.append(f"## {data}, {arch}\n\n" + markdown_table(["class"] + header, rows))
            results["wall_seconds"] = time.perf_counter() - t_start
            md = ("# Sample quality: where the CNN loses a class\n\nReference-CNN accuracy (%) "
                  f"on {args.n} test images per class, blurred copies, each GMM layer's top-1 "
                  "reconstruction of them (variants started at layer r) and as many samples; "
                  f"per-class models of {args.epochs} epochs, batch {args.batch_size}, seed "
                  f"{args.seed}.\n\n" + "\n\n".join(sections) +
                  f"\n\nWall time {results['wall_seconds']:.0f} s.\n")
            write_json_atomic(args.out + ".json", results)
            write_text_atomic(args.out + ".md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
