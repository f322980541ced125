"""Analogue of the deep GMM paper's Table 1 on MNIST (spec deep-gmm.md section 6 (b)).

usage: .venv/bin/python benchmarks/deep_gmm/table1.py [--quick] [--hc 0 1 2 3 4]
       [--updates 10000] [--threads 2] [--json FILE]

0-4 half-convolution layers (5x5, 8 -> 8 channels) + one block-diagonal layer with one
transformation, fold r = 4 ((7, 7, 16) grids), trained on the library's loop (hard-em; with one
path it is plain maximum likelihood by minibatch Adam, batch 100, float32), against the
full-covariance Gaussian in closed form (float64, ridge 1e-9) and the block-diagonal-only
Gaussian (independent patches: the whitening initialisation is its maximum-likelihood fit).
Data: pixels dequantised once with a fixed seed and mapped to x = (v + u)/128 - 1 in [-1, 1);
train = the first 50k training images, valid = the last 10k, test = the official 10k
(--quick: 5k / 1k / 2k and 1,000 updates). Prints and writes nats per image, bits/dim
(7 - LL/(784 ln 2)) and parameter counts; what to look for: LL rises with the number of HC
layers, and 3+ HC reach the full Gaussian with far fewer parameters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import deepmix
from common import RESULTS, full_gaussian, sample_grid, splits, summary
from deepmix.models import DeepGMM, DeepGMMConfig
from deepmix.utils.io import write_json_atomic, write_text_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hc", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train, valid, test = splits(args.quick)
    updates = args.updates or (1000 if args.quick else 10000)
    rows = []
    trained = []
    logp, params = full_gaussian(train)
    rows.append({"model": "full-covariance Gaussian", "params": params,
                 "valid": summary(logp(valid)), "test": summary(logp(test)), "seconds": 0.0})
    for k in [None] + list(args.hc):
        layers = "bd1" if k is None else ",".join(["hc5"] * k + ["bd1"])
        model = DeepGMM(DeepGMMConfig(shape=(28, 28, 1), fold=4, layers=layers,
                                      dtype="float32"))
        x = train.float()
        t = time.perf_counter()
        if k is None:
            model.initialize(x, ridge=1e-9)            # the independent-patch Gaussian's MLE
            name = "block-diagonal Gaussian (independent patches)"
        else:
            epochs = max(1, round(updates * 100 / x.shape[0]))
            obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
                "lr": args.lr, "first_m_epochs": epochs, "ridge": 1e-9})
            deepmix.training.fit(model, x, obj, epochs=epochs, batch_size=100)
            name = f"{k} HC + BD"
        seconds = time.perf_counter() - t
        with torch.no_grad():
            row = {"model": name, "layers": layers, "params": model.n_params(),
                   "valid": summary(model.log_prob(valid.float())),
                   "test": summary(model.log_prob(test.float())), "seconds": seconds}
        rows.append(row)
        trained.append((name, model))
        print(f"{name:48s} {row['params']:8d} params  valid {row['valid']['nats']:9.1f} "
              f"({row['valid']['bits_per_dim']:.3f} bits/dim)  test {row['test']['nats']:9.1f}"
              f"  {seconds:6.1f} s", flush=True)
    g = rows[0]
    print(f"{g['model']:48s} {g['params']:8d} params  valid {g['valid']['nats']:9.1f} "
          f"({g['valid']['bits_per_dim']:.3f} bits/dim)  test {g['test']['nats']:9.1f}")
    tag = "_quick" if args.quick else ""
    out = Path(args.json) if args.json else RESULTS / f"deep_gmm_table1{tag}.json"
    write_json_atomic(out, {"quick": args.quick, "updates": updates, "n_train": len(train),
                            "rows": rows})
    md = ["| model | params | valid nats | valid bits/dim | test nats | test bits/dim |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['params']:,} | {r['valid']['nats']:.1f} ± "
                  f"{r['valid']['se']:.1f} | {r['valid']['bits_per_dim']:.3f} | "
                  f"{r['test']['nats']:.1f} ± {r['test']['se']:.1f} | "
                  f"{r['test']['bits_per_dim']:.3f} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(md) + "\n")
    png = sample_grid(trained, out.stem)
    print(f"samples (one row per model, BD-only Gaussian first, then 0-4 HC): {png}")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
