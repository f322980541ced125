"""Reports, written in one place: Markdown and self-contained HTML from one list of sections.

A :class:`Report` is built section by section (facts, headings, paragraphs, tables, images,
notes), then written as Markdown (pictures linked relative to the file) and/or as one HTML page
(pictures embedded as base64 data URIs, so the page stands alone). :func:`write_report` writes a
simple report (title, facts, tables, images, notes) in one call::

    write_report(run_dir, title="Flat GMM, EM on digits",
                 facts={"model": "K = 10, diag", "data": "1437 training rows"},
                 tables=[Table(["split", "mean log-likelihood (nats)"], [["train", -12.3]])],
                 notes=["Per-epoch values: `metrics.jsonl`."])

Both formats are written atomically. Like every module of :mod:`deepmix.plots`, this one
imports nothing of deepmix but ``utils`` and ``errors``.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError
from ..utils.io import write_text_atomic

__all__ = ["Report", "Table", "write_report", "metrics_table", "layer_table", "format_cell"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{image-rendering:pixelated;max-width:100%;border:1px solid #eee}figure{margin:.8em 0}
figcaption{font-size:.9em;color:#555}.facts li{margin:.15em 0}.note{color:#555}
code{background:#f5f5f5;padding:0 .2em}
"""


@dataclass(frozen=True)
class Table:
    """A table: column names, rows of cells (floats print with 4 significant digits) and an
    optional heading above it."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str | None = None


def format_cell(value: Any) -> str:
    """A table cell as text: floats with 4 significant digits, everything else by ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Report:
    """A report built section by section, written with :meth:`write_markdown` / :meth:`write_html`.

    Text is plain; spans in backticks show as code in both formats. Images are PNG files on disk:
    the Markdown links them (relative to the Markdown file), the HTML page embeds them.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        #: (kind, payload) in order; kinds: facts, heading, paragraph, note, table, image, notes.
        self.sections: list[tuple[str, Any]] = []

    def facts(self, items: Mapping[str, Any]) -> "Report":
        """A list of ``name: value`` facts (what was trained on what, where the files are)."""
        self.sections.append(("facts", {str(k): str(v) for k, v in items.items()}))
        return self

    def heading(self, text: str) -> "Report":
        """A section heading."""
        self.sections.append(("heading", text))
        return self

    def paragraph(self, text: str, *, note: bool = False) -> "Report":
        """A paragraph; ``note=True`` shows it as a side remark (greyed in HTML)."""
        self.sections.append(("note" if note else "paragraph", text))
        return self

    def table(self, header: Sequence[str] | Table, rows: Sequence[Sequence[Any]] = (),
              *, title: str | None = None) -> "Report":
        """A table (a :class:`Table`, or its header and rows); ``title`` adds a heading above."""
        if isinstance(header, Table):
            table = header if title is None else Table(header.header, header.rows, title)
        else:
            table = Table(list(header), list(rows), title)
        width = len(table.header)
        for row in table.rows:
            if len(row) != width:
                raise InputError(f"report table row {list(row)!r} has {len(row)} cells, "
                                 f"the header {width}")
        if table.title is not None:
            self.heading(table.title)
        self.sections.append(("table", table))
        return self

    def image(self, path: str | os.PathLike, caption: str) -> "Report":
        """A PNG picture on disk with its caption."""
        self.sections.append(("image", (Path(path), caption)))
        return self

    def notes(self, items: Sequence[str], *, heading: str = "Notes") -> "Report":
        """A bulleted list of remarks under ``heading`` (nothing when ``items`` is empty)."""
        if items:
            self.heading(heading)
            self.sections.append(("notes", [str(n) for n in items]))
        return self

    # -- Markdown -----------------------------------------------------------------------------

    def to_markdown(self, directory: str | os.PathLike | None = None) -> str:
        """The report as Markdown; image links are relative to ``directory`` (the file's)."""
        base = Path(directory) if directory is not None else None
        parts = [f"# {self.title}", ""]
        for kind, payload in self.sections:
            if kind == "facts":
                parts += [f"- **{k}**: {v}" for k, v in payload.items()] + [""]
            elif kind == "heading":
                parts += [f"## {payload}", ""]
            elif kind in ("paragraph", "note"):
                parts += [payload, ""]
            elif kind == "table":
                parts += [_markdown_table(payload), ""]
            elif kind == "image":
                path, caption = payload
                parts += [f"![{caption}]({_relative(path, base)})", "", caption, ""]
            elif kind == "notes":
                parts += [f"- {n}" for n in payload] + [""]
        return "\n".join(parts)

    def write_markdown(self, path: str | os.PathLike) -> Path:
        """Write the Markdown atomically to ``path`` (e.g. ``run/report.md``) and return it."""
        path = Path(path)
        write_text_atomic(path, self.to_markdown(path.parent))
        return path

    # -- HTML ---------------------------------------------------------------------------------

    def to_html(self) -> str:
        """The report as one self-contained HTML page (pictures embedded)."""
        parts = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, payload in self.sections:
            if kind == "facts":
                rows = "".join(f"<li><b>{_inline(k)}</b>: {_inline(v)}</li>"
                               for k, v in payload.items())
                parts.append(f'<ul class="facts">{rows}</ul>')
            elif kind == "heading":
                parts.append(f"<h2>{_inline(payload)}</h2>")
            elif kind == "paragraph":
                parts.append(f"<p>{_inline(payload)}</p>")
            elif kind == "note":
                parts.append(f'<p class="note">{_inline(payload)}</p>')
            elif kind == "table":
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in payload.header)
                body = "".join("<tr>" + "".join(f"<td>{_inline(format_cell(c))}</td>"
                                                for c in row) + "</tr>"
                               for row in payload.rows)
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
            elif kind == "image":
                path, caption = payload
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(caption)}" '
                             f'src="data:image/png;base64,{data}"><figcaption>'
                             f"{_inline(caption)}</figcaption></figure>")
            elif kind == "notes":
                parts.append("<ul>" + "".join(f"<li>{_inline(n)}</li>" for n in payload)
                             + "</ul>")
        return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
                f"{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
                + "\n".join(parts) + "</body></html>\n")

    def write_html(self, path: str | os.PathLike) -> Path:
        """Write the HTML page atomically to ``path`` (e.g. ``report.html``) and return it."""
        path = Path(path)
        write_text_atomic(path, self.to_html())
        return path


