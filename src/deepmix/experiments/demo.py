"""The demo (``deepmix demo``, ``bash scripts/demo.sh``): fetch data, train a DCGMM with a
classifier, evaluate, sample and write one report (HTML + Markdown + JSON).

Outliers: the model is trained on every class but one (:data:`OUTLIER_CLASS`, 0) and the
report scores the test images of that held-out class against the test images of the others.
This is the protocol of the DCGMM papers' outlier tables (so the figure can be read next to
docs/reproducing-dcgmm.md), it means the same on every data set, digits included, and needs no
second download. Uniform noise, which every model separates almost perfectly, is not used;
Fashion-MNIST against MNIST remains what the report uses for a run trained on every class
(``outlier_class=None``) when both are cached.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import fetch, load_images
from ..errors import ConfigError, DataError
from ..inference import choose_temperature, evaluate, fit_classifier
from ..models import DCGMM
from ..models.spec import resolve_architecture
from ..plots.grids import save_grid
from ..training import TrainConfig, train
from ..training.checkpoint import load_checkpoint, read_config, save_model
from ..utils.io import write_json_atomic
from .run_report import build_report
from .sampling import sample_to_files

__all__ = ["DIGITS_ARCH", "CLASSIFIER", "OUTLIER_CLASS", "DemoResult", "run_demo",
           "resave_model"]

#: Used on scikit-learn's 8x8 digits (also when MNIST cannot be fetched): no download needed.
DIGITS_ARCH = "F(4,4,2,2)-G(25)-F(3,3,1,1)-G(36)"
#: The classifier of the demo: softmax regression on both GMM layers (the papers' best).
CLASSIFIER = "-C(10,2)"
#: The class held out of training and scored as outliers (the papers' choice for MNIST).
OUTLIER_CLASS = 0


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote (paths) and its headline figures."""

    out: Path
    run_dir: Path
    report_html: Path
    report_md: Path
    metrics: Path
    samples: Path
    data: str
    train_seconds: float
    figures: dict[str, Any] = field(default_factory=dict)


def resave_model(model: torch.nn.Module, run_dir: str | Path) -> Path:
    """Replace the model tensors of the run folder ``run_dir`` with ``model``'s, keeping its
    ``config.json`` sections and the trainer's state and tensors (so ``--resume`` still works).

    Used after fitting a DCGMM's classifier on the frozen features of a trained run.
    """
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    trainer_tensors: dict[str, torch.Tensor] = {}
    fresh = type(model).from_config(model.config)
    state = load_checkpoint(fresh, run_dir, trainer_tensors=trainer_tensors)
    return save_model(model, run_dir, train=saved.get("train"), data=saved.get("data"),
                      state=state, tensors=trainer_tensors or None)


def _trained_classes(labels: Any, outlier_class: int | None) -> list[int] | None:
    """Every class of ``labels`` but ``outlier_class``; None (all) when nothing is held out."""
    if outlier_class is None or labels is None:
        return None
    present = sorted({int(c) for c in labels.tolist()})
    if outlier_class not in present:
        raise ConfigError(f"demo: --outlier-class {outlier_class} is not a class of the data "
                          f"(its classes are {present})")
    if len(present) < 3:
        raise ConfigError(f"demo: holding out class {outlier_class} of {present} leaves too "
                          f"few classes; use --outlier-class none")
    return [c for c in present if c != outlier_class]


