"""Whole models: :class:`DCGMM` and its spec language."""

from .dcgmm import DCGMM, ModelConfig, as_images
from .spec import ARCHITECTURES, LayerSpec, format_spec, parse_spec, resolve_architecture

__all__ = ["DCGMM", "ModelConfig", "as_images", "ARCHITECTURES", "LayerSpec", "format_spec",
           "parse_spec", "resolve_architecture"]
