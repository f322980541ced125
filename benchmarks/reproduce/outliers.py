"""The paper's outlier-detection table (DCGMM "new perspective", Table I): train on classes 1-9,
class 0 is the outlier class, AUROC (%) of the top GMM layer, ours next to the published figure.

usage: PYTHONPATH=src .venv/bin/python benchmarks/reproduce/outliers.py [--quick]
       [--archs A B ...] [--datasets mnist fashion-mnist] [--epochs N] [--seeds 0 1 ...]

--quick: architectures A and B, 3 epochs, both data sets, one seed (a few minutes on a CPU).
--protocol reference: the settings of the authors' outlier scripts (independent lower GMM layers,
per-architecture epochs unless --epochs is given; see deepmix.experiments.dcgmm_outliers); its
rows are labelled "X (ref.)" and kept apart from the shared-parameter rows.
--merge F.json ...: no training; one table from the rows of earlier runs' JSON files (runs
split over processes or machines, e.g. benchmarks/gpu_session.sh), written to --out.
Writes benchmarks/results/reproduce_outliers.json and .md (with --quick:
reproduce_outliers_quick.json / .md) after every cell, so an interrupted
run keeps what it finished. Torch runs on --threads threads (default 1).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from deepmix.experiments.dcgmm_outliers import (ARCHS, DATASETS, PROTOCOLS, protocol_epochs,
                                                published, run_cell)
from deepmix.experiments.dcgmm_papers import PUBLISHED as PAPERS
from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent


def _label(row: dict) -> str:
    return row["arch"] + (" (ref.)" if row.get("protocol", "shared") == "reference" else "")


def _table(rows: list[dict], archs: list[str], datasets: list[str]) -> str:
    """One line per architecture and protocol; ``archs`` fixes the order of architectures."""
    labels = [lab for p in PROTOCOLS for a in archs
              for lab in [a + (" (ref.)" if p == "reference" else "")]
              if any(_label(r) == lab for r in rows)]
    head = "| arch | " + " | ".join(f"{d} ours | {d} published" for d in datasets) + \
        " | epochs | train s (per seed) |"
    lines = [head, "|---" * (2 * len(datasets) + 3) + "|"]
    for label in labels:
        arch = label.split()[0]
        cells, secs, epochs = [], [], set()
        for d in datasets:
            got = [r for r in rows if _label(r) == label and r["dataset"] == d]
            pub = published(arch, d)
            if got:
                vals = [r["top_auroc"] for r in got]
                txt = f"{statistics.mean(vals):.1f}"
                if len(vals) > 1:
                    txt += f" ± {statistics.pstdev(vals):.1f} (n={len(vals)})"
                secs.append(f"{d}: {statistics.mean(r['train_seconds'] for r in got):.0f}")
                epochs.update(r["epochs"] for r in got)
            else:
                txt = "-"
            cells += [txt, "-" if pub is None else f"{pub:.1f}"]
        if any(c != "-" for c in cells[::2]):
            lines.append(f"| {label} | " + " | ".join(cells) + f" | "
                         f"{', '.join(map(str, sorted(epochs)))} | {'; '.join(secs)} |")
    if any(lab.split()[0] == "E" for lab in labels):
        # Table II sets E against the best SPNs of the authors' grid search.
        for name in ("RAT-SPN", "DGCSPN", "PD-SPN"):
            pubs = PAPERS["outlier_auroc"][name]
            lines.append(f"| {name} (Table II) | " + " | ".join(
                f"- | {pubs[DATASETS.index(d)]:.1f}" for d in datasets) + " | - | - |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="A and B, 3 epochs")
    ap.add_argument("--archs", nargs="+", choices=ARCHS)
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--protocol", choices=PROTOCOLS, default="shared",
                    help="shared: Table V as written; reference: the authors' outlier scripts")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device of training and scoring")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="merge the rows of these result files into one table (no training)")
    ap.add_argument("--out", help="output path without suffix (default: benchmarks/results/"
                    "reproduce_outliers, or reproduce_outliers_quick with --quick)")
    args = ap.parse_args()
    if args.merge:
        _merge(args)
        return
    torch.set_num_threads(args.threads)
    archs = args.archs or (["A", "B"] if args.quick else list(ARCHS))
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs must be >= 1")
    epochs = args.epochs or (3 if args.quick else None)  # None: 10, or the protocol's own
    out = Path(args.out or HERE.parent / "results" /
               ("reproduce_outliers_quick" if args.quick else "reproduce_outliers"))
    rows: list[dict] = []
    start = time.perf_counter()
    meta = {"command": "benchmarks/reproduce/outliers.py " + " ".join(
                ["--quick"] * args.quick + ["--archs", *archs, "--datasets", *args.datasets,
                 *(["--epochs", str(epochs)] if epochs else []), "--protocol", args.protocol,
                 "--seeds", *map(str, args.seeds)]),
            "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
            "device": args.device}
    for arch in archs:  # architectures outermost: a partial run fills both columns
        for dataset in args.datasets:
            for seed in args.seeds:
                r = run_cell(arch, dataset, seed=seed, device=args.device, protocol=args.protocol,
                             epochs=epochs or protocol_epochs(arch, args.protocol, default=10))
                rows.append(r)
                layers = ", ".join(f"L{x['layer']} {x['auroc']:.1f}" for x in r["layers"])
                print(f"{dataset:13s} {_label(r)} seed {seed}: top AUROC {r['top_auroc']:.1f}% "
                      f"(published {r['published']}), layers [{layers}], train "
                      f"{r['train_seconds']:.0f} s", flush=True)
                table = _table(rows, archs, args.datasets)
                write_json_atomic(out.with_suffix(".json"), {
                    **meta, "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows})
                write_text_atomic(out.with_suffix(".md"), (
                    "Outlier detection AUROC (%), top GMM layer, inliers = test classes 1-9, "
                    "outliers = test class 0, trained on train classes 1-9 (batch 100, "
                    "true log-likelihood as score; the paper: 25-80 epochs, mean of 5 runs).\n\n"
                    f"`{meta['command']}` ({args.threads} torch thread(s), device {args.device}; "
                    f"wall {time.perf_counter() - start:.0f} s)\n\n" + table + "\n"))
    print(_table(rows, archs, args.datasets))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


def _merge(args: argparse.Namespace) -> None:
    import json

    if not args.out:
        raise SystemExit("--merge needs --out")
    rows, sources = [], []
    key = ("arch", "protocol", "dataset", "seed")
    for name in args.merge:
        data = json.loads(Path(name).read_text())
        seen = {tuple(r.get(k, "shared") for k in key) for r in rows}
        twice = sorted({tuple(r.get(k, "shared") for k in key) for r in data["rows"]} & seen)
        if twice:  # a file merged twice would count its seeds twice
            raise SystemExit(f"{name}: cell(s) {twice} (arch, protocol, data, seed) already "
                             "come from an earlier file")
        rows += data["rows"]
        # A merged file names its own sources: keep them, so merging again loses none.
        sources += data.get("merged_from") or [{"file": Path(name).name,
                                                 "command": data.get("command"),
                                                 "device": data.get("device", "cpu")}]
    archs = [a for a in ARCHS if any(r["arch"] == a for r in rows)]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    out = Path(args.out)
    table = _table(rows, archs, datasets)
    write_json_atomic(out.with_suffix(".json"), {"merged_from": sources, "rows": rows})
    write_text_atomic(out.with_suffix(".md"), (
        "Outlier detection AUROC (%), top GMM layer, inliers = test classes 1-9, outliers = "
        "test class 0, trained on train classes 1-9 (batch 100, true log-likelihood as score), "
        "merged from " + ", ".join(f"`{s['file']}`" for s in sources) + ".\n\n" + table + "\n"))
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
