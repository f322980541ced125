"""``deepmix evaluate DIR``: per-layer annealed loss and true log-likelihood on a data split."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import load_run_and_data, positive_int

HELP = "per-GMM-layer log-likelihood (nats, bits/dim) of a trained run on a data split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--data", help="data set (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--classes", help="evaluate on these classes only, e.g. 0 or 1-9")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON ('-': stdout)")
    p.add_argument("--per-sample", metavar="FILE.npz",
                   help="write per-sample (and per-position) log-likelihoods to an .npz")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..inference import evaluate
    from ..plots.report import metrics_table
    from ..utils.io import atomic_path, write_json_output

    model, data_name, ds = load_run_and_data(args, family=None)
    if model.family == "dcgmm":
        summary, per = evaluate(model, ds.to_tensor(), batch_size=args.batch_size,
                                levels=ds.levels, per_position=args.per_sample is not None)
    elif model.family == "deep-gmm":
        from ..inference.deep_gmm import evaluate_deep_gmm
        from .families import model_input

        summary, per = evaluate_deep_gmm(model, model_input(model, ds.to_tensor()),
                                         batch_size=args.batch_size, levels=ds.levels)
    else:
        from ..inference import evaluate_density
        from .families import model_input

        summary, per = evaluate_density(model, model_input(model, ds.to_tensor()),
                                        batch_size=args.batch_size, levels=ds.levels)
    summary.update({"data": str(data_name), "split": args.split, "run": str(args.run_dir)})
    from .families import describe

    print(f"{describe(model)} on {data_name}/{args.split} ({summary['n']} images)")
    if model.family == "dcgmm":
        print(metrics_table(summary))
    elif model.family == "deep-gmm":
        print(f"lower bound {summary['lower_bound']:.3f} nats per image "
              f"({summary['lower_bound_bits_per_dim']:.4f} bits/dim), UB* "
              f"{summary['upper_bound_approx']:.3f}"
              + (f", exact {summary['log_prob']:.3f} ({summary['bits_per_dim']:.4f} bits/dim)"
                 if summary["exact"] else ", exact value intractable"))
    else:
        print(f"log-likelihood {summary['log_prob']:.3f} ± {summary['log_prob_std']:.3f} nats "
              f"per image, {summary['bits_per_dim']:.4f} bits/dim")
    if args.json:
        if write_json_output(args.json, summary):
            print(f"wrote {args.json}")
    if args.per_sample:
        with atomic_path(Path(args.per_sample), suffix=".npz") as tmp:
            np.savez_compressed(tmp, **{k.replace("/", "_"): v.numpy() for k, v in per.items()})
        print(f"wrote {args.per_sample}")
    return 0
