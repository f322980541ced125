"""The DRMM paper's Fig. 7 protocol, reduced: sample F1 against parameter count for DRMMs of
depth 1-4 (a 1-layer DRMM is the baseline isotropic GMM, spec drmm §3) on the 3-D Swiss roll,
the 4-link arm IK data, the 2-D humanoid's full-body IK data (30 variables) and 8 x 8 MNIST
patches (64 pixels; patches with ink, held-out ones from the test images).

usage: .venv/bin/python benchmarks/drmm/fig7.py [--quick] [--gmm-k 64 128 256]
       [--depths 2 3 4] [--steps 3000] [--n-eval 5000] [--data NAME ...] [--merge]

``--merge`` keeps the rows of the results file for the data sets this run does not train (e.g.
``--data humanoid_ik mnist_patches --merge`` adds two panels to an earlier run's two).

For each baseline size K_G (1-layer DRMM with K_G components) and depth L in --depths, the DRMM
with the smallest K >= 4 whose parameter count reaches the baseline's; all trained by the
paper's hard EM (batch 64, lr0 0.005, init batch 2000; paper: 50k steps). Metric: k-NN
precision / recall (Kynkäänniemi et al., k = 3) of n_eval forward samples against n_eval
held-out data vectors (raw, paper: 20k vs 20k), F1 = 2PR / (P + R + 1e-8); one run per point.
The baseline GMM samples with its noise N(0, sigma^2) (paper Sec. 4.3: "single-layer DRMMs
that add Gaussian noise with sigma after sampling a mixture component"); DRMMs of depth >= 2
sample sums of means without noise (the paper's default). Paper's result: DRMM better for a given parameter count, except on the 3-D Swiss roll.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, markdown_table, train_drmm, write_results  # noqa

from deepmix.data import arm_ik, drmm_swissroll, humanoid_ik, image_patches  # noqa
from deepmix.data import load_images  # noqa: E402
from deepmix.metrics.precision_recall import precision_recall  # noqa: E402
from deepmix.models.drmm.model import parameter_count  # noqa: E402


def matching_k(D: int, L: int, target: int) -> int:
    """The smallest K >= 4 with parameter_count(D, K, L) >= target."""
    K = 4
    while parameter_count(D, K, L) < target:
        K += 1
    return K


#: MNIST patch size of the Fig. 7 panel (the paper does not state it): 8 x 8, the receptive
#: field of DCGMM's first layers, 64 raw pixel values in [0, 1].
PATCH = 8


def mnist_patches(n: int, seed: int) -> torch.Tensor:
    """n random 8 x 8 MNIST patches with ink (at least one non-zero pixel: a blank patch is
    one point mass, which k-NN precision / recall measures with radius 0); seed 0 draws from
    the training images, any other seed from the test images (held-out)."""
    images = load_images("mnist", "train" if seed == 0 else "test").to_tensor()
    return image_patches(images, n, PATCH, seed=seed, min_ink=1)


#: name -> (n, seed) -> (n, D) rows; seed 0 gives the training data, seed 1 the held-out data.
DATA = {"swissroll3d": lambda n, seed: drmm_swissroll(n, dims=3, seed=seed),
        "arm_ik": lambda n, seed: arm_ik(n, seed=seed),
        "humanoid_ik": lambda n, seed: humanoid_ik(n, seed=seed),
        "mnist_patches": mnist_patches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--gmm-k", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--depths", nargs="+", type=int, default=[2, 3, 4])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n-train", type=int, default=100_000)
    ap.add_argument("--n-eval", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="K_G 64, depths 2 and 4, 1500 steps, "
                    "2000 eval points")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--merge", action="store_true",
                    help="keep the earlier rows of the data sets this run does not train")
    args = ap.parse_args()
    if args.quick:
        args.gmm_k, args.depths, args.steps, args.n_eval = [64], [2, 4], 1500, 2000
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.data:
        x = DATA[name](args.n_train, 0)
        held = DATA[name](args.n_eval, 1)
        D = x.shape[1]
        for kg in args.gmm_k:
            target = parameter_count(D, kg, 1)
            for L in [1, *args.depths]:
                K = kg if L == 1 else matching_k(D, L, target)
                model, seconds = train_drmm(x, layers=L, components=K, steps=args.steps,
                                            batch=64, lr=0.005, init_batch=2000)
                # Paper Sec. 4.3: the baseline GMM is a 1-layer DRMM that adds N(0, sigma^2)
                # noise after sampling a component; deeper DRMMs sample without noise.
                s = model.sample(args.n_eval, generator=torch.Generator().manual_seed(2),
                                 noise=L == 1)
                pr = precision_recall(held, s, k=3)
                row = {"data": name, "gmm_K": kg, "layers": L, "K": K,
                       "params": model.n_parameters, "precision": pr["precision"],
                       "recall": pr["recall"], "f1": pr["f1"], "steps": args.steps,
                       "train_s": round(seconds, 1), "date": time.strftime("%Y-%m-%d")}
                rows.append(row)
                print(f"{name} K_G={kg}: L={L} K={K} ({row['params']} params) P "
                      f"{row['precision']:.3f} R {row['recall']:.3f} F1 {row['f1']:.3f} "
                      f"[{seconds:.0f} s]", flush=True)
    stem = "drmm_fig7_quick" if args.quick else "drmm_fig7"
    if args.merge and (RESULTS / f"{stem}.json").is_file():
        old = json.loads((RESULTS / f"{stem}.json").read_text())["rows"]
        rows = [r for r in old if r["data"] not in args.data] + rows
    names = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        steps = sorted({r["steps"] for r in rows if r["data"] == name})
        for L in sorted({r["layers"] for r in rows if r["data"] == name}):
            pts = sorted((r["params"], r["f1"]) for r in rows if r["data"] == name
                         and r["layers"] == L)
            ax.plot([p for p, _ in pts], [f for _, f in pts], "o-",
                    label="GMM (L=1)" if L == 1 else f"DRMM L={L}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("parameters")
        ax.set_ylabel("F1 (k=3)")
        ax.set_title(f"{name}, {'/'.join(map(str, steps))} steps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = RESULTS / f"{stem}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    summary = []
    for name in names:
        for kg in sorted({r["gmm_K"] for r in rows if r["data"] == name}):
            sub = [r for r in rows if r["data"] == name and r["gmm_K"] == kg]
            gmm = next(r for r in sub if r["layers"] == 1)
            best = max((r for r in sub if r["layers"] > 1), key=lambda r: r["f1"], default=None)
            if best is not None:
                summary.append({"data": name, "gmm_K": kg, "gmm_f1": gmm["f1"],
                                "best_drmm": f"{best['layers']}x{best['K']}",
                                "best_drmm_f1": best["f1"],
                                "drmm_better": best["f1"] > gmm["f1"]})
    for s in summary:
        print(f"{s['data']} K_G={s['gmm_K']}: GMM F1 {s['gmm_f1']:.3f}, best DRMM "
              f"{s['best_drmm']} F1 {s['best_drmm_f1']:.3f}")
    md = (f"# DRMM Fig. 7 protocol, reduced (`benchmarks/drmm/fig7.py"
          f"{' --quick' if args.quick else ''}`)\n\n![F1 vs parameters]({png.name})\n\n"
          f"Steps per row (paper 50k), batch 64, lr0 0.005, {args.n_eval} samples vs "
          f"{args.n_eval} held-out points, k = 3; GMM (L = 1) samples with noise, DRMMs without; "
          f"MNIST patches: {PATCH} x {PATCH}, with ink.\n\n"
          + markdown_table(summary, ["data", "gmm_K", "gmm_f1", "best_drmm", "best_drmm_f1",
                                     "drmm_better"]) + "\n\n"
          + markdown_table(rows, ["data", "gmm_K", "layers", "K", "params", "precision",
                                  "recall", "f1", "steps", "train_s", "date"]))
    write_results(stem, {**environment(args.threads), "args": vars(args), "rows": rows,
                         "summary": summary, "png": str(png)}, md)


if __name__ == "__main__":
    main()
