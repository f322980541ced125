"""The thesis' 2-D pictures and curves (pc-training spec §6.1): density heat-maps and samples per
(dataset, method), NLL against step and wall time, and k-means against random initialisation.

usage: PYTHONPATH=src .venv/bin/python benchmarks/objectives/toy2d_figures.py [--quick]
       [--parts figures curves init replot] [--datasets halfmoons spirals board] [--seeds 10]
       [--curve-seeds N] [--init-seeds N] [--curve-methods ...] [--init-methods ...] [--cap T]
       [--out DIR]

Parts (each writes its own JSON under --out, so parts and datasets can run as separate commands;
every invocation rebuilds report.md from all JSON files present):

- ``figures``: one PNG per dataset, a column per method (EM / GD / SM / SSM): log-density on a
  100 x 100 grid with the training points on top, a 2-D histogram of 10 000 model samples and a
  scatter of 2 000 of them. Cells: halfmoons K = 12, spirals K = 40, board K = 60 (the middle K of
  the thesis' grid), each method with the thesis' chosen (lr, T) for the cell.
- ``curves``: training and validation NLL after every full-batch step for halfmoons K = 10 and
  spirals K = 30 (the thesis' curve cells), T = 200, Adam lr 0.05 for GD / SM / SSM (the thesis
  does not state the rate of its curves), EM with 200 iterations; SSM over ``--seeds`` seeds (mean
  ± std, as the thesis), the deterministic-given-init methods on seed 0. Against step and against
  wall time (evaluation time excluded).
- ``init``: validation LL of k-means against random initialisation over ``--seeds`` seeds (mean ±
  std), all four methods, at the smallest K of each dataset (halfmoons 8, spirals 20, board 8)
  with the thesis' (lr, T) per cell.

``--quick``: halfmoons only, T capped at 50, 3 seeds (29 s on the shared machine at load ~3).
Torch runs on one thread: the tensors are small and the machine may be shared. A warm-up fit runs first so that
one-time costs (lazy imports on the first optimiser step) do not land on the first timed run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmix.experiments.thesis_toys import DATASETS, PUBLISHED, run_cell, train_valid
from deepmix.plots.density import (data_bounds, plot_log_density, plot_samples, save_figure,
                                   subplots)
from deepmix.utils.io import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
METHODS = ("em", "gd", "sm", "ssm")
LABEL = {"em": "EM", "gd": "GD", "sm": "SM", "ssm": "SSM"}
FIGURE_K = {"halfmoons": 12, "spirals": 40, "board": 60}
CURVE_K = {"halfmoons": 10, "spirals": 30}
INIT_K = {"halfmoons": 8, "spirals": 20, "board": 8}


def _cap(T: int | None, cap: int | None) -> int | None:
    return T if cap is None or T is None else min(T, cap)


def figures(data: str, out: Path, cap: int | None, seed: int = 0) -> dict[str, Any]:
    K = FIGURE_K[data]
    train, _ = train_valid(data)
    bounds = data_bounds(train, margin=0.05)
    fig, axes = subplots(3, len(METHODS))
    rows = []
    for j, method in enumerate(METHODS):
        T = _cap(PUBLISHED[(data, K)][method][2], cap)
        r = run_cell(data, K, method, T=T, seed=seed, record_curve=False, keep_model=True)
        model = r.pop("model")
        head = f"{LABEL[method]} (K={K}, T={r['T']}" + (f", lr={r['lr']}" if r["lr"] else "") + ")"
        plot_log_density(axes[0, j], model, bounds, points=train[:2000],
                         title=f"{head}\nvalid LL {r['valid_ll']:.3f}")
        s = model.sample(10_000, generator=torch.Generator().manual_seed(seed))
        s = s[0] if isinstance(s, tuple) else s
        plot_samples(axes[1, j], s, bounds, title="samples: 2-D histogram")
        plot_samples(axes[2, j], s, bounds, title="samples: scatter", scatter=True, max_points=2000)
        rows.append({k: v for k, v in r.items() if k not in ("train_nll_curve", "seconds_curve")})
        print(f"figure {data} K={K} {method}: valid LL {r['valid_ll']:.3f}, {r['seconds']:.1f} s",
              flush=True)
    png = out / f"density_{data}.png"
    save_figure(fig, png)
    return {"data": data, "K": K, "png": png.name, "rows": rows}


def _mean_std(curves: list[list[float]]) -> tuple[list[float], list[float]]:
    a = np.asarray(curves, dtype=np.float64)
    return a.mean(0).tolist(), a.std(0).tolist()


def curves(data: str, out: Path, cap: int | None, seeds: int,
           methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    K = CURVE_K[data]
    T = _cap(200, cap)
    res: dict[str, Any] = {"data": data, "K": K, "T": T, "lr": 0.05, "methods": {},
                           "png": f"curves_{data}.png"}
    path = out / f"curves_{data}.json"
    if path.is_file():  # methods run by separate invocations go into one figure
        old = json.loads(path.read_text())
        if (old["K"], old["T"], old["lr"]) == (K, T, 0.05):
            res["methods"] = {m: v for m, v in old["methods"].items() if m not in methods}
    for method in methods:
        runs = [run_cell(data, K, method, T=T, lr=0.05, seed=s, valid_curve=True)
                for s in (range(seeds) if method == "ssm" else [0])]
        train_m, train_s = _mean_std([r["train_nll_curve"] for r in runs])
        valid_m, valid_s = _mean_std([r["valid_nll_curve"] for r in runs])
        secs_m, _ = _mean_std([r["seconds_curve"] for r in runs])
        res["methods"][method] = {
            "seeds": len(runs), "train_nll": train_m, "train_nll_std": train_s,
            "valid_nll": valid_m, "valid_nll_std": valid_s, "seconds": secs_m,
            "total_seconds": statistics.mean(r["seconds"] for r in runs),
            "final_valid_ll": statistics.mean(r["valid_ll"] for r in runs)}
        print(f"curve {data} K={K} {method}: final valid LL "
              f"{res['methods'][method]['final_valid_ll']:.3f}, "
              f"{res['methods'][method]['total_seconds']:.1f} s for {T} steps", flush=True)
        # After every method, merged with what other invocations stored meanwhile: a run cut
        # short keeps its curves, and methods run in parallel end up in one file.
        if path.is_file():
            old = json.loads(path.read_text())
            if (old["K"], old["T"], old["lr"]) == (K, T, 0.05):
                res["methods"] = {**old["methods"], **res["methods"]}
        res["methods"] = {m: res["methods"][m] for m in METHODS if m in res["methods"]}
        write_json_atomic(path, res)
    png = out / f"curves_{data}.png"
    plot_curves(res, png)
    res["png"] = png.name
    return res


def plot_curves(res: dict[str, Any], png: Path) -> None:
    """Validation NLL against step and against seconds (SSM: mean ± std band)."""
    data, K = res["data"], res["K"]
    fig, axes = subplots(1, 2, size=3.6)
    for i, (method, m) in enumerate(res["methods"].items()):
        color = f"C{i}"
        steps = np.arange(len(m["valid_nll"]))
        mean, std = np.asarray(m["valid_nll"]), np.asarray(m["valid_nll_std"])
        label = LABEL[method] + (f" (mean ± std, {m['seeds']} seeds)" if m["seeds"] > 1 else "")
        for ax, xs in ((axes[0, 0], steps), (axes[0, 1], np.asarray(m["seconds"]))):
            ax.plot(xs, mean, label=label, lw=1.2, color=color)
            if m["seeds"] > 1:
                ax.fill_between(xs, mean - std, mean + std, alpha=0.25, color=color)
    lo = min(min(m["valid_nll"]) for m in res["methods"].values())
    for ax, xl in ((axes[0, 0], "full-batch step (EM: iteration)"), (axes[0, 1], "seconds")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation NLL (nats)")
        ax.set_ylim(lo - 0.1, lo + 2.0)
        ax.set_title(f"{data}, K = {K}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    save_figure(fig, png)


def _save_init(path: Path, res: dict[str, Any]) -> None:
    """Write ``res``, merged with the methods an earlier invocation stored for the same cell."""
    res = dict(res)
    if path.is_file():  # methods run by separate invocations go into one table
        old = json.loads(path.read_text())
        if (old["K"], old["seeds"]) == (res["K"], res["seeds"]):
            # per method and initialisation: k-means and random may come from separate runs
            merged = {m: {**old["methods"].get(m, {}), **res["methods"].get(m, {})}
                      for m in set(old["methods"]) | set(res["methods"])}
            res["methods"] = {m: merged[m] for m in METHODS if m in merged}
    write_json_atomic(path, res)


def init_comparison(data: str, cap: int | None, seeds: int,
                    methods: tuple[str, ...] = METHODS, path: Path | None = None,
                    inits: tuple[str, ...] = ("kmeans", "random")) -> dict[str, Any]:
    K = INIT_K[data]
    res: dict[str, Any] = {"data": data, "K": K, "seeds": seeds, "methods": {}}
    for method in methods:
        T = _cap(PUBLISHED[(data, K)][method][2], cap)
        entry: dict[str, Any] = {"T": T, "lr": PUBLISHED[(data, K)][method][1]}
        for init in inits:
            runs = [run_cell(data, K, method, T=T, seed=s, init=init, record_curve=False)
                    for s in range(seeds)]
            lls = [r["valid_ll"] for r in runs]
            entry[init] = {"valid_ll": lls, "mean": statistics.mean(lls),
                           "std": statistics.pstdev(lls),
                           "seconds": statistics.mean(r["seconds"] for r in runs)}
            print(f"init {data} K={K} {method} {init:6s}: valid LL {entry[init]['mean']:.3f} ± "
                  f"{entry[init]['std']:.3f} over {seeds} seeds", flush=True)
            res["methods"][method] = entry
            if path is not None:  # after every (method, init): a cut-short run keeps its rows
                _save_init(path, res)
    return res


def report(out: Path) -> str:
    """report.md from every JSON part under ``out``."""
    parts = ["# Thesis 2-D experiment: pictures, curves, initialisation", "",
             "Made by `benchmarks/objectives/toy2d_figures.py` (see its docstring for the "
             "settings). Times are wall-clock seconds on one CPU thread of a shared machine: "
             "compare them only within one table.", ""]
    for data in DATASETS:
        p = out / f"figures_{data}.json"
        if p.is_file():
            f = json.loads(p.read_text())
            parts += [f"## {data}, K = {f['K']}: log-density and samples", "",
                      "| method | lr | T | valid LL | published | seconds |", "|---|---|---|---|---|---|"]
            for r in f["rows"]:
                parts.append(f"| {LABEL[r['objective']]} | {r['lr'] or '-'} | {r['T']} | "
                             f"{r['valid_ll']:.3f} | {r['published_ll']} | {r['seconds']:.1f} |")
            parts += ["", f"![{data}]({f['png']})", ""]
    for data in CURVE_K:
        p = out / f"curves_{data}.json"
        if p.is_file():
            c = json.loads(p.read_text())
            ms = c["methods"]
            parts += [f"## NLL curves, {data} K = {c['K']} ({c['T']} steps, lr {c['lr']})", "",
                      "| method | seeds | final valid LL | seconds | seconds / EM | seconds / GD |",
                      "|---|---|---|---|---|---|"]
            def ratio(m: dict, ref: str) -> str:
                return f"{m['total_seconds'] / ms[ref]['total_seconds']:.2f}" if ref in ms else "-"

            for k, m in ms.items():
                parts.append(f"| {LABEL[k]} | {m['seeds']} | {m['final_valid_ll']:.3f} | "
                             f"{m['total_seconds']:.2f} | {ratio(m, 'em')} | {ratio(m, 'gd')} |")
            parts += ["", f"![curves {data}]({c['png']})", ""]
    rows = []
    for data in DATASETS:
        p = out / f"init_{data}.json"
        if p.is_file():
            rows.append(json.loads(p.read_text()))
    if rows:
        parts += [f"## k-means vs random initialisation (validation LL, mean ± std over "
                  f"{rows[0]['seeds']} seeds)", "",
                  "| data K | method | T | k-means | random | random - k-means |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            for k, e in r["methods"].items():
                if not {"kmeans", "random"} <= set(e):
                    continue  # one initialisation still missing
                parts.append(f"| {r['data']} {r['K']} | {LABEL[k]} | {e['T']} | "
                             f"{e['kmeans']['mean']:.3f} ± {e['kmeans']['std']:.3f} | "
                             f"{e['random']['mean']:.3f} ± {e['random']['std']:.3f} | "
                             f"{e['random']['mean'] - e['kmeans']['mean']:+.3f} |")
        parts.append("")
    parts += ["## Notes", "",
              "- EM starts from `GaussianMixture`'s initialisation: k-means labels and one "
              "hard-assignment M-step (random init: random points as means, random weights, the "
              "data covariance), so its step-0 NLL is already low; GD / SM / SSM start from the "
              "thesis' init (k-means centres or random points, pi uniform or random, Sigma = I).",
              "- deepmix's EM keeps log pi as weights (spec §7): the thesis' EM weight bug is not "
              "reproduced, so EM does not collapse at larger K here.",
              "- Runs of one table may have run as separate, parallel invocations (see the seeds "
              "column); wall-time ratios across rows carry the machine's changing load.", ""]
    text = "\n".join(parts)
    write_text_atomic(out / "report.md", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="halfmoons only, T <= 50, 3 seeds")
    ap.add_argument("--parts", nargs="+", default=["figures", "curves", "init"],
                    choices=["figures", "curves", "init", "replot"],
                    help="replot: redraw the curve PNGs from their JSON (no training)")
    ap.add_argument("--datasets", nargs="+", default=None, choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=None, help="seeds of SSM curves and of init")
    ap.add_argument("--curve-seeds", type=int, default=None, help="SSM curve seeds (--seeds)")
    ap.add_argument("--init-seeds", type=int, default=None, help="init comparison seeds (--seeds)")
    ap.add_argument("--curve-methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--inits", nargs="+", default=["kmeans", "random"],
                    choices=["kmeans", "random"])
    ap.add_argument("--init-methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--cap", type=int, default=None, help="at most this many steps per run")
    ap.add_argument("--out", default=None,
                    help="results folder (default benchmarks/results/toy2d, with --quick "
                         "benchmarks/results/toy2d_quick so a quick run never replaces the full one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    datasets = args.datasets or (["halfmoons"] if args.quick else list(DATASETS))
    seeds = args.seeds or (3 if args.quick else 10)
    cap = args.cap or (50 if args.quick else None)
    out = Path(args.out or HERE.parent / "results" / ("toy2d_quick" if args.quick else "toy2d"))
    out.mkdir(parents=True, exist_ok=True)
    if args.parts == ["replot"]:
        for data in CURVE_K:
            if (out / f"curves_{data}.json").is_file():
                plot_curves(json.loads((out / f"curves_{data}.json").read_text()),
                            out / f"curves_{data}.png")
        print(report(out))
        return
    # Warm-up: the first optimiser step imports and initialises lazily (seconds), which would
    # otherwise be booked on the first timed run.
    run_cell("halfmoons", 2, "gd", T=2, lr=0.05)
    t0 = time.perf_counter()
    for data in datasets:
        if "figures" in args.parts:
            write_json_atomic(out / f"figures_{data}.json", figures(data, out, cap))
        if "curves" in args.parts and data in CURVE_K:
            res = curves(data, out, cap, args.curve_seeds or seeds, tuple(args.curve_methods))
            write_json_atomic(out / f"curves_{data}.json", res)
        if "init" in args.parts:
            init_comparison(data, cap, args.init_seeds or seeds, tuple(args.init_methods),
                            path=out / f"init_{data}.json", inits=tuple(args.inits))
    print(report(out))
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
