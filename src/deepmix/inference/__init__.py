"""What trained models are used for: evaluation of per-layer likelihoods, sampling, outliers."""

from .evaluation import evaluate, layer_sees_pixels
from .outliers import InlierStatistics, detect_outliers, outlier_scores
from .sampling import sample_to_files

__all__ = ["evaluate", "layer_sees_pixels", "sample_to_files", "InlierStatistics",
           "detect_outliers", "outlier_scores"]
