"""``deepmix demo``: fetch data, train a DCGMM, evaluate, sample and write a report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import positive_int

HELP = ("train 2L-c (+ a classifier on its two GMM layers) on MNIST, then sample, in-paint, "
        "score and write an HTML and a Markdown report")

#: Used when MNIST cannot be fetched: scikit-learn's 8x8 digits need no download.
DIGITS_ARCH = "F(4,4,2,2)-G(25)-F(3,3,1,1)-G(36)"
#: The classifier of the demo: softmax regression on both GMM layers (the papers' best).
CLASSIFIER = "-C(10,2)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--data", default="mnist", help="mnist, fashion-mnist or digits")
    p.add_argument("--arch", default="2L-c", help="architecture (default 2L-c)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="default 20 (100 on the small digits set)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="default 100 (20 on the small digits set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=positive_int, default=100)
    p.add_argument("--top-s", type=positive_int, default=1)
    p.add_argument("--classifier-epochs", type=int, default=5,
                   help="Adam epochs of the classifier on the frozen GMM features (0: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..data import fetch, load_images
    from ..errors import DataError
    from ..experiments.sampling import sample_to_files
    from ..inference import evaluate
    from ..models import DCGMM
    from ..plots import save_grid, write_report
    from ..training import TrainConfig, train
    from ..utils.io import write_json_atomic

    out = Path(args.out)
    run_dir = out / "run"
    data, arch, notes = args.data, args.arch, []
    if data != "digits":
        try:
            fetch(data)
        except DataError as exc:
            print(f"deepmix demo: {exc}\ndeepmix demo: falling back to the built-in 8x8 digits",
                  file=sys.stderr)
            notes.append(f"{data} could not be fetched ({exc}); used scikit-learn's digits.")
            data, arch = "digits", DIGITS_ARCH
    elif arch == "2L-c":
        arch = DIGITS_ARCH
    train_ds, test_ds = load_images(data, "train"), load_images(data, "test")
    if run_dir.exists() and any(run_dir.iterdir()):
        # Never overwrite a user's earlier run: move it aside with a time stamp.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir.rename(out / f"run-{stamp}")
        notes.append(f"an earlier run in {run_dir} was kept as {out / f'run-{stamp}'}.")
    from ..models.spec import resolve_architecture

    spec = resolve_architecture(arch)[0]
    if "C(" not in spec:
        spec += CLASSIFIER
    model = DCGMM(spec, input_shape=train_ds.shape, seed=args.seed)
    # The annealing needs some thousand steps: the 1 437 digits get more, smaller batches.
    small = len(train_ds) < 10_000
    cfg = TrainConfig(epochs=args.epochs or (100 if small else 20),
                      batch_size=args.batch_size or (20 if small else 100), seed=args.seed,
                      device=args.device)
    print(f"deepmix demo: training {model.spec()} on {data} ({len(train_ds)} images, "
          f"{cfg.epochs} epochs)", file=sys.stderr)
    t0 = time.perf_counter()
    train(model, train_ds.to_tensor(), train_ds.labels, config=cfg, out_dir=run_dir,
          progress=not args.no_progress,
          data_info={"name": data, "split": "train", "classes": None, "levels": train_ds.levels})
    train_s = time.perf_counter() - t0
    if args.classifier_epochs > 0 and model.classifier is not None:
        from ..inference import choose_temperature, fit_classifier
        from ..training.checkpoint import load_checkpoint, read_config, save_model

        # Tempered features (softmax(log r / T)) usually classify better than the papers' plain
        # responsibilities; a short held-out check decides, so T = 1 stays when it is better.
        choose_temperature(model, train_ds.to_tensor(), train_ds.labels, grid=(1.0, 10.0),
                           epochs=args.classifier_epochs, batch_size=128, seed=args.seed)
        fit_classifier(model, train_ds.to_tensor(), train_ds.labels,
                       epochs=args.classifier_epochs, lr=1e-3, batch_size=128, seed=args.seed)
        # Keep the trainer state (for --resume) while saving the fitted classifier.
        saved = read_config(run_dir)
        state = load_checkpoint(DCGMM.from_config(model.config), run_dir)
        save_model(model, run_dir, train=saved.get("train"), data=saved.get("data"), state=state)

    summary, _ = evaluate(model, test_ds.to_tensor(), levels=test_ds.levels)
    if model.classifier is not None:
        summary["classifier_temperature"] = model.classifier.temperature
    summary.update({"data": data, "split": "test", "train_seconds": train_s,
                    "seconds_per_epoch": train_s / cfg.epochs})
    write_json_atomic(out / "metrics.json", summary)

    sample_to_files(model, args.n_samples, out / "samples.png", top_s=args.top_s,
                    seed=args.seed)
    save_grid(test_ds.to_tensor()[: args.n_samples], out / "test_images.png")
    first = model.gmm_layers[0]
    fold = model.layers[model.gmm_indices[0] - 1] if model.gmm_indices[0] > 0 else None
    if fold is not None and hasattr(fold, "fy"):
        C = fold.input_shape[2]
        centroids = first.mu[0].detach().reshape(-1, fold.fy, fold.fx, C)
        lo, hi = centroids.amin(dim=(1, 2, 3), keepdim=True), centroids.amax(dim=(1, 2, 3), keepdim=True)
        save_grid((centroids - lo) / (hi - lo).clamp_min(1e-6), out / "centroids_layer0.png")
    images = {"Samples (top-S sampling, S=%d)" % args.top_s: "samples.png",
              "Test images": "test_images.png"}
    if (out / "centroids_layer0.png").exists():
        images["Centroids of the first GMM layer"] = "centroids_layer0.png"
    facts = {"model": f"{arch} = `{model.spec()}`", "data": f"{data} ({len(train_ds)} train / "
             f"{len(test_ds)} test images, pixels scaled to [0, 1], no dequantisation)",
             "training": f"{cfg.epochs} epochs, batch {cfg.batch_size}, SGD rate {cfg.lr}, "
                         f"seed {cfg.seed}, {train_s:.1f} s ({train_s / cfg.epochs:.2f} s/epoch)",
             "run folder": f"`{run_dir}` (load with `deepmix.load('{run_dir}')`)"}
    notes.append("bits/dim assumes 8-bit data dequantised to [0, 1]; on plain scaled pixels it "
                 "is indicative only.")
    report = write_report(out, title="deepmix demo", facts=facts, summary=summary,
                          images=images, notes=notes)
    from ..experiments.run_report import build_report

    html = build_report(run_dir, out=out / "report.html", data=data, seed=args.seed,
                        device=args.device)
    print(f"deepmix demo: report {html} (and {report}); samples {out / 'samples.png'}; metrics "
          f"{out / 'metrics.json'}")
    return 0
