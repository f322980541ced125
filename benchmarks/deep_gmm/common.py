"""Shared pieces of the deep GMM benchmarks (spec deep-gmm.md sections 3 and 6): the MNIST
split and dequantisation, closed-form Gaussians, training on the library's loop, summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

import deepmix
from deepmix.data import load_images
from deepmix.metrics import bits_per_dim
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent.parent / "results"


def dequantised(split: str, seed: int, name: str = "mnist") -> torch.Tensor:
    """Rows x = (v + u)/128 - 1 in [-1, 1), u ~ U[0, 1) drawn once with ``seed``."""
    ds = load_images(name, split)
    v = torch.from_numpy(ds.images.reshape(len(ds), -1).astype(np.float64))
    u = torch.rand(v.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # In place: 60 000 float64 rows are 376 MB, and every temporary would be one more.
    return v.add_(u).div_(128.0).sub_(1.0)


def splits(quick: bool, name: str = "mnist") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """train = first 50k, valid = last 10k of the training images, test = the official 10k
    (quick: 5k / 1k / 2k)."""
    full = dequantised("train", 0, name)
    test = dequantised("test", 1, name)
    train, valid = full[:50000], full[50000:]
    if quick:
        train, valid, test = train[:5000], valid[:1000], test[:2000]
    return train, valid, test


def full_gaussian(train: torch.Tensor, ridge: float = 1e-9):
    """(log_prob, parameter count) of the full-covariance Gaussian's ML fit (float64)."""
    mean = train.mean(0)
    xc = train - mean
    cov = xc.T @ xc / train.shape[0] + ridge * torch.eye(train.shape[1], dtype=train.dtype)
    mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    D = train.shape[1]
    return mvn.log_prob, D * (D + 1) // 2 + D


def summary(ll: torch.Tensor, dims: int = 784) -> dict:
    ll = ll.double()
    return {"nats": float(ll.mean()), "se": float(ll.std() / math.sqrt(len(ll))),
            "bits_per_dim": bits_per_dim(float(ll.mean()), dims)}


def train_hard_em(model, x: torch.Tensor, *, first_updates: int, later_updates: int,
                  em_iterations: int, lr: float, batch_size: int = 100, seed: int = 0,
                  **options) -> object:
    """Hard EM on the library's loop: updates are rounded to whole epochs (Adam passes)."""
    spe = math.ceil(x.shape[0] / batch_size)
    first = max(1, round(first_updates / spe))
    later = max(1, round(later_updates / spe))
    obj = deepmix.training.make_objective("deep-gmm", "hard-em", {
        "lr": lr, "first_m_epochs": first, "m_epochs": later, "ridge": 1e-9, **options})
    # (gating epochs, if any, are the run's last ones: after the EM iterations)
    epochs = first + later * (em_iterations - 1) + int(options.get("gating_epochs", 0))
    deepmix.training.fit(model, x, obj, epochs=epochs, batch_size=batch_size, seed=seed)
    return obj


def write_results(name: str, payload: dict, rows: list[dict], columns: list[str]) -> Path:
    """JSON + a Markdown table of ``rows`` under benchmarks/results/."""
    out = RESULTS / f"{name}.json"
    write_json_atomic(out, {**payload, "rows": rows})
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        md.append("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(md) + "\n")
    return out


def merged_rows(name: str, rows: list[dict]) -> list[dict]:
    """The rows of ``results/<name>.json`` whose model ``rows`` do not retrain (in their
    order), then ``rows``."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return rows
    new = {r["model"] for r in rows}
    old = [r for r in json.loads(path.read_text())["rows"] if r["model"] not in new]
    return old + rows


def sample_grid(models: list[tuple[str, object]], name: str, n: int = 12,
                seed: int = 0) -> Path:
    """A PNG under benchmarks/results/: one row of ``n`` samples per model (same seed for
    every row), mapped from [-1, 1) back to pixels in [0, 1]; returns its path."""
    from deepmix.plots import save_grid

    rows = []
    for _, model in models:
        x = model.sample(n, generator=torch.Generator().manual_seed(seed))
        rows.append(((x.double() + 1.0) / 2.0).clamp(0, 1).reshape(n, 28, 28, 1))
    return save_grid(torch.cat(rows), RESULTS / f"{name}.png", ncol=n)

