"""What trained models are used for: evaluation of per-layer likelihoods and sampling."""

from .evaluation import evaluate, layer_sees_pixels
from .sampling import sample_to_files

__all__ = ["evaluate", "layer_sees_pixels", "sample_to_files"]