def run_demo(out: str | Path = "runs/demo", *, data: str = "mnist", arch: str = "2L-c",
             epochs: int | None = None, batch_size: int | None = None, seed: int = 0,
             n_samples: int = 100, top_s: int = 1, classifier_epochs: int = 5,
             outlier_class: int | None = OUTLIER_CLASS, device: str = "cpu",
             progress: bool = True, log: Callable[[str], None] | None = None) -> DemoResult:
    """Train ``arch`` (+ :data:`CLASSIFIER`) on ``data`` without ``outlier_class`` and write
    the report to ``out`` (``report.html``, ``report.md``, ``report.json``, ``metrics.json``,
    ``samples.png``, ``test_images.png``, ``centroids_layer0.png``, the run folder ``run/``).

    ``epochs`` and ``batch_size`` default to 20 and 100 (100 and 20 on a set under 10 000
    images, such as digits). ``outlier_class=None`` trains on every class; the report then
    falls back to another data set or uniform noise (see
    :func:`deepmix.experiments.run_report.outlier_images`). MNIST that cannot be fetched falls
    back to scikit-learn's digits. ``log`` receives progress lines.
    """
    say = log or (lambda _msg: None)
    out = Path(out)
    run_dir = out / "run"
    notes: list[str] = []
    if data != "digits":
        try:
            fetch(data)
        except DataError as exc:
            say(f"{exc}\nfalling back to the built-in 8x8 digits")
            notes.append(f"{data} could not be fetched ({exc}); used scikit-learn's digits.")
            data, arch = "digits", DIGITS_ARCH
    elif arch == "2L-c":
        arch = DIGITS_ARCH
    full_train = load_images(data, "train")
    classes = _trained_classes(full_train.labels, outlier_class)
    train_ds = full_train.subset(classes) if classes is not None else full_train
    test_ds = load_images(data, "test", classes=classes)
    if run_dir.exists() and any(run_dir.iterdir()):
        # Never overwrite a user's earlier run: move it aside with a time stamp.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir.rename(out / f"run-{stamp}")
        notes.append(f"an earlier run in {run_dir} was kept as {out / f'run-{stamp}'}.")

    spec = resolve_architecture(arch)[0]
    if "C(" not in spec:
        spec += CLASSIFIER
    model = DCGMM(spec, input_shape=train_ds.shape, seed=seed)
    # The annealing needs some thousand steps: the 1 437 digits get more, smaller batches.
    small = len(train_ds) < 10_000
    cfg = TrainConfig(epochs=epochs or (100 if small else 20),
                      batch_size=batch_size or (20 if small else 100), seed=seed, device=device)
    held = "" if classes is None else f", class {outlier_class} held out"
    say(f"training {model.spec()} on {data} ({len(train_ds)} images{held}, {cfg.epochs} epochs)")
    t0 = time.perf_counter()
    train_x = train_ds.to_tensor()      # one copy for training and the classifier's fits
    train(model, train_x, train_ds.labels, config=cfg, out_dir=run_dir,
          progress=progress,
          data_info={"name": data, "split": "train", "classes": classes,
                     "levels": train_ds.levels})
    train_s = time.perf_counter() - t0
    if classifier_epochs > 0 and model.classifier is not None:
        # Tempered features (softmax(log r / T)) usually classify better than the papers' plain
        # responsibilities; a short held-out check decides, so T = 1 stays when it is better.
        choose_temperature(model, train_x, train_ds.labels, grid=(1.0, 10.0),
                           epochs=classifier_epochs, batch_size=128, seed=seed)
        fit_classifier(model, train_x, train_ds.labels, epochs=classifier_epochs,
                       lr=1e-3, batch_size=128, seed=seed)
        resave_model(model, run_dir)
    del train_x

    summary, _ = evaluate(model, test_ds.to_tensor(), levels=test_ds.levels)
    if model.classifier is not None:
        summary["classifier_temperature"] = model.classifier.temperature
    summary.update({"data": data, "split": "test", "classes": classes,
                    "outlier_class": None if classes is None else outlier_class,
                    "train_seconds": train_s, "seconds_per_epoch": train_s / cfg.epochs})
    write_json_atomic(out / "metrics.json", summary)

    samples = out / "samples.png"
    sample_to_files(model, n_samples, samples, top_s=top_s, seed=seed)
    save_grid(test_ds.to_tensor()[:n_samples], out / "test_images.png")
    images = {f"Samples (top-S sampling, S={top_s})": samples,
              "Test images": out / "test_images.png"}
    centroids = _save_first_layer_centroids(model, out / "centroids_layer0.png")
    if centroids is not None:
        images["Centroids of the first GMM layer"] = centroids

    n_test = len(test_ds)
    facts = {"model": f"{arch} = `{model.spec()}`",
             "data": f"{data} ({len(train_ds)} train / {n_test} test images"
                     + ("" if classes is None else f" of the classes other than {outlier_class}")
                     + ", pixels scaled to [0, 1], no dequantisation)",
             "training": f"{cfg.epochs} epochs, batch {cfg.batch_size}, SGD rate {cfg.lr}, "
                         f"seed {cfg.seed}, {train_s:.1f} s ({train_s / cfg.epochs:.2f} s/epoch)",
             "outliers": ("none held out: see the outlier section" if classes is None else
                          f"class {outlier_class}, held out of training; its test images are "
                          f"scored against the test images of the other classes"),
             "run folder": f"`{run_dir}` (load with `deepmix.load('{run_dir}')`)"}
    notes.append("bits/dim assumes 8-bit data dequantised to [0, 1]; on plain scaled pixels it "
                 "is indicative only.")
    html = build_report(run_dir, out=out / "report.html", data=data, seed=seed, device=device,
                        title="deepmix demo", facts=facts, images=images, notes=notes,
                        markdown=True)
    figures = {}
    report_json = html.with_suffix(".json")
    if report_json.is_file():
        figures = json.loads(report_json.read_text(encoding="utf-8"))
    return DemoResult(out=out, run_dir=run_dir, report_html=html,
                      report_md=html.with_suffix(".md"), metrics=out / "metrics.json",
                      samples=samples, data=data, train_seconds=train_s, figures=figures)


def _save_first_layer_centroids(model: DCGMM, path: Path) -> Path | None:
    """A grid of the first GMM layer's centroids as image patches (None when its input is no
    folding of the image)."""
    first = model.gmm_layers[0]
    fold = model.layers[model.gmm_indices[0] - 1] if model.gmm_indices[0] > 0 else None
    if fold is None or not hasattr(fold, "fy"):
        return None
    C = fold.input_shape[2]
    centroids = first.mu[0].detach().cpu().reshape(-1, fold.fy, fold.fx, C)
    lo = centroids.amin(dim=(1, 2, 3), keepdim=True)
    hi = centroids.amax(dim=(1, 2, 3), keepdim=True)
    return save_grid((centroids - lo) / (hi - lo).clamp_min(1e-6), path)
