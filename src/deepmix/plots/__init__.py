"""Pictures and reports: image grids (PNG), ROC curves, density plots, and the one writer of
Markdown / HTML reports (:mod:`deepmix.plots.report`)."""

from .grids import image_grid, save_grid
from .report import Report, Table, write_report

__all__ = ["image_grid", "save_grid", "Report", "Table", "write_report"]
