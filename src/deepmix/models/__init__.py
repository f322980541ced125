"""Whole models: :class:`DCGMM` and its spec language, the flat :class:`GaussianMixture`,
EinsumNetwork probabilistic circuits (:func:`rat_spn`, :func:`poon_domingos`)."""

from .dcgmm import DCGMM, ModelConfig, as_images
from .gmm import GaussianMixture
from .spec import ARCHITECTURES, LayerSpec, format_spec, parse_spec, resolve_architecture
# after dcgmm and gmm: families register in import order (dcgmm, gmm, circuit)
from .circuits import (CircuitConfig, EinsumNetwork, RegionGraph, poon_domingos,  # noqa: E402,I001
                       poon_domingos_graph, random_binary_trees, rat_spn)

__all__ = ["DCGMM", "GaussianMixture", "ModelConfig", "as_images", "ARCHITECTURES", "LayerSpec", "format_spec",
           "parse_spec", "resolve_architecture", "EinsumNetwork", "CircuitConfig", "RegionGraph",
           "poon_domingos", "poon_domingos_graph", "random_binary_trees", "rat_spn"]