def write_report(directory: str | os.PathLike, *, title: str,
                 facts: Mapping[str, Any] | None = None, tables: Sequence[Table] = (),
                 images: Mapping[str, str | os.PathLike] | None = None,
                 notes: Sequence[str] | None = None, name: str = "report",
                 html: bool = False) -> Path:
    """Write ``directory/<name>.md`` (and ``<name>.html`` when ``html``); return the Markdown path.

    The sections come in this order: ``facts`` (name -> value), ``tables``, ``images``
    (caption -> PNG path; a relative path is taken relative to ``directory``) and ``notes``.
    """
    directory = Path(directory)
    report = Report(title)
    if facts:
        report.facts(facts)
    for table in tables:
        report.table(table)
    for caption, rel in (images or {}).items():
        report.heading(caption)
        report.image(directory / rel, caption)
    report.notes(list(notes or []))
    if html:
        report.write_html(directory / f"{name}.html")
    return report.write_markdown(directory / f"{name}.md")


def metrics_table(summary: dict) -> str:
    """Markdown table of :func:`deepmix.inference.evaluate`'s per-layer DCGMM summary."""
    return _markdown_table(layer_table(summary))


def layer_table(summary: dict) -> Table:
    """The per-layer rows of :func:`deepmix.inference.evaluate`'s DCGMM summary as a table."""
    rows = []
    for row in summary["layers"]:
        bpd = f"{row['bits_per_dim']:.3f}" if "bits_per_dim" in row else "-"
        rows.append([row["layer"], row["spec"], f"{row['positions']} x {row['dims']}",
                     f"{row['sigma']:.3g}", f"{row['annealed_loss']:.3f}",
                     f"{row['log_likelihood']:.3f} ± {row['log_likelihood_std']:.3f}",
                     f"{row['log_likelihood_sum']:.2f}", bpd])
    return Table(["GMM layer", "spec", "positions x dims", "sigma", "annealed loss",
                  "log-likelihood (nats, position mean)", "sum over positions", "bits/dim"], rows)


def _markdown_table(table: Table) -> str:
    def cell(value: Any) -> str:
        return format_cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _relative(path: Path, base: Path | None) -> str:
    if base is None:
        return path.as_posix()
    try:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.resolve().as_posix()


_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escape ``text`` for HTML; spans in backticks become ``<code>``."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text))
