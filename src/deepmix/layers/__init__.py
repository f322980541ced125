"""DCGMM layers: Folding, Pooling, GMM and linear Classifier, each with forward and backwards maps."""

from .base import Layer, Shape
from .classifier import Classifier
from .folding import Folding
from .gmm import GMM
from .pooling import Pooling

__all__ = ["Layer", "Shape", "Folding", "Pooling", "GMM", "Classifier"]
