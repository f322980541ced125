"""``deepmix outliers DIR``: outlier detection AUROC (+ ROC PNG) of a trained run's GMM layers.

Inliers are a data split (by default the run's own data set, ``--classes`` of it), outliers are
other classes of the same data set (``--outliers 0``), another data set (``--outliers
fashion-mnist`` or ``fashion-mnist:0-4``) or uniform noise (``--outliers noise``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import parse_classes, positive_int

HELP = "outlier-detection AUROC and ROC curve of a run's GMM layers (inliers vs outliers)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--inliers", metavar="DATA", help="inlier data set (default: the run's own)")
    p.add_argument("--classes", help="inlier classes, e.g. 1-9 (default: the run's own or all)")
    p.add_argument("--outliers", required=True, metavar="SPEC",
                   help="outlier classes of the inlier data set (e.g. 0), a data set "
                        "(fashion-mnist, or fashion-mnist:0-4), or 'noise'")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--layer", default="-1",
                   help="GMM layer (0-based, negative from the top) or 'all' (default: -1)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for outliers.json and roc.png")
    p.add_argument("--inlier-stats", action="store_true",
                   help="also fit per-position inlier statistics on the train split and save "
                        "them to inlier_statistics.safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise outliers")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--device", default="cpu")


def _layer_arg(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"bad --layer '{text}': give a GMM layer number or 'all'") from None


def _outlier_images(spec: str, inlier_data: str, split: str, like, seed: int):
    """Outlier images and a description from the --outliers text."""
    import torch

    from ..data import load_images

    if spec == "noise":
        gen = torch.Generator().manual_seed(int(seed))
        return torch.rand(like.shape, generator=gen), "uniform noise"
    if spec[:1].isdigit():
        ds = load_images(inlier_data, split, classes=parse_classes(spec))
        return ds.to_tensor(), f"{inlier_data}/{split} classes {spec}"
    name, _, classes = spec.partition(":")
    ds = load_images(name, split, classes=parse_classes(classes or None))
    return ds.to_tensor(), f"{name}/{split}" + (f" classes {classes}" if classes else "")


def _same_data(a: object, b: object) -> bool:
    canon = lambda v: str(v).strip().lower().replace("_", "-")  # noqa: E731 (as the registry)
    return a is not None and b is not None and canon(a) == canon(b)


def _check_outlier_classes(spec: str, data_name: str, inlier_classes: list[int] | None,
                           config: dict) -> None:
    """Outlier classes of the inlier data set must be neither inliers nor classes the run was
    trained on; otherwise the AUROC measures nothing (class 0 among the inliers: ~50 %)."""
    outlier_classes = parse_classes(spec)
    if not outlier_classes:
        return
    shown = lambda cs: ",".join(str(c) for c in cs)  # noqa: E731
    data_info = config.get("data") or {}
    if "classes" in data_info and _same_data(data_name, data_info.get("name")):
        trained = data_info["classes"]  # None: every class
        seen = outlier_classes if trained is None else sorted(set(outlier_classes) & set(trained))
        if seen:
            raise ConfigError(
                f"--outliers {spec}: class(es) {shown(seen)} of {data_name} are among the run's "
                f"training classes ({'all' if trained is None else shown(trained)}), so they "
                f"are no outliers; train on the other classes (e.g. --classes 1-9 with "
                f"--outliers 0), or give another data set or 'noise'")
    both = outlier_classes if inlier_classes is None else sorted(
        set(outlier_classes) & set(inlier_classes))
    if both:
        raise ConfigError(
            f"--outliers {spec}: class(es) {shown(both)} of {data_name} are also inliers "
            f"(classes {'all' if inlier_classes is None else shown(inlier_classes)}); choose "
            f"inlier --classes without them")


def run(args: argparse.Namespace) -> int:
    from ..data import load_images
    from ..experiments.dcgmm_outliers import detect_outliers
    from ..inference.outliers import InlierStatistics
    from ..plots.roc import save_roc_curve
    from ..training.checkpoint import load_model, read_config
    from ..utils.io import write_json_atomic

    layer = _layer_arg(args.layer)
    config = read_config(args.run_dir)
    data_info = config.get("data", {})
    data_name = args.inliers or data_info.get("name", "mnist")
    classes = parse_classes(args.classes)
    if classes is None and args.inliers is None:
        classes = data_info.get("classes")
    model = load_model(args.run_dir, device=args.device, family="dcgmm")
    if args.outliers[:1].isdigit():
        _check_outlier_classes(args.outliers, data_name, classes, config)
    inliers = load_images(data_name, args.split, classes=classes).to_tensor()
    outliers, described = _outlier_images(args.outliers, data_name, args.split, inliers, args.seed)
    res = detect_outliers(model, inliers, outliers, layer, batch_size=args.batch_size)
    per_layer = res["layers"] if "layers" in res else {res["layer"]: res}
    out = Path(args.out)
    rows = []
    for L, r in per_layer.items():
        rows.append({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()
                     if k not in ("inlier_scores", "outlier_scores", "thresholds")})
    summary = {"run": str(args.run_dir), "spec": model.spec(),
               "inliers": f"{data_name}/{args.split}" + (f" classes {classes}" if classes else ""),
               "outliers": described, "layers": rows}
    print(f"{model.spec()}: inliers {summary['inliers']} ({len(inliers)}) vs outliers "
          f"{described} ({len(outliers)})")
    for r in rows:
        print(f"  GMM layer {r['layer']}: AUROC {100 * r['auroc']:.2f}%  (mean log-likelihood "
              f"{r['inlier_mean']:.3f} vs {r['outlier_mean']:.3f})")
    save_roc_curve({f"GMM layer {L}": r for L, r in per_layer.items()}, out / "roc.png",
                   title=f"{model.spec()}")
    if args.inlier_stats:
        train = load_images(data_name, "train", classes=classes).to_tensor()
        stats = InlierStatistics().fit(model, train, batch_size=args.batch_size)
        summary["inlier_statistics"] = str(stats.save(out / "inlier_statistics.safetensors"))
    write_json_atomic(out / "outliers.json", summary)
    print(f"wrote {out / 'outliers.json'} and {out / 'roc.png'}")
    return 0
