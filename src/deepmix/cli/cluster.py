"""``deepmix cluster DIR``: cluster a data split by the top GMM's components; Dunn, DB, purity."""

from __future__ import annotations

import argparse

from .common import load_run_and_data, positive_int

HELP = "cluster images by the top GMM component; Dunn index, Davies-Bouldin, purity, ARI"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--data", help="data set (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--classes", help="use these classes only, e.g. 0-4")
    p.add_argument("--dunn-points", type=positive_int, default=10000,
                   help="compute the O(N^2) Dunn index on a seeded subset of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-': stdout)")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..inference.clustering import cluster_ids
    from ..metrics.clustering import clustering_report
    from ..utils.io import write_json_output

    model, data_name, ds = load_run_and_data(args)
    x = ds.to_tensor()
    ids = cluster_ids(model, x, batch_size=args.batch_size)
    report = clustering_report(x, ids, ds.labels, max_points_dunn=args.dunn_points,
                               seed=args.seed)
    report.update({"run": str(args.run_dir), "spec": model.spec(), "data": str(data_name),
                   "split": args.split})
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{model.spec()} on {data_name}/{args.split} ({report['n']} images): "
          f"{report['n_clusters']} clusters used")
    print(f"  Dunn index {fmt(report['dunn'])} (on {report.get('dunn_points', 0)} images), "
          f"Davies-Bouldin {fmt(report['davies_bouldin'])}")
    if "purity" in report:
        print(f"  purity {fmt(report['purity'])}, adjusted Rand {fmt(report['adjusted_rand'])}, "
              f"NMI {fmt(report['nmi'])}")
    if args.json:
        if write_json_output(args.json, report):
            print(f"wrote {args.json}")
    return 0
