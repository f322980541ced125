"""Regenerate the benchmark tables of the README and docs/benchmarks.md from the JSON results.

usage: .venv/bin/python benchmarks/tables.py [--check]

Reads benchmarks/results/{gmm_vs_sklearn,circuits_vs_peers,train_speed,contention,
deep_gmm_em_speed,scaling,density_leaderboard}.json (whichever exist) and rewrites the text between
``<!-- tables:speed -->`` / ``<!-- /tables:speed -->`` in docs/benchmarks.md and between
``<!-- tables:leaderboard -->`` / ``<!-- /tables:leaderboard -->`` in README.md, so the figures
the docs quote are the ones the scripts wrote. ``--check`` exits 1 when a file is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def speed_rows() -> list[str]:
    """One Markdown row per measured comparison: what, deepmix, peer, ratio, command."""
    rows = []
    # gmm_vs_sklearn_k100.json (a K = 100 run of an earlier sitting) is kept as a record, not
    # tabled: the main file holds K = 25 and 100 from one sitting.
    for gmm, s in [(g, s) for g in (_load("gmm_vs_sklearn"),)
                   for s in (g or {}).get("summary", [])]:
        if "deepmix" not in s:          # a file in the format before the one-run comparison
            continue
        d, k = s["deepmix"], s["sklearn"]
        rows.append(f"| flat diag GMM K={s['k']} ({s['setting']}), defaults, mean of seeds "
                    f"{gmm.get('seeds', '')} | {d['mean_fit_seconds']:.1f} s, test LL "
                    f"{d['mean_test_ll']:.1f} | scikit-learn {k['mean_fit_seconds']:.1f} s, "
                    f"test LL {k['mean_test_ll']:.1f} | **{s['speedup']:.2f}x** faster, "
                    f"{s['test_ll_minus_sklearn']:+.1f} nats | `benchmarks/gmm_vs_sklearn.py` |")
    circ = _load("circuits_vs_peers")
    if circ:
        for r in circ["rows"]:
            if "speedup_vs_spflow" in r and not r["name"].startswith("spflow"):
                rows.append(f"| {r['name']} ({r['setting']}) | {r['seconds']:.1f} s, test LL "
                            f"{r['test_ll']:.0f} | spflow Einet "
                            f"{r['seconds'] * r['speedup_vs_spflow']:.1f} s, test LL "
                            f"{r['test_ll'] - r['test_ll_minus_spflow']:.0f} | "
                            f"**{r['speedup_vs_spflow']:.2f}x** faster | "
                            f"`benchmarks/circuits_vs_peers.py` |")
    ts = _load("train_speed")
    if ts and ts.get("yardstick_s"):
        for arch, r in ts["archs"].items():
            med = f", median of {ts['rounds']} rounds" if ts.get("rounds", 1) > 1 else ""
            rows.append(f"| DCGMM {arch} epoch, batch {ts['batch_size']}, {ts['threads']} "
                        f"threads{med} | {r['seconds_per_epoch']:.2f} s | yardstick "
                        f"{ts['yardstick_s']:.2f} s | **{r['ratio_to_yardstick']:.2f}x** the "
                        f"yardstick (lower is faster) | `benchmarks/train_speed.py --yardstick` |")
    cont = _load("contention")
    if cont:
        quiet = cont["rows"][0]["median_seconds"]
        for r in cont["rows"][1:]:
            rows.append(f"| DCGMM {cont['arch']} on {cont['n_images']} images, {r['case']} | "
                        f"{r['median_seconds']:.2f} s | quiet {quiet:.2f} s | "
                        f"**{r['vs_quiet']:.2f}x** the quiet time | `benchmarks/contention.py` |")
    em = _load("deep_gmm_em_speed")
    for r in (em or {}).get("rows", []):
        rows.append(f"| deep GMM {r['model']} ({r['layers']}), one hard-EM iteration on "
                    f"{r['rows']} MNIST images, {r['search']} E step + {r['m_updates']} updates | "
                    f"{r['iteration_s']:.1f} s (E {r['e_step_s']:.2f} s), peak RSS "
                    f"{r['peak_rss_gb']:.1f} GB | one log-likelihood pass {r['ll_pass_s']:.2f} s "
                    f"| E step **{r['e_over_ll']:.1f}x** the pass | "
                    f"`benchmarks/deep_gmm/em_speed.py` |")
    sc = _load("scaling")
    results = (sc or {}).get("results", [])
    for one in (r for r in results if r["nproc"] == 1):
        for many in (r for r in results if r["workload"] == one["workload"] and r["nproc"] > 1):
            what = ("independent processes side by side, no communication (the ceiling)"
                    if many.get("independent") else "processes vs 1 (1 thread each, "
                    "torch.distributed/gloo)")
            rows.append(f"| {one['workload']}, {many['nproc']} {what} | "
                        f"{many['images_per_s']:.0f} images/s | "
                        f"{one['images_per_s']:.0f} images/s | "
                        f"**{many['images_per_s'] / one['images_per_s']:.2f}x** | "
                        f"`benchmarks/scaling.py` |")
    return rows


def speed_table() -> str:
    rows = speed_rows()
    if not rows:
        return "No results yet: run the scripts above.\n"
    return ("| what | deepmix | peer / yardstick | ratio | command |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def leaderboard_table() -> str:
    lb = _load("density_leaderboard")
    if not lb:
        return "No results yet: `benchmarks/density_leaderboard.py`.\n"
    data = list(lb["data"])
    names: list[str] = []
    for d in data:
        names += [r["name"] for r in lb["data"][d] if r["name"] not in names]
    head = "| model | family | " + " | ".join(f"{d} bits/dim" for d in data) + " |"
    lines = [head, "|---|---|" + "---:|" * len(data)]

    def cell(d: str, name: str) -> str:
        r = next((r for r in lb["data"][d] if r["name"] == name), None)
        return "" if r is None else ("failed" if "error" in r else f"{r['bits_per_dim']:.3f}")

    def key(name: str) -> float:
        r = next((r for r in lb["data"][data[0]] if r["name"] == name), {})
        return r.get("bits_per_dim", float("inf"))

    for name in sorted(names, key=key):
        fam = next(r["family"] for d in data for r in lb["data"][d] if r["name"] == name)
        lines.append(f"| {name} | {fam} | " + " | ".join(cell(d, name) for d in data) + " |")
    note = (f"\nHeld-out bits/dim (lower is better), dequantised images, published split, "
            f"defaults{' (--quick: a smoke run)' if lb.get('quick') else ''}; "
            f"`{lb['command']}`; settings per row in `benchmarks/results/density_leaderboard.md`.\n")
    return "\n".join(lines) + "\n" + note


def _replace(path: Path, tag: str, body: str) -> tuple[str, str]:
    text = path.read_text()
    pattern = re.compile(rf"(<!-- tables:{tag} -->\n).*?(<!-- /tables:{tag} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no <!-- tables:{tag} --> markers")
    return text, pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = False
    for path, tag, body in ((ROOT / "docs" / "benchmarks.md", "speed", speed_table()),
                            (ROOT / "README.md", "leaderboard", leaderboard_table())):
        old, new = _replace(path, tag, body)
        if old != new:
            stale = True
            if not args.check:
                path.write_text(new)
                print(f"updated {path.relative_to(ROOT)}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
