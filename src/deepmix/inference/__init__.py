"""What trained models are used for: evaluation, sampling, sharpening, variants, in-painting,
outliers, clustering and classification.

Writing samples to files (PNG grid + .npz) is :func:`deepmix.experiments.sampling.sample_to_files`:
pictures belong to :mod:`deepmix.plots`, which inference does not import."""

from .classification import (accuracy, choose_temperature, classifier_features, fit_classifier,
                             set_temperature)
from .clustering import cluster_ids
from .evaluation import evaluate, evaluate_density, layer_sees_pixels
from .inpainting import flat_gmm_inpaint, inpaint, inpaint_unknown, mask_iou, missing_mse
from .masks import as_observed, corrupt, make_mask
from .outliers import InlierStatistics, outlier_scores
from .sharpening import Sharpening, sharpen
from .variants import variants

__all__ = ["evaluate", "evaluate_density", "layer_sees_pixels", "Sharpening", "sharpen",
           "variants", "inpaint", "inpaint_unknown", "corrupt", "make_mask", "as_observed",
           "flat_gmm_inpaint", "missing_mse", "mask_iou", "accuracy", "classifier_features",
           "fit_classifier", "set_temperature", "choose_temperature", "InlierStatistics",
           "outlier_scores", "cluster_ids"]
