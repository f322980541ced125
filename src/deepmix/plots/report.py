"""Markdown run reports: what was trained on what, the per-layer scores and the pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.io import write_text_atomic

__all__ = ["write_report", "metrics_table"]


def metrics_table(summary: dict) -> str:
    """Markdown table of :func:`deepmix.inference.evaluate`'s per-layer summary."""
    lines = ["| GMM layer | spec | positions x dims | sigma | annealed loss | log-likelihood "
             "(nats, position mean) | sum over positions | bits/dim |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary["layers"]:
        bpd = f"{row['bits_per_dim']:.3f}" if "bits_per_dim" in row else "-"
        lines.append(f"| {row['layer']} | {row['spec']} | {row['positions']} x {row['dims']} | "
                     f"{row['sigma']:.3g} | {row['annealed_loss']:.3f} | "
                     f"{row['log_likelihood']:.3f} ± {row['log_likelihood_std']:.3f} | "
                     f"{row['log_likelihood_sum']:.2f} | {bpd} |")
    return "\n".join(lines)


def write_report(directory: str | Path, *, title: str, facts: dict[str, Any], summary: dict,
                 images: dict[str, str], notes: list[str] | None = None) -> Path:
    """Write ``report.md`` in ``directory``: facts, metrics table, pictures (relative paths)."""
    directory = Path(directory)
    parts = [f"# {title}", ""]
    parts += [f"- **{k}**: {v}" for k, v in facts.items()]
    parts += ["", "## Test log-likelihood per GMM layer", "", metrics_table(summary), ""]
    if "log_prob" in summary:
        parts += [f"Exact image log-density (first layer tiles the image): "
                  f"{summary['log_prob']:.2f} nats per image.", ""]
    for caption, rel in images.items():
        parts += [f"## {caption}", "", f"![{caption}]({rel})", ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path = directory / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return path
