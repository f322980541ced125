"""``deepmix report DIR``: one self-contained HTML page (and, on request, Markdown) about a
trained DCGMM run.

The page shows what a person wants to look at rather than read in logs: the run's facts, the
per-layer test log-likelihoods, plain and sharpened samples, class-conditional samples per class
(when the model has a classifier), in-painting of hidden right halves and centres, the ROC curve
of outlier detection, clustering indices and the classification accuracy. Every figure is also
written to ``report.json`` and every picture to ``report_files/`` next to the page. The page is
written by :class:`deepmix.plots.report.Report`, the one writer of reports.

Outliers for the ROC curve (:func:`outlier_images`, said on the page): the held-out classes when
the run was trained on some classes only (the papers' protocol; the demo trains on 1-9 and holds
out 0); otherwise the other of MNIST / Fashion-MNIST when it is cached; otherwise images of
uniform noise, which every model separates almost perfectly (the page says so).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch

from ..data import load_images
from ..errors import DataError
from ..inference import as_observed, evaluate, inpaint, make_mask, missing_mse
from ..plots.grids import save_grid
from ..plots.report import Report, layer_table
from ..training.checkpoint import load_model, read_config
from ..utils.io import write_json_atomic

__all__ = ["build_report", "outlier_images", "Outliers", "OUTLIER_PROTOCOLS"]

#: The kinds of outliers :func:`outlier_images` returns, best first.
OUTLIER_PROTOCOLS = ("held-out classes", "another data set", "uniform noise")


class Outliers(NamedTuple):
    """Outlier images for a report: the images, what they are, the protocol (one of
    :data:`OUTLIER_PROTOCOLS`) and a short label for figure titles."""

    images: torch.Tensor
    description: str
    protocol: str
    label: str


def outlier_images(data: str, classes: Sequence[int] | None, shape: tuple, n: int,
                   seed: int) -> Outliers:
    """Up to ``n`` outlier images for a model trained on ``data`` (its ``classes``, or all).

    The test images of the classes the model never saw; else the test images of the other of
    MNIST / Fashion-MNIST (when cached); else uniform noise.
    """
    if classes is not None:
        try:
            all_classes = sorted(set(load_images(data, "test").labels.tolist()))
            others = [c for c in all_classes if c not in classes]
            if others:
                ds = load_images(data, "test", classes=others)
                what = f"held-out {'class' if len(others) == 1 else 'classes'} " \
                       f"{_classes_text(others)}"
                return Outliers(ds.to_tensor()[:n], f"{data} test images of the {what}",
                                OUTLIER_PROTOCOLS[0], what)
        except (DataError, AttributeError):
            pass
    other = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}.get(data)
    if other is not None:
        try:
            ds = load_images(other, "test", download=False)
            if ds.shape == tuple(shape):
                return Outliers(ds.to_tensor()[:n], f"{other} test images (another data set)",
                                OUTLIER_PROTOCOLS[1], f"{other} test images")
        except (DataError, TypeError):
            pass
    gen = torch.Generator().manual_seed(seed)
    return Outliers(torch.rand(n, *shape, generator=gen), "images of uniform noise",
                    OUTLIER_PROTOCOLS[2], "uniform noise")


def _classes_text(classes: Sequence[int]) -> str:
    """``[1, 2, ..., 9]`` as ``1-9``, ``[0]`` as ``0``, ``[0, 3, 5]`` as ``0, 3, 5``."""
    cs = sorted(int(c) for c in classes)
    if len(cs) > 2 and cs == list(range(cs[0], cs[-1] + 1)):
        return f"{cs[0]}-{cs[-1]}"
    return ", ".join(map(str, cs))


def build_report(run_dir: str | Path, *, out: str | Path | None = None, data: str | None = None,
                 n_samples: int = 64, n_test: int = 1000, sharpen_iterations: int = 100,
                 seed: int = 0, device: str = "cpu", title: str | None = None,
                 facts: Mapping[str, Any] | None = None,
                 images: Mapping[str, str | os.PathLike] | None = None,
                 notes: Sequence[str] = (), markdown: bool = False) -> Path:
    """Write ``report.html`` (default inside ``run_dir``) and ``report.json``; return the page.

    ``facts`` are added to the run's own, ``images`` (caption -> PNG) are shown after the
    samples and ``notes`` at the end; ``markdown=True`` also writes the same report as
    ``report.md`` next to the page (pictures linked from ``report_files/``).
    """
    from ..inference.clustering import cluster_ids
    from ..metrics.clustering import clustering_report
    from ..plots.roc import save_roc_curve
    from .dcgmm_outliers import detect_outliers

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    config = read_config(run_dir)
    # The page shows DCGMM layers, top-S samples and in-painting: other families are refused
    # with one line before anything is written.
    model = load_model(run_dir, device=device, family="dcgmm")
    info = config.get("data", {})
    data = data or info.get("name") or "mnist"
    classes = info.get("classes")
    out = Path(out) if out is not None else run_dir / "report.html"
    files = out.parent / (out.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    test = load_images(data, "test", classes=classes)
    x = model.check_images(test.to_tensor()[:n_test])
    y = torch.as_tensor(test.labels[:n_test])
    metrics: dict[str, Any] = {"run": str(run_dir), "data": data, "n_test": int(x.shape[0])}
    seen = f"classes {_classes_text(classes)}" if classes else "all classes"

    page = Report(title or f"deepmix report: {model.spec()}")
    train_cfg = config.get("train", {})
    page.facts({"model": f"{model.config.name or ''} {model.spec()}".strip(),
                "input": "x".join(map(str, model.input_shape)),
                "data": f"{data} ({seen}; {info.get('n', '?')} training images)",
                "training": f"{train_cfg.get('epochs', '?')} epochs, batch "
                            f"{train_cfg.get('batch_size', '?')}, seed {train_cfg.get('seed', '?')}",
                "run folder": str(run_dir), **dict(facts or {})})

    summary, _ = evaluate(model, x, levels=test.levels)
    metrics["layers"] = summary["layers"]
    page.heading(f"Test log-likelihood per GMM layer ({x.shape[0]} test images, {seen})")
    page.table(layer_table(summary))
    if "log_prob" in summary:
        metrics["log_prob"] = summary["log_prob"]
        page.paragraph(f"Exact image log-density (the first GMM layer tiles the image): "
                       f"{summary['log_prob']:.2f} nats per image.")

    def picture(name: str, images: torch.Tensor, caption: str, ncol: int | None = None) -> None:
        # Small images (8x8 digits) get bigger pixels, so the page shows them at a usable size.
        scale = max(3, 84 // max(model.input_shape[:2]))
        path = save_grid(images.cpu(), files / f"{name}.png", ncol=ncol, scale=scale)
        page.image(path, caption)

    page.heading("Samples")
    picture("samples", model.sample(n_samples, seed=seed), "top-S sampling (S=1, noise divisor 10)")
    # The default amount of ascent (rate x steps) in fewer, cheaper steps.
    from ..inference.sharpening import Sharpening

    rate = Sharpening.rate * Sharpening.iterations / sharpen_iterations
    sharp = model.sample(n_samples, seed=seed, sharpen={"iterations": sharpen_iterations,
                                                        "rate": rate})
    picture("samples_sharpened", sharp,
            f"the same draws with sharpening ({sharpen_iterations} iterations, rate {rate:.3g})")

    for caption, path in (images or {}).items():
        page.heading(caption)
        page.image(path, caption)

    if model.classifier is not None:
        from ..inference.classification import accuracy

        S = model.classifier.S
        per = 8
        # Only the classes the model was trained on: a held-out class has no samples to show.
        shown_classes = [c for c in (classes or range(S)) if 0 <= c < S]
        labels = torch.as_tensor(shown_classes).repeat_interleave(per)
        page.heading("Class-conditional samples")
        # S=1 would make every draw of a class the same image (the class signal is fixed):
        # top-3 sampling shows the class's variety.
        picture("samples_by_class", model.sample(len(labels), labels=labels, seed=seed, top_s=3),
                f"one row per class {_classes_text(shown_classes)} (top-3 sampling)", ncol=per)
        acc = accuracy(model, x, y.clamp_max(S - 1)) if int(y.max()) < S else None
        if acc is not None:
            metrics["classification_accuracy"] = acc
            T = model.classifier.temperature
            metrics["classifier_temperature"] = T
            page.paragraph(f"Test accuracy of the classifier layer: {100 * acc:.2f} %"
                           + (" (plain responsibilities)." if T == 1.0 else
                              f" (tempered features softmax(log r / T), T = {T:g})."))

    page.heading("In-painting")
    rows = []
    k = min(12, x.shape[0])
    for name in ("right-half", "center"):
        obs = as_observed(make_mask(name, x.shape[1:3]), x)
        done = inpaint(model, x, obs)
        mse = missing_mse(done, x, obs)
        metrics[f"inpainting_mse_{name}"] = mse
        rows.append([name, mse])
        shown = torch.where(obs[:k], x[:k], torch.full_like(x[:k], 0.5))
        drawn = inpaint(model, x[:k], obs[:k], mode="sample", divisor=10.0, seed=seed)
        picture(f"inpainting_{name}", torch.cat([x[:k], shown, done[:k], drawn]),
                f"{name}: originals, inputs (hidden part grey), posterior mean, drawn completion",
                ncol=k)
    page.table(["mask", "MSE on hidden pixels"], rows)

    page.heading("Outlier detection")
    outl, what, protocol, label = outlier_images(data, classes, model.input_shape, x.shape[0],
                                                 seed)
    res = detect_outliers(model, x, outl, "all")
    curves = {}
    table = []
    for L, r in res["layers"].items():
        curves[f"GMM layer {L}"] = r
        table.append([L, r["auroc"], r["inlier_mean"], r["outlier_mean"]])
    metrics["outliers"] = {"against": what, "protocol": protocol, "n_inliers": int(x.shape[0]),
                           "n_outliers": int(outl.shape[0]),
                           "auroc": {int(L): r["auroc"] for L, r in res["layers"].items()}}
    roc = save_roc_curve(curves, files / "roc.png",
                         title=f"inliers: {data} test, {seen}\noutliers: {label}")
    page.paragraph(f"Protocol: {protocol}. Inliers: {x.shape[0]} {data} test images ({seen}, "
                   f"as trained); outliers: {outl.shape[0]} {what}. Score: position-mean "
                   f"log-likelihood of each GMM layer; AUROC with inliers as the positive class.")
    if protocol == OUTLIER_PROTOCOLS[0]:
        page.paragraph("The outliers are images of a class the model never saw, as in the "
                       "DCGMM papers' outlier tables.", note=True)
    elif protocol == OUTLIER_PROTOCOLS[2]:
        page.paragraph("Uniform noise is separated almost perfectly by every model: this figure "
                       "says little. Train on some classes only (deepmix train --classes 1-9) to "
                       "score the held-out ones.", note=True)
    page.table(["GMM layer", "AUROC", "inlier mean score", "outlier mean score"], table)
    page.image(roc, "ROC curves")

    page.heading("Clustering (top GMM component as cluster id)")
    ids = cluster_ids(model, x)
    rep = clustering_report(x.reshape(x.shape[0], -1).cpu(), ids, y, max_points_dunn=2000,
                            seed=seed)
    metrics["clustering"] = {k2: v for k2, v in rep.items() if k2 != "cluster_sizes"}
    page.table(["index", "value"], [[k2, v] for k2, v in rep.items()
                                    if isinstance(v, (int, float)) and k2 != "n"])
    metrics["seconds"] = time.perf_counter() - t0
    page.notes([*notes, f"Report built in {metrics['seconds']:.1f} s."])
    write_json_atomic(out.with_suffix(".json"), metrics)
    if markdown:
        page.write_markdown(out.with_suffix(".md"))
    return page.write_html(out)
