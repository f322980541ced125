"""Whole models: :class:`DCGMM` and its spec language, the flat :class:`GaussianMixture`,
EinsumNetwork probabilistic circuits (:func:`rat_spn`, :func:`poon_domingos`)."""

from .dcgmm import DCGMM, ModelConfig, as_images
from .gmm import MixtureConfig, MixtureDensity
from .kmeans import kmeans
from .base import Model
from .registry import Family, family_names, get_family, register_family
from .spec import ARCHITECTURES, LayerSpec, format_spec, parse_spec, resolve_architecture
# after dcgmm and gmm: families register in import order (dcgmm, gmm, circuit)
from .circuits import (CircuitConfig, EinsumNetwork, RegionGraph, poon_domingos,  # noqa: E402,I001
                       poon_domingos_graph, random_binary_trees, rat_spn)
from .drmm import DRMM, DRMMCondition, DRMMConfig  # noqa: E402,I001  (registers "drmm")

__all__ = ["Model", "Family", "register_family", "get_family", "family_names", "DCGMM",
           "ModelConfig", "as_images", "MixtureDensity", "MixtureConfig",
           "kmeans", "ARCHITECTURES", "LayerSpec", "format_spec", "parse_spec",
           "resolve_architecture", "EinsumNetwork", "CircuitConfig", "RegionGraph",
           "poon_domingos", "poon_domingos_graph", "random_binary_trees", "rat_spn"]
__all__ += ["DRMM", "DRMMConfig", "DRMMCondition"]
