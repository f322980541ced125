"""Shared helpers of the DRMM benchmarks: training a DRMM for a number of steps on the one loop,
and writing JSON + Markdown results under benchmarks/results/."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from deepmix.models import DRMM, DRMMConfig
from deepmix.utils.io import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent.parent / "results"


def train_drmm(x: torch.Tensor, *, layers: int, components: int, steps: int, batch: int,
               lr: float, init_batch: int, sigma: str = "scalar", seed: int = 0,
               **options: Any) -> tuple[DRMM, float]:
    """A DRMM trained by the paper's hard EM (drmm-em) for about ``steps`` steps of ``batch``
    rows on x (epochs of x's rows, x truncated to whole batches); returns (model, seconds)."""
    per_epoch = max(1, x.shape[0] // batch)
    epochs = max(1, math.ceil(steps / per_epoch))
    per_epoch = min(per_epoch, math.ceil(steps / epochs))
    data = x[:per_epoch * batch]
    model = DRMM(DRMMConfig(n_features=x.shape[1], n_components=components, n_layers=layers,
                            sigma=sigma))
    t = time.perf_counter()
    model.fit(data, epochs=epochs, batch_size=batch, seed=seed, lr=lr, init_batch=init_batch,
              **options)
    return model, time.perf_counter() - t


def environment(threads: int) -> dict[str, Any]:
    return {"torch": torch.__version__, "machine": platform.machine(), "threads": threads}


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |\n"
                          for r in rows)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """benchmarks/results/<name>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    write_json_atomic(js, payload)
    write_text_atomic(md, markdown)
    print(f"wrote {js} and {md}")
    return js, md
