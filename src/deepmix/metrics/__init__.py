"""Numbers about results: outlier-detection AUROC, clustering indices, sample quality.

- :mod:`~deepmix.metrics.auroc`: :func:`auroc`, :func:`roc_curve` (inliers are the positive
  class, scored by log-likelihood).
- :mod:`~deepmix.metrics.clustering`: :func:`cluster_ids` (top-GMM component), :func:`dunn_index`,
  :func:`davies_bouldin`, :func:`purity`, :func:`clustering_report`.
- :mod:`~deepmix.metrics.sample_quality`: the paper's Table VII CNN,
  :func:`train_reference_classifier`, :func:`load_reference_classifier`, :func:`sample_quality`.
"""

from .auroc import auroc, outlier_separation, roc_curve
from .clustering import clustering_report, davies_bouldin, dunn_index, purity
from .sample_quality import (ReferenceClassifier, SampleQualityCNN, classifier_path,
                             load_reference_classifier, sample_quality,
                             sample_quality_of_models,
                             train_reference_classifier)

__all__ = ["auroc", "roc_curve", "outlier_separation", "clustering_report", "davies_bouldin",
           "dunn_index", "purity", "SampleQualityCNN", "ReferenceClassifier", "classifier_path",
           "train_reference_classifier", "load_reference_classifier", "sample_quality",
           "sample_quality_of_models"]
