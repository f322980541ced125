"""Pictures and reports: image grids (PNG) and Markdown run reports."""

from .grids import image_grid, save_grid
from .report import write_report

__all__ = ["image_grid", "save_grid", "write_report"]
