"""Numbers about results, computed on arrays and tensors (never on models): outlier-detection
AUROC, clustering indices, sample quality.

- :mod:`~deepmix.metrics.auroc`: :func:`auroc`, :func:`roc_curve`, :func:`outlier_separation`
  (inliers are the positive class, scored by log-likelihood).
- :mod:`~deepmix.metrics.clustering`: :func:`dunn_index`, :func:`davies_bouldin`, :func:`purity`,
  :func:`clustering_report` (a DCGMM's cluster ids: :func:`deepmix.inference.cluster_ids`).
- :mod:`~deepmix.metrics.precision_recall`: :func:`precision_recall`, the k-NN manifold
  precision, recall and F1 of samples against data (Kynkäänniemi et al. 2019; DRMM's Fig. 7).
- :mod:`~deepmix.metrics.sample_quality`: :func:`sample_quality`, a classifier's accuracy on
  generated samples (the paper's Table VII CNN and the whole protocol:
  :mod:`deepmix.experiments.reference_cnn`, :mod:`deepmix.experiments.sample_quality`).
"""

from .auroc import auroc, outlier_separation, roc_curve
from .clustering import clustering_report, davies_bouldin, dunn_index, purity
from .precision_recall import f1_score, precision_recall
from .sample_quality import sample_quality

__all__ = ["auroc", "roc_curve", "outlier_separation", "clustering_report", "davies_bouldin",
           "dunn_index", "purity", "sample_quality", "precision_recall", "f1_score"]
