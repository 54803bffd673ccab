"""Unsupervised domain adaptation: pseudo-labels from clustering target-domain features.

* :func:`kmeans_pseudo_labels`, :func:`dbscan_pseudo_labels` — one clustering (scikit-learn;
  DBSCAN on reidkern's sparse Jaccard distance).
* :class:`PseudoLabelStep` — one clustering per feature branch each epoch, all-or-nothing, with
  its RNG saved in checkpoints.
"""
from .clustering import (PseudoLabels, check_features, cluster_centers, dbscan_pseudo_labels, kmeans_pseudo_labels,
                         pseudo_label_quality)
from .pseudo_label_step import PseudoLabelStep

__all__ = ["PseudoLabels", "check_features", "cluster_centers", "dbscan_pseudo_labels",
           "kmeans_pseudo_labels", "pseudo_label_quality", "PseudoLabelStep"]
