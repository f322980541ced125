"""The one report writer (deepmix.plots.report): Markdown and self-contained HTML from the same
sections, atomic files, tables checked for their width."""

from __future__ import annotations

import numpy as np
import pytest

from deepmix.errors import InputError
from deepmix.plots import Report, Table, save_grid, write_report
from deepmix.plots.report import metrics_table


def test_markdown_and_html_hold_the_same_sections(tmp_path):
    png = save_grid(np.random.default_rng(0).random((4, 5, 5, 1)), tmp_path / "pics" / "g.png")
    report = (Report("A title").facts({"model": "K = 3", "folder": "`runs/x`"})
              .heading("Scores").table(["split", "ll"], [["train", -1.234567], ["test", 2]])
              .paragraph("Some text.").paragraph("A remark.", note=True)
              .image(png, "a grid").notes(["first", "second"]))
    md = report.write_markdown(tmp_path / "report.md").read_text()
    assert md.startswith("# A title\n") and "- **model**: K = 3" in md
    assert "| split | ll |\n|---|---|\n| train | -1.235 |\n| test | 2 |" in md
    assert "![a grid](pics/g.png)" in md and "## Notes" in md and "- second" in md
    page = report.write_html(tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>A title</h1>" in page
    assert "<code>runs/x</code>" in page and "<td>-1.235</td>" in page
    assert "data:image/png;base64," in page and 'class="note"' in page
    assert "pics/g.png" not in page  # embedded, not linked


def test_write_report_in_one_call(tmp_path):
    save_grid(np.zeros((1, 2, 2, 1)), tmp_path / "s.png")
    path = write_report(tmp_path, title="Flat GMM, EM on digits", facts={"data": "10 rows"},
                        tables=[Table(["split", "mean log-likelihood (nats)"],
                                      [["train", "-1.0000"]], title="Scores")],
                        images={"Samples": "s.png"}, notes=["Per-epoch values: `metrics.jsonl`."],
                        html=True)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.index("## Scores") < text.index("## Samples") < text.index("## Notes")
    assert "![Samples](s.png)" in text
    assert "<code>metrics.jsonl</code>" in (tmp_path / "report.html").read_text()


def test_bad_table_and_pipes(tmp_path):
    with pytest.raises(InputError, match="2 cells, the header 3"):
        Report("t").table(["a", "b", "c"], [[1, 2]])
    md = Report("t").table(["a"], [["x|y"]]).to_markdown()
    assert "| x\\|y |" in md


def test_metrics_table_format():
    summary = {"layers": [{"layer": 0, "spec": "G(4)", "positions": 9, "dims": 16, "sigma": 0.5,
                           "annealed_loss": -1.0, "log_likelihood": -2.0,
                           "log_likelihood_std": 0.25, "log_likelihood_sum": -18.0,
                           "bits_per_dim": 4.5}]}
    lines = metrics_table(summary).splitlines()
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| 0 | G(4) | 9 x 16 | 0.5 | -1.000 | -2.000 ± 0.250 | -18.00 | 4.500 |"
