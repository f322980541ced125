"""2-D DRMM figures (paper Figs. 1, 3, 10, 12 reduced): densities and samples on the Swiss roll
and the Sierpinski triangle, unconditional and conditioned on x = 0.5, on x + 0.2y > 0 and on a
Gaussian prior, forward vs backward sampling.

usage: .venv/bin/python benchmarks/drmm/toy2d.py [--quick] [--steps 6000]

Models: Swiss roll 4 layers x 16 (Fig. 12's model), Sierpinski 4 layers x 3 (81 modes), trained
by the paper's hard EM (batch 64, lr0 0.005, init batch 256) on 4096 points. Per data set one
row of panels: data, exact log density (enumeration), unconditional forward / backward samples,
x = 0.5 forward / backward, x + 0.2y > 0 forward / backward, a Gaussian prior N((0.5, 0.5),
0.2^2) forward / backward. The JSON holds per condition: the fraction of samples with
|x - 0.5| <= 3 sigma_L, the inequality's satisfaction rate, the sample mean under the prior, and
the median distance of samples to the nearest data point (on-manifold error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, train_drmm, write_results  # noqa

from deepmix.data import drmm_sierpinski, drmm_swissroll  # noqa: E402
from deepmix.metrics.constraints import constraint_satisfaction  # noqa: E402
from deepmix.models.drmm import DRMMCondition, GaussianPrior, Inequality  # noqa: E402
from deepmix.plots.density import plot_log_density, plot_samples, save_figure, subplots  # noqa

BOUNDS = (-1.2, 1.2, -1.2, 1.2)
N_SAMPLES = 1024


def conditions() -> dict[str, DRMMCondition | None]:
    return {
        "unconditional": None,
        "x=0.5": DRMMCondition(values=torch.tensor([0.5, 0.0]), mask=torch.tensor([1.0, 0.0])),
        "x+0.2y>0": DRMMCondition(inequalities=(Inequality(torch.tensor([1.0, 0.2]), 0.0),)),
        "prior": DRMMCondition(prior=GaussianPrior(mean=torch.tensor([0.5, 0.5]),
                                                   sd=torch.tensor([0.2, 0.2]))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--resolution", type=int, default=120)
    ap.add_argument("--quick", action="store_true", help="1000 steps, coarse density grid")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.resolution = 1000, 60
    torch.set_num_threads(args.threads)
    sets = {"swissroll": (drmm_swissroll(4096, seed=0), 16, 4),
            "sierpinski": (drmm_sierpinski(4096, seed=0), 3, 4)}
    conds = conditions()
    fig, axes = subplots(len(sets), 2 + 2 * len(conds), size=1.9)
    rows = []
    for i, (name, (x, K, L)) in enumerate(sets.items()):
        model, seconds = train_drmm(x, layers=L, components=K, steps=args.steps, batch=64,
                                    lr=0.005, init_batch=256)
        sigma_L = float(model.layers[-1].streams[0].variances().detach().sqrt()[0])
        plot_samples(axes[i, 0], x, BOUNDS, scatter=True, title=f"{name} data")
        plot_log_density(axes[i, 1], model, BOUNDS, resolution=args.resolution,
                         title=f"log p, {L}x{K}")
        col = 2
        for cname, cond in conds.items():
            for mode in ("forward", "backward"):
                g = torch.Generator().manual_seed(0)
                if mode == "forward":
                    s = model.sample(N_SAMPLES, generator=g, condition=cond)
                else:
                    s = model.sample_backward(N_SAMPLES, generator=g, condition=cond)
                plot_samples(axes[i, col], s, BOUNDS, scatter=True, title=f"{cname} {mode[:3]}")
                col += 1
                row = {"data": name, "model": f"{L}x{K}", "condition": cname, "sampling": mode,
                       "steps": args.steps, "train_s": round(seconds, 1), "sigma_L": sigma_L,
                       "median_dist_to_data": float(torch.cdist(s, x).min(1).values.median())}
                if cname == "x=0.5":
                    row["within_3sigma"] = float(((s[:, 0] - 0.5).abs() <= 3 * sigma_L)
                                                 .double().mean())
                    row["median_abs_x_err"] = float((s[:, 0] - 0.5).abs().median())
                if cname in ("x+0.2y>0", "unconditional"):
                    row["satisfied"] = constraint_satisfaction(s, torch.tensor([1.0, 0.2]))
                if cname == "prior":
                    row["mean_x"], row["mean_y"] = (float(v) for v in s.mean(0))
                rows.append(row)
                extra = {k: round(v, 3) for k, v in row.items()
                         if k in ("within_3sigma", "satisfied", "mean_x", "mean_y")}
                print(f"{name} {L}x{K} {cname:13s} {mode:8s}: median dist to data "
                      f"{row['median_dist_to_data']:.4f} {extra}", flush=True)
    stem = "drmm_toy2d_quick" if args.quick else "drmm_toy2d"
    png = save_figure(fig, RESULTS / f"{stem}.png")
    cols = ["data", "model", "condition", "sampling", "median_dist_to_data", "within_3sigma",
            "median_abs_x_err", "satisfied", "mean_x", "mean_y", "sigma_L", "steps", "train_s"]
    md = (f"# DRMM 2-D toys (`benchmarks/drmm/toy2d.py{' --quick' if args.quick else ''}`)\n\n"
          f"![panels]({png.name})\n\n{N_SAMPLES} samples per panel; backward sampling with the "
          f"paper's defaults (truncation 0.02, additive skip 0.5).\n\n"
          + markdown_table(rows, cols))
    write_results(stem, {**environment(args.threads), "args": vars(args), "rows": rows,
                         "png": str(png)}, md)


if __name__ == "__main__":
    main()
