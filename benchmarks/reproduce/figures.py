"""Paper Fig. 5 (sharpening on/off for C and D) and Fig. 8 (in-painting the right half, A and F),
plus the in-painting error against a flat GMM's conditional mean.

usage: .venv/bin/python benchmarks/reproduce/figures.py [--quick] [--datasets mnist
       fashion-mnist] [--epochs 10] [--n-test 1000] [--cache DIR]

Writes PNGs under benchmarks/results/reproduce_figures/ and the table
benchmarks/results/reproduce_figures.{json,md}. The in-painting error is the MSE over the hidden
right half of the first --n-test test images for
- deepmix's in-painting (marginalised GMM scores at every layer, posterior mean),
- the papers' single pass (forward the image with the hidden half at 0, variant generation from
  the top GMM, paste the observed half), and
- a flat diagonal GMM (K = 49, EM) conditional mean E[x_miss | x_obs].
--quick: MNIST, 2 epochs, 200 test images (a few minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from deepmix.data import load_images
from deepmix.experiments.dcgmm_papers import markdown_table, trained_model
from deepmix.inference import (as_observed, flat_gmm_inpaint, inpaint, make_mask, missing_mse,
                               variants)
from deepmix import GaussianMixture
from deepmix.plots import save_grid
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--sharpen-iterations", type=int, default=300)
    p.add_argument("--sharpen-rate", type=float, default=0.01)
    p.add_argument("--cache", default=None, help="folder of trained runs to reuse")
    p.add_argument("--out", default=str(RESULTS / "reproduce_figures"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.datasets, args.epochs, args.n_test = ["mnist"], 2, 200
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict = {"config": vars(args), "sharpening": {}, "inpainting": {}}
    rows = []
    sharpen = {"iterations": args.sharpen_iterations, "rate": args.sharpen_rate}
    for data in args.datasets:
        for arch in ("C", "D"):
            model, secs = trained_model(arch, data, epochs=args.epochs, cache=args.cache)
            plain = model.sample(64, seed=0)
            t0 = time.perf_counter()
            sharp = model.sample(64, seed=0, sharpen=sharpen)
            files = {"plain": out / f"{data}_{arch}_no_sharpening.png",
                     "sharpened": out / f"{data}_{arch}_sharpening.png"}
            save_grid(plain, files["plain"])
            save_grid(sharp, files["sharpened"])
            results["sharpening"][f"{data}/{arch}"] = {
                "files": {k: str(v) for k, v in files.items()}, "train_seconds": secs,
                "sharpen_seconds_per_64": time.perf_counter() - t0}
            print(f"{data} {arch}: sharpening grids written", file=sys.stderr)
        train_ds, test_ds = load_images(data, "train"), load_images(data, "test")
        xtr, xte = train_ds.to_tensor(), test_ds.to_tensor()[: args.n_test]
        obs = make_mask("right-half", xte.shape[1:3])
        O = as_observed(obs, xte)
        t0 = time.perf_counter()
        gm = GaussianMixture(49, covariance_type="diag", dtype=torch.float32,
                             random_state=0).fit(xtr.reshape(len(xtr), -1))
        flat = flat_gmm_inpaint(gm, xte, obs)
        flat_mse = missing_mse(flat, xte, obs)
        mean_fill = missing_mse(torch.where(O, xte, xtr.mean(0, keepdim=True)), xte, obs)
        entry = {"flat_gmm_k49": flat_mse, "data_mean_fill": mean_fill,
                 "flat_gmm_seconds": time.perf_counter() - t0}
        for arch in ("A", "F"):
            model, secs = trained_model(arch, data, epochs=args.epochs, cache=args.cache)
            ours = inpaint(model, xte, obs)
            single = variants(model, torch.where(O, xte, torch.zeros_like(xte)), top_s=1,
                              divisor=10.0, seed=0)
            single = torch.where(O, xte, single)
            drawn = inpaint(model, xte[:16], obs, mode="sample", divisor=10.0)
            entry[arch] = {"deepmix": missing_mse(ours, xte, obs),
                           "paper_single_pass": missing_mse(single, xte, obs)}
            grid = torch.cat([xte[:16], torch.where(O[:16], xte[:16], torch.full_like(xte[:16], .5)),
                              single[:16], ours[:16], drawn])
            path = out / f"{data}_{arch}_inpainting.png"
            save_grid(grid, path, ncol=16)
            entry[arch]["file"] = str(path)
            rows.append([data, arch, f"{entry[arch]['deepmix']:.4f}",
                         f"{entry[arch]['paper_single_pass']:.4f}", f"{flat_mse:.4f}",
                         f"{mean_fill:.4f}"])
            print(f"{data} {arch}: in-painting MSE {entry[arch]['deepmix']:.4f} (single pass "
                  f"{entry[arch]['paper_single_pass']:.4f}, flat GMM {flat_mse:.4f})",
                  file=sys.stderr)
        results["inpainting"][data] = entry
    results["wall_seconds"] = time.perf_counter() - t_start
    table = markdown_table(["data", "model", "deepmix in-painting", "papers' single pass",
                            "flat GMM K=49 conditional mean", "data-mean fill"], rows)
    md = ("# Figures 5 and 8: sharpening and in-painting\n\n"
          f"MSE over the hidden right half of {args.n_test} test images "
          f"(models trained {args.epochs} epochs, batch 100):\n\n{table}\n\n"
          "In-painting grids (`*_inpainting.png`), rows: originals, inputs (hidden half grey), "
          "papers' single pass, deepmix posterior mean, deepmix drawn completions.\n"
          "Sharpening grids: `*_no_sharpening.png` / `*_sharpening.png` for C and D "
          f"({args.sharpen_iterations} iterations, rate {args.sharpen_rate}).\n"
          f"Wall time {results['wall_seconds']:.0f} s.\n")
    write_json_atomic(str(out) + ".json", results)
    write_text_atomic(str(out) + ".md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
