"""``deepmix report DIR``: one self-contained HTML page about a trained DCGMM run.

The page shows what a person wants to look at rather than read in logs: the run's facts, the
per-layer test log-likelihoods, plain and sharpened samples, class-conditional samples per class
(when the model has a classifier), in-painting of hidden right halves and centres, the ROC curve
of outlier detection, clustering indices and the classification accuracy. Every figure is also
written to ``report.json`` and every picture to ``report_files/`` next to the page.

Outliers for the ROC curve: the held-out classes when the run was trained on some classes only;
otherwise the other of MNIST / Fashion-MNIST when it is cached; otherwise images of uniform
noise (said on the page).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..data import load_images
from ..errors import DataError
from ..inference import as_observed, evaluate, inpaint, make_mask, missing_mse
from ..plots.grids import save_grid
from ..plots.html import HtmlPage
from ..training.checkpoint import load_model, read_config
from ..utils.io import write_json_atomic

__all__ = ["build_report"]


def _outlier_images(data: str, classes: list[int] | None, shape: tuple, n: int,
                    seed: int) -> tuple[torch.Tensor, str]:
    if classes is not None:
        try:
            all_classes = sorted(set(load_images(data, "test").labels.tolist()))
            others = [c for c in all_classes if c not in classes]
            if others:
                ds = load_images(data, "test", classes=others)
                return ds.to_tensor()[:n], f"{data} test images of the held-out classes {others}"
        except DataError:
            pass
    other = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}.get(data)
    if other is not None:
        try:
            ds = load_images(other, "test", download=False)
            if ds.shape == tuple(shape):
                return ds.to_tensor()[:n], f"{other} test images (another data set)"
        except (DataError, TypeError):
            pass
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen), "images of uniform noise"


def build_report(run_dir: str | Path, *, out: str | Path | None = None, data: str | None = None,
                 n_samples: int = 64, n_test: int = 1000, sharpen_iterations: int = 100,
                 seed: int = 0, device: str = "cpu") -> Path:
    """Write ``report.html`` (default inside ``run_dir``) and return its path."""
    from ..inference.clustering import cluster_ids
    from ..metrics.clustering import clustering_report
    from ..plots.roc import save_roc_curve
    from .dcgmm_outliers import detect_outliers

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    config = read_config(run_dir)
    model = load_model(run_dir, device=device)
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

    page = HtmlPage(f"deepmix report: {model.spec()}")
    train_cfg = config.get("train", {})
    page.facts({"model": f"{model.config.name or ''} {model.spec()}".strip(),
                "input": "x".join(map(str, model.input_shape)),
                "data": f"{data} (classes {classes if classes else 'all'}; "
                        f"{info.get('n', '?')} training images)",
                "training": f"{train_cfg.get('epochs', '?')} epochs, batch "
                            f"{train_cfg.get('batch_size', '?')}, seed {train_cfg.get('seed', '?')}",
                "run folder": str(run_dir)})

    summary, _ = evaluate(model, x, levels=test.levels)
    metrics["layers"] = summary["layers"]
    page.heading(f"Test log-likelihood per GMM layer ({x.shape[0]} test images)")
    page.table(["GMM layer", "spec", "positions x dims", "log-likelihood (nats, position mean)",
                "sum over positions", "annealed loss", "bits/dim"],
               [[r["layer"], r["spec"], f"{r['positions']} x {r['dims']}",
                 f"{r['log_likelihood']:.3f} ± {r['log_likelihood_std']:.3f}",
                 f"{r['log_likelihood_sum']:.2f}", f"{r['annealed_loss']:.3f}",
                 f"{r['bits_per_dim']:.3f}" if "bits_per_dim" in r else "-"]
                for r in summary["layers"]])

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

    if model.classifier is not None:
        from ..inference.classification import accuracy

        S = model.classifier.S
        per = 8
        labels = torch.arange(S).repeat_interleave(per)
        page.heading("Class-conditional samples")
        # S=1 would make every draw of a class the same image (the class signal is fixed):
        # top-3 sampling shows the class's variety.
        picture("samples_by_class", model.sample(len(labels), labels=labels, seed=seed, top_s=3),
                f"one row per class 0..{S - 1} (top-3 sampling)", ncol=per)
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
    outl, what = _outlier_images(data, classes, model.input_shape, x.shape[0], seed)
    res = detect_outliers(model, x, outl, "all")
    curves = {}
    table = []
    for L, r in res["layers"].items():
        curves[f"GMM layer {L}"] = r
        table.append([L, r["auroc"], r["inlier_mean"], r["outlier_mean"]])
    metrics["outliers"] = {"against": what, "auroc": {int(L): r["auroc"]
                                                      for L, r in res["layers"].items()}}
    roc = save_roc_curve(curves, files / "roc.png", title=f"inliers: {data} test; outliers: {what}")
    page.paragraph(f"Inliers: {x.shape[0]} {data} test images; outliers: {outl.shape[0]} {what}. "
                   f"Score: position-mean log-likelihood of each GMM layer.")
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
    page.paragraph(f"Report built in {metrics['seconds']:.1f} s.", note=True)
    write_json_atomic(out.with_suffix(".json"), metrics)
    return page.write(out)
