"""The deep GMM family (van den Oord & Dambre): layers of invertible locally connected linear
maps, a path per sample, hard EM over paths (:mod:`deepmix.training.objectives.deep_gmm`)."""

from .config import DeepGMMConfig, LayerToken, parse_layers
from .folding import fold, unfold
from .model import DeepGMM
from .transforms import (DiagonalTransform, FullTransform, HalfConvolution, SharedBlockTransform,
                         Transform, UnsharedBlockTransform)

__all__ = ["DeepGMM", "DeepGMMConfig", "LayerToken", "parse_layers", "fold", "unfold",
           "Transform", "FullTransform", "DiagonalTransform", "SharedBlockTransform",
           "UnsharedBlockTransform", "HalfConvolution"]
