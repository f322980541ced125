"""``deepmix sample-quality DATA``: accuracy of the paper's reference CNN on generated samples.

The CNN (paper Table VII) is trained on DATA's training set on first use and cached under the
data cache (``classifiers/<DATA>.safetensors``). Samples come from per-class runs
(``--run 0=runs/c0 --run 1=runs/c1 ...``, the paper's protocol), from one run with a classifier
layer (``--run DIR``, sampled by label), or from an .npz with ``samples`` and ``labels``.
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import positive_int, top_s_arg

HELP = "sample quality: accuracy of a CNN trained on real data on generated samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", help="data set of the reference CNN (mnist, ...)")
    p.add_argument("--run", action="append", default=[], metavar="[CLASS=]DIR",
                   help="a run per class (CLASS=DIR, repeat) or one run with a classifier layer")
    p.add_argument("--samples", metavar="FILE.npz", help="score arrays 'samples' and 'labels'")
    p.add_argument("--n", type=positive_int, default=1000, help="samples per class")
    p.add_argument("--top-s", type=top_s_arg, default=1)
    p.add_argument("--divisor", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train the reference CNN anew")
    p.add_argument("--epochs", type=positive_int,
                   help="epochs of the reference CNN (default: 3, or 600 steps on small sets)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-': stdout)")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..experiments.sample_quality import (load_reference_classifier, sample_quality,
                                              sample_quality_of_models, train_reference_classifier)
    from ..training.checkpoint import load_model
    from ..utils.io import write_json_output

    if args.retrain:
        clf = train_reference_classifier(args.data, epochs=args.epochs, progress=True)
    else:
        clf = load_reference_classifier(args.data, epochs=args.epochs, progress=True)
    print(f"reference CNN for {args.data}: test accuracy {100 * clf.info['test_accuracy']:.2f}% "
          f"({clf.info['epochs']} epochs)")
    result: dict = {"data": args.data, "classifier": clf.info}
    if args.samples:
        try:
            with np.load(args.samples, allow_pickle=False) as npz:
                x, y = npz["samples"], npz["labels"]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read 'samples' and 'labels' from {args.samples}: "
                              f"{exc}") from None
        result["samples"] = {"file": args.samples, "n": int(len(x)),
                             "accuracy": sample_quality(x.astype(np.float32), y, clf)}
        print(f"{args.samples}: accuracy {100 * result['samples']['accuracy']:.2f}%")
    if args.run:
        options = {"top_s": args.top_s, "divisor": args.divisor}
        if len(args.run) == 1 and "=" not in args.run[0]:
            models = load_model(args.run[0], device=args.device)
        else:
            models = {}
            for item in args.run:
                cls, sep, path = item.partition("=")
                if not sep or not cls.strip().isdigit():
                    raise ConfigError(f"bad --run '{item}': use CLASS=DIR for per-class runs")
                models[int(cls)] = load_model(path, device=args.device)
        res = sample_quality_of_models(models, clf, n_per_class=args.n, seed=args.seed, **options)
        res.pop("classifier")
        result["runs"] = {"runs": args.run, **options, **res}
        per = ", ".join(f"{c}: {100 * a:.1f}" for c, a in res["per_class"].items())
        print(f"sample quality {100 * res['accuracy']:.2f}% ({args.n} per class; {per})")
    if args.json:
        if write_json_output(args.json, result):
            print(f"wrote {args.json}")
    return 0
