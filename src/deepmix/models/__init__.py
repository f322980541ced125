"""Whole models, one family each (:mod:`deepmix.models.registry`): :class:`DCGMM` and its spec
language, the flat Gaussian mixture :class:`MixtureDensity`, EinsumNetwork probabilistic
circuits (:func:`rat_spn`, :func:`poon_domingos`), deep residual mixture models (:class:`DRMM`)
and deep GMMs with locally connected transformations (:class:`DeepGMM`)."""

from .dcgmm import DCGMM, ModelConfig, as_images
from .gmm import MixtureConfig, MixtureDensity
from .kmeans import kmeans
from .base import Model
from .registry import Family, family_names, get_family, register_family
from .spec import ARCHITECTURES, LayerSpec, format_spec, parse_spec, resolve_architecture
# Families register in import order (dcgmm, gmm, circuit, drmm, deep-gmm).
from .circuits import (CircuitConfig, EinsumNetwork, RegionGraph, poon_domingos,  # noqa: E402,I001
                       poon_domingos_graph, random_binary_trees, rat_spn)
from .drmm import DRMM, DRMMCondition, DRMMConfig  # noqa: E402,I001
from .deep_gmm import DeepGMM, DeepGMMConfig  # noqa: E402,I001

__all__ = ["Model", "Family", "register_family", "get_family", "family_names", "DCGMM",
           "ModelConfig", "as_images", "MixtureDensity", "MixtureConfig",
           "kmeans", "ARCHITECTURES", "LayerSpec", "format_spec", "parse_spec",
           "resolve_architecture", "EinsumNetwork", "CircuitConfig", "RegionGraph",
           "poon_domingos", "poon_domingos_graph", "random_binary_trees", "rat_spn",
           "DRMM", "DRMMConfig", "DRMMCondition", "DeepGMM", "DeepGMMConfig"]
