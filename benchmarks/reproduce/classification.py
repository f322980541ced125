"""Paper Table IV: generative-discriminative classification with architecture B.

usage: .venv/bin/python benchmarks/reproduce/classification.py [--quick] [--datasets mnist
       fashion-mnist] [--seeds 0 1 2] [--epochs 25] [--clf-epochs 15] [--cache DIR]
       [--temperatures 1 3 10 20]

The GMM layers of B train without labels (the reference loop, batch 100); then the linear
classifier C(10,2) on the concatenated responsibilities of the two top GMM layers (the papers'
best classifier) is fitted by Adam on the frozen features (deepmix.inference.fit_classifier).
Two classifiers per model: the papers' (T = 1, plain responsibilities) and deepmix's tempered
features softmax(log r / T), T chosen from --temperatures by accuracy on a held-out 10% of the
training images (deepmix.inference.choose_temperature; the test set is never used to choose).
Test accuracy (mean ± std over seeds) next to the published figure and the SPN baselines.

--protocol reference: the setting of the authors' script for this table
(anon-scientist/cvpr22-experiments, scripts/classifier-B.bash): F(4,2)-G(121, independent) with
the linear classifier on that first GMM layer's responsibilities (their L5_input 2), 15 epochs.
Their second layer (F(13,1)-G(16)) feeds nothing the classifier sees and, with no gradient
between layers, cannot change the first, so it is left out. 20 449 features per image: the
feature matrix of 60 000 images takes about 5 GB (10 GB while a temperature is chosen).
Writes benchmarks/results/reproduce_classification.{json,md}. --quick: MNIST, one seed,
3 epochs (a few minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from deepmix.data import load_images
from deepmix.experiments.dcgmm_papers import PUBLISHED, markdown_table, mean_std, trained_model
from deepmix.layers.classifier import check_temperature
from deepmix.inference import (accuracy, choose_temperature, classifier_features, fit_classifier,
                               set_temperature)
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: The authors' classification model (scripts/classifier-B.bash), classifier on its GMM layer.
REFERENCE_SPEC = "F(4,4,2,2)-G(121,independent)-C(10)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None,
                   help="GMM epochs (default 25; 15 with --protocol reference)")
    p.add_argument("--protocol", choices=["paper", "reference"], default="paper",
                   help="paper: B + C(10,2); reference: the authors' classifier script")
    p.add_argument("--clf-epochs", type=int, default=15)
    p.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 3.0, 10.0, 20.0],
                   help="grid of feature temperatures to choose from (held-out 10%%)")
    p.add_argument("--cache", default=None, help="folder of trained runs to reuse")
    p.add_argument("--out", default=str(RESULTS / "reproduce_classification"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device of training and scoring")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="no training: one table from the runs in these result files (same "
                        "protocol and settings; runs split over processes), written to --out")
    args = p.parse_args()
    if args.merge:
        return _merge(args)
    for t in args.temperatures:   # fail now, not after hours of training
        check_temperature(t)
    if args.quick:
        args.datasets, args.seeds, args.epochs, args.clf_epochs = ["mnist"], [0], 3, 10
    if args.epochs is None:
        args.epochs = 15 if args.protocol == "reference" else 25
    arch, suffix = (REFERENCE_SPEC, "") if args.protocol == "reference" else ("B", "-C(10,2)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows, results = [], {"config": vars(args), "datasets": {}}
    for data in args.datasets:
        train_ds, test_ds = load_images(data, "train"), load_images(data, "test")
        accs, accs_t, runs = [], [], []
        for seed in args.seeds:
            model, secs = trained_model(arch, data, epochs=args.epochs, seed=seed,
                                        cache=args.cache, spec_suffix=suffix,
                                        device=args.device)
            x_train, x_test = train_ds.to_tensor(), test_ds.to_tensor()
            t0 = time.perf_counter()
            set_temperature(model, 1.0)
            feats = classifier_features(model, x_train)
            hist = fit_classifier(model, x_train, train_ds.labels, epochs=args.clf_epochs,
                                  lr=1e-3, batch_size=128, seed=seed, features=feats)
            del feats
            acc = 100.0 * accuracy(model, x_test, test_ds.labels)
            t1 = time.perf_counter()
            best_t, val = choose_temperature(model, x_train, train_ds.labels,
                                             grid=args.temperatures, epochs=args.clf_epochs,
                                             batch_size=128, seed=seed)
            torch.nn.init.zeros_(model.classifier.linear.weight)
            torch.nn.init.zeros_(model.classifier.linear.bias)
            hist_t = fit_classifier(model, x_train, train_ds.labels, epochs=args.clf_epochs,
                                    lr=1e-3, batch_size=128, seed=seed)
            acc_t = 100.0 * accuracy(model, x_test, test_ds.labels)
            accs.append(acc)
            accs_t.append(acc_t)
            runs.append({"seed": seed, "test_accuracy": acc, "gmm_train_seconds": secs,
                         "classifier_seconds": t1 - t0,
                         "train_accuracy": 100.0 * hist[-1]["train_accuracy"],
                         "tempered": {"temperature": best_t, "test_accuracy": acc_t,
                                      "validation_accuracy": {str(k): 100.0 * v
                                                              for k, v in val.items()},
                                      "train_accuracy": 100.0 * hist_t[-1]["train_accuracy"],
                                      "seconds": time.perf_counter() - t1}})
            print(f"{data} seed {seed}: test accuracy {acc:.2f} % at T=1, {acc_t:.2f} % at "
                  f"T={best_t:g} (GMMs {secs:.0f} s)", file=sys.stderr)
            md = _write(args, results, rows, data, accs, accs_t, runs, t_start)
    print(md)
    return 0


def _write(args: argparse.Namespace, results: dict, rows: list, data: str, accs: list,
           accs_t: list, runs: list, t_start: float) -> str:
    """Record data set ``data``'s runs so far and write the tables (after every seed: a cut run
    keeps what it finished)."""
    col = 0 if data == "mnist" else 1
    m, s = mean_std(accs)
    mt, st = mean_std(accs_t)
    temps = sorted({r["tempered"]["temperature"] for r in runs})
    pub = PUBLISHED["classification"]["B"][col]
    best = max(v[col] for v in PUBLISHED["classification"].values())
    results["datasets"][data] = {"runs": runs, "mean": m, "std": s, "tempered_mean": mt,
                                 "tempered_std": st, "published_B": pub, "best_published": best}
    rows[:] = [r for r in rows if r[0] != data]
    rows.append([data, f"{m:.2f} ± {s:.2f} ({len(accs)} seeds)",
                 f"{mt:.2f} ± {st:.2f} (T = {', '.join(f'{t:g}' for t in temps)})", pub,
                 PUBLISHED["classification"]["RAT-SPN"][col],
                 PUBLISHED["classification"]["DGCSPN"][col], f"{max(m, mt) - best:+.2f}"])
    results["wall_seconds"] = time.perf_counter() - t_start
    model_name = "B + C(10,2)" if args.protocol == "paper" else REFERENCE_SPEC
    table = markdown_table(["data", f"deepmix {model_name}, T = 1", "deepmix, tempered features",
                            "paper B", "RAT-SPN", "DGCSPN", "ours vs best published"], rows)
    md = (f"# Classification (paper Table IV), test accuracy %\n\n{table}\n\n"
          f"GMM epochs {args.epochs} (batch 100, unsupervised), classifier {args.clf_epochs} "
          f"Adam epochs on frozen features (T = 1: the papers' classifier; tempered: "
          f"softmax(log r / T), T chosen from {args.temperatures} on a held-out 10% of the "
          f"training set); device {args.device}, "
          + (f"merged from {', '.join(f'`{Path(n).name}`' for n in args.merged)}.\n"
             if getattr(args, "merged", None) else
             f"wall time {results['wall_seconds']:.0f} s.\n"))
    write_json_atomic(args.out + ".json", results)
    write_text_atomic(args.out + ".md", md)
    return md


def _merge(args: argparse.Namespace) -> int:
    import argparse as _ap
    import json

    first = json.loads(Path(args.merge[0]).read_text())
    # Files written before --protocol existed ran the paper's protocol.
    conf = _ap.Namespace(**{"protocol": "paper", **first["config"], "out": args.out,
                            "merged": args.merge})
    runs_by_data: dict[str, list] = {}
    sources: list[str] = []
    for name in args.merge:
        data = json.loads(Path(name).read_text())
        c = data["config"]
        if (c.get("protocol", "paper"), c["epochs"], c["clf_epochs"]) != (
                conf.protocol, conf.epochs, conf.clf_epochs):
            raise SystemExit(f"{name}: other protocol or epochs than {args.merge[0]}")
        for d, v in data["datasets"].items():
            if any("tempered" not in r for r in v["runs"]):
                raise SystemExit(f"{name}: its {d} runs predate the tempered-feature figures; "
                                 "run them again to merge them")
            seen = {r["seed"] for r in runs_by_data.get(d, [])}
            twice = sorted(seen & {r["seed"] for r in v["runs"]})
            if twice:  # a file merged twice would count its seeds twice
                raise SystemExit(f"{name}: {d} seed(s) {twice} already come from an earlier file")
            runs_by_data.setdefault(d, []).extend(v["runs"])
        # A merged file names its own sources: keep them, so merging again loses none.
        sources += data.get("merged_from") or [Path(name).name]
    conf.merged = sources
    rows: list = []
    results = {"config": vars(conf), "merged_from": sources, "datasets": {}}
    md = ""
    for d in [x for x in ("mnist", "fashion-mnist") if x in runs_by_data]:
        runs = sorted(runs_by_data[d], key=lambda r: r["seed"])
        md = _write(conf, results, rows, d, [r["test_accuracy"] for r in runs],
                    [r["tempered"]["test_accuracy"] for r in runs], runs, time.perf_counter())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
