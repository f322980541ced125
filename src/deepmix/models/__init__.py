"""Whole models: :class:`DCGMM` and its spec language, the flat :class:`GaussianMixture`."""

from .dcgmm import DCGMM, ModelConfig, as_images
from .gmm import GaussianMixture
from .spec import ARCHITECTURES, LayerSpec, format_spec, parse_spec, resolve_architecture

__all__ = ["DCGMM", "GaussianMixture", "ModelConfig", "as_images", "ARCHITECTURES", "LayerSpec", "format_spec",
           "parse_spec", "resolve_architecture"]
