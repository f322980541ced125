"""Paper Table III: sample quality of class-conditional DCGMM samples, scored by a CNN.

usage: .venv/bin/python benchmarks/reproduce/sample_quality.py [--quick] [--archs A B E F]
       [--datasets mnist fashion-mnist] [--epochs 25] [--n-per-class 1000] [--cache DIR]
       [--train-options JSON] [--sample-options JSON] [--cnn-seeds 0 1 2]

Protocol of the paper: one model per class (trained on that class's training images, batch 20:
a class has a tenth of the steps per epoch and the annealing needs the steps),
1000 samples per class (top-S sampling, S=1), and the accuracy with which the reference CNN of
Table VII (trained on the real training set, cached with the data) recognises the requested
class. Our figure next to the published one and the SPN baselines; writes
benchmarks/results/reproduce_sample_quality.{json,md}. --quick: MNIST, A and B, 5 epochs,
200 samples per class. --train-options passes training options to every model (e.g. the
authors' F and G settings, uniform mixture weights: '{"lr_xi": 0}'); --sample-options passes
options to ``model.sample`` (e.g. '{"divisor": 20}'). --merge F.json ... --out PATH: no training;
one table from the cells of earlier runs (e.g. runs with different batch sizes or training
options, each a row labelled with its setting).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepmix import DCGMM
from deepmix.cli.common import top_s_arg
from deepmix.errors import DeepmixError
from deepmix.experiments.dcgmm_papers import PUBLISHED, markdown_table, trained_model
from deepmix.experiments.sample_quality import load_reference_classifier, sample_quality_of_models
from deepmix.training import TrainConfig
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _write(args: argparse.Namespace, results: dict, rows: list, t_start: float) -> str:
    """Write the JSON and Markdown tables as they stand (after every cell: a cut run keeps
    what it finished)."""
    results["wall_seconds"] = time.perf_counter() - t_start
    table = markdown_table(["data", "arch", "deepmix %", "paper %", "difference",
                            "train s (10 models)"], rows)
    spn = ", ".join(f"{k} {v[0]} / {v[1]}" for k, v in PUBLISHED["sample_quality"].items()
                    if k not in "ABEF")
    md = (f"# Sample quality (paper Table III)\n\n{table}\n\nOne model per class, "
          f"{args.epochs} epochs, batch {args.batch_size}; {args.n_per_class} samples per class, S = "
          f"{args.sample_options.get('top_s', args.top_s)}"
          + "".join(f"; {name} {json.dumps(opts)}" for name, opts in
                    (("training options", args.train_options),
                     ("sampling options", args.sample_options)) if opts)
          + f". SPN baselines (MNIST / Fashion): {spn}. Wall time "
          f"{results['wall_seconds']:.0f} s (device {args.device}).\n")
    write_json_atomic(args.out + ".json", results)
    write_text_atomic(args.out + ".md", md)
    return md


def _setting(config: dict) -> str:
    """The per-class models' training and sampling setting of a run, as a table label."""
    parts = [f"{config['epochs']} epochs, batch {config['batch_size']}"]
    parts += [f"`{k} = {v}`" for k, v in sorted(config.get("train_options", {}).items())]
    top_s = config.get("sample_options", {}).get("top_s", config.get("top_s", 1))
    if top_s != 1:
        parts.append(f"S = {top_s}")
    parts += [f"`{k} = {v}`" for k, v in sorted(config.get("sample_options", {}).items())
              if k != "top_s"]
    return ", ".join(parts)


