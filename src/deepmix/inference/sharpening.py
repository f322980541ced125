"""Gradient sharpening of control signals: re-exported from :mod:`deepmix.models.sharpening`.

Sharpening runs inside :meth:`DCGMM.sample` (``sharpen=``), so its code lives with the models;
this module keeps ``deepmix.inference.sharpening`` (and ``deepmix.inference.Sharpening``,
``deepmix.inference.sharpen``) working.
"""

from __future__ import annotations

from ..models.sharpening import Sharpening, sharpen, sharpening_hook, sharpening_objective

__all__ = ["Sharpening", "sharpen", "sharpening_hook", "sharpening_objective"]
