"""``deepmix variants DIR``: variants of test images (paper eq. 10), one grid row per template."""

from __future__ import annotations

import argparse

from .common import (add_sampling_arguments, load_run_and_data, positive_int,
                     sampling_options)

HELP = "generate variants of test images with a trained run (one row per template)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="DIR", help="run folder")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="PNG grid: each row a template followed by its variants")
    p.add_argument("--data", help="data set (default: the run's own)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--classes", help="templates from these classes only")
    p.add_argument("--n-templates", type=positive_int, default=8)
    p.add_argument("--per-template", type=positive_int, default=8)
    p.add_argument("--layer", type=int, default=-1,
                   help="GMM layer whose responsibilities start the backward pass (default top)")
    p.add_argument("--keep-above", type=int, default=None,
                   help="GMM layers numbered >= this use the template's activities (eq. 10)")
    add_sampling_arguments(p)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..inference import variants
    from ..plots import save_grid

    model, data_name, ds = load_run_and_data(args)
    t = model.check_images(ds.to_tensor()[: args.n_templates])
    v = variants(model, t, n_per_template=args.per_template, layer=args.layer,
                 keep_above=args.keep_above, **sampling_options(args))
    k = args.per_template
    rows = torch.cat([t.unsqueeze(1), v.view(t.shape[0], k, *t.shape[1:])], dim=1)
    save_grid(rows.reshape(-1, *t.shape[1:]).cpu(), args.out, ncol=k + 1)
    print(f"wrote {args.out} ({t.shape[0]} templates x {k} variants; first column: templates)")
    return 0