def _merge(files: list[str], out: str) -> int:
    """One Table III from the cells of earlier runs' JSON files, mean ± std over CNN runs."""
    cells: dict = {}
    for name in files:
        data = json.loads(Path(name).read_text())
        merged = "config" not in data  # a file this function wrote: its cells carry a setting
        for key, cell in data["cells"].items():
            label = key if merged else f"{key} ({_setting(data['config'])})"
            if label in cells:
                raise SystemExit(f"{name}: cell {label} already comes from an earlier file")
            cells[label] = {**cell, "source": cell.get("source", Path(name).name)}
    rows = []
    for label, c in cells.items():
        key, setting = label.split(" (", 1)
        data, arch = key.split("/")
        pub = c["published"]
        accs = c.get("accuracy_per_cnn", [c["accuracy"]])
        rows.append([data, arch, setting[:-1],
                     f"{c['accuracy']:.1f} ± {c.get('std_over_cnns', 0.0):.1f}",
                     ", ".join(f"{a:.1f}" for a in accs),
                     ", ".join(map(str, c.get("cnn_seeds", [0]))),
                     "-" if pub is None else pub,
                     "-" if pub is None else f"{c['accuracy'] - pub:+.1f}"])
    table = markdown_table(["data", "arch", "per-class models", "deepmix % (mean ± std over CNN "
                            "runs)", "per CNN run", "CNN seeds", "paper %", "difference"], rows)
    write_json_atomic(out + ".json", {"merged_from": files, "cells": cells})
    write_text_atomic(out + ".md", "# Sample quality (paper Table III), over reference-CNN "
                      "runs\n\n" + table + "\n\nMerged from " +
                      ", ".join(f"`{Path(f).name}`" for f in files) + ".\n")
    print(table)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--archs", nargs="+", default=["A", "B", "E", "F"])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--n-per-class", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=20,
                   help="training batch; one class has 1/10 of the steps per epoch, so smaller "
                        "batches give the annealing the steps it needs")
    p.add_argument("--top-s", type=top_s_arg, default=1,
                   help="S of top-S sampling, or one per GMM layer, lowest first (2,2,2,5)")
    p.add_argument("--train-options", type=json.loads, default={},
                   help='JSON of training options for every model, e.g. \'{"lr_xi": 0}\'')
    p.add_argument("--sample-options", type=json.loads, default={},
                   help='JSON passed to model.sample, e.g. \'{"divisor": 20, "use_pi": true}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cnn-seeds", type=int, nargs="+", default=[0],
                   help="score with the reference CNN of each seed (trained and cached when "
                        "missing) and report mean ± std over them, as the paper does over 5 runs")
    p.add_argument("--cache", default=None, help="folder of trained runs to reuse")
    p.add_argument("--out", default=str(RESULTS / "reproduce_sample_quality"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device of training and sampling")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="no training: merge earlier runs' JSON files into one table at --out")
    args = p.parse_args()
    if args.merge:
        return _merge(args.merge, args.out)
    for name in ("train_options", "sample_options"):
        if not isinstance(getattr(args, name), dict):
            p.error(f"--{name.replace('_', '-')} must be a JSON object, e.g. '{{\"lr_xi\": 0}}'")
    # Checked now, not after a CNN and ten models have been trained.
    try:
        TrainConfig(**args.train_options)
    except TypeError as exc:
        p.error(f"--train-options: unknown training option ({exc})")
    except DeepmixError as exc:
        p.error(f"--train-options: {exc}")
    known = set(inspect.signature(DCGMM.sample).parameters) - {
        "self", "n", "labels", "seed", "generator", "batch_size"}  # those are set per class
    unknown = sorted(set(args.sample_options) - known)
    if unknown:
        p.error(f"--sample-options: unknown option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}")
    if args.quick:
        args.archs, args.datasets, args.epochs, args.n_per_class = ["A", "B"], ["mnist"], 5, 200
        if args.out == str(RESULTS / "reproduce_sample_quality"):
            args.out += "_quick"
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    results: dict = {"config": vars(args), "cells": {}}
    rows = []
    for data in args.datasets:
        col = 0 if data == "mnist" else 1
        # A missing CNN is trained for the paper's 15 epochs (the results' MNIST CNN; the
        # Fashion one had 12), not the library's quicker default.
        clfs = [load_reference_classifier(data, seed=s, device=args.device, epochs=15,
                                          progress=True) for s in args.cnn_seeds]
        for arch in args.archs:
            t0 = time.perf_counter()
            models = {c: trained_model(arch, data, classes=[c], epochs=args.epochs,
                                       batch_size=args.batch_size, seed=args.seed,
                                       cache=args.cache, device=args.device,
                                       **args.train_options)[0]
                      for c in range(10)}
            train_s = time.perf_counter() - t0
            # The same samples (same seed) scored by every CNN run, as the paper averages
            # its figures over CNN runs.
            runs = [sample_quality_of_models(models, clf, n_per_class=args.n_per_class,
                                             seed=args.seed,
                                             **{"top_s": args.top_s, **args.sample_options})
                    for clf in clfs]
            accs = [100.0 * r["accuracy"] for r in runs]
            acc, std = float(np.mean(accs)), float(np.std(accs))
            pub = PUBLISHED["sample_quality"].get(arch, (None, None))[col]
            results["cells"][f"{data}/{arch}"] = {
                "accuracy": acc, "std_over_cnns": std, "cnn_seeds": args.cnn_seeds,
                "accuracy_per_cnn": accs,
                "per_class": {int(k): 100.0 * float(np.mean([r["per_class"][k] for r in runs]))
                              for k in runs[0]["per_class"]},
                "published": pub, "train_seconds": train_s,
                "classifier": [r["classifier"] for r in runs] if len(runs) > 1
                else runs[0]["classifier"]}
            shown = f"{acc:.1f}" + (f" ± {std:.1f} ({len(accs)} CNNs)" if len(accs) > 1 else "")
            rows.append([data, arch, shown, pub if pub is not None else "-",
                         f"{acc - pub:+.1f}" if pub is not None else "-", f"{train_s:.0f}"])
            print(f"{data} {arch}: {acc:.1f} % (paper {pub})", file=sys.stderr)
            md = _write(args, results, rows, t_start)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
