"""Pseudo-labels from target-domain features: the two clusterings unsupervised domain adaptation
uses, through scikit-learn.

* :func:`kmeans_pseudo_labels` — ``sklearn.cluster.MiniBatchKMeans`` with a given k (LF2's
  official choice: ``max_iter=100, batch_size=300``, ``init_size`` 1500 for the global branch and
  900 for the parts, k = 700 for Duke→Market).
* :func:`dbscan_pseudo_labels` — ``sklearn.cluster.DBSCAN(metric="precomputed")`` on reidkern's
  exact sparse k-reciprocal Jaccard distance (:func:`reidkern.rerank.jaccard_distance`; the MMT /
  SpCL recipe: k1 = 20, k2 = 6, eps ≈ 0.6, min_samples = 4), k found by the clustering, outliers
  labelled −1 and left out of training.

Both validate their input and raise ``ValueError`` naming the argument for what cannot give
pseudo-labels: NaN/inf features, fewer samples than clusters, all samples identical, DBSCAN finding
no cluster. Callers decide on a fallback (see :class:`reidkern.uda.PseudoLabelStep`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["PseudoLabels", "kmeans_pseudo_labels", "dbscan_pseudo_labels", "cluster_centers",
           "check_features", "pseudo_label_quality"]

log = logging.getLogger(__name__)


@dataclass
class PseudoLabels:
    """One clustering of N samples.

    labels: int64 [N], cluster ids 0..num_clusters−1, −1 for outliers (DBSCAN).
    centers: float32 [num_clusters, D], the mean feature of each cluster (k-means: its centroid).
    num_clusters: number of clusters (ids used are exactly 0..num_clusters−1).
    method: "kmeans" or "dbscan".
    info: extra figures (outliers, inertia, seconds, ...).
    """

    labels: np.ndarray
    centers: np.ndarray
    num_clusters: int
    method: str
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_outliers(self) -> int:
        return int((self.labels < 0).sum())


def check_features(features, name: str = "features", min_samples: int = 1) -> np.ndarray:
    """Features as a C-contiguous float32/float64 numpy array [N, D], validated.

    Raises:
        TypeError: not a tensor/array of floats. ValueError: not 2-D, D = 0, fewer than
        ``min_samples`` rows, NaN or inf (the count is given).
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    if not isinstance(features, np.ndarray):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(features).__name__}")
    if features.dtype.kind != "f":
        raise TypeError(f"{name}: expected floating-point features, got {features.dtype}")
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"{name}: expected shape [num_samples, dim] with dim > 0, got {list(features.shape)}")
    if features.shape[0] < min_samples:
        raise ValueError(f"{name}: needs at least {min_samples} samples, got {features.shape[0]}")
    # min and max are NaN/inf exactly when some value is: two passes, no N x D mask, in the
    # usual (finite) case; the row count for the message only when something is wrong.
    if features.size and np.isfinite(features.min()) and np.isfinite(features.max()):
        return np.ascontiguousarray(features)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} of {features.shape[0]} samples have NaN or inf "
                         f"values (first at row {int(np.argmax(bad))}); pseudo-labels need finite features")
    return np.ascontiguousarray(features)


def _all_rows_equal_first(X: np.ndarray, block: int = 1024) -> bool:
    # block by block, stopping at the first block with another row (usually the first block):
    # no N x D comparison array
    for s in range(0, X.shape[0], block):
        if not np.array_equal(X[s:s + block], np.broadcast_to(X[:1], X[s:s + block].shape)):
            return False
    return True


def _check_not_identical(X: np.ndarray, name: str) -> None:
    if X.shape[0] > 1 and _all_rows_equal_first(X):
        raise ValueError(f"{name}: all {X.shape[0]} samples are identical (the model's features "
                         "have collapsed); there is nothing to cluster")


def cluster_centers(features: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Mean feature of each cluster 0..num_clusters−1 (outliers −1 ignored): float32 [k, D].

    Sums in float64, rows in order, 1,024 rows at a time: no float64 copy of the whole feature
    matrix (212 MB at Market-1501 size, twice that with the kept rows' copy) is made."""
    X = np.asarray(features)
    labels = np.asarray(labels)
    keep = labels >= 0
    sums = torch.zeros((num_clusters, X.shape[1]), dtype=torch.float64)
    for s in range(0, X.shape[0], 1024):
        k = keep[s:s + 1024]
        rows = torch.from_numpy(np.ascontiguousarray(X[s:s + 1024][k], dtype=np.float64))
        sums.index_add_(0, torch.from_numpy(labels[s:s + 1024][k].astype(np.int64)), rows)
    counts = np.bincount(labels[keep], minlength=num_clusters).astype(np.float64)
    return (sums.numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)


def _relabel(labels: np.ndarray):
    """Map the used non-negative ids to 0..k−1 in order of first use; −1 stays."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    keep = labels >= 0
    uniq, inv = np.unique(labels[keep], return_inverse=True)
    out[keep] = inv
    return out, len(uniq)


def kmeans_pseudo_labels(features, n_clusters: int, *, random_state: int = 0, batch_size: int = 300,
                         max_iter: int = 100, init_size: Optional[int] = None, n_init: int = 3,
                         name: str = "features") -> PseudoLabels:
    """k-means pseudo-labels (``sklearn.cluster.MiniBatchKMeans``), as LF2's official code.

    Args:
        features: [N, D] float (LF2: flip-averaged, L2-normalised fusion features).
        n_clusters: k (official 700 for Duke→Market; a property of the target set).
        random_state: seed of this clustering (the pseudo-label step draws it from its RNG).
        batch_size, max_iter, init_size: MiniBatchKMeans' (official 300, 100, 1500 global /
            900 parts; None = scikit-learn's default 3·batch_size, raised to ≥ 3·k).
        n_init: initialisations (3 = the scikit-learn default the official code ran with).
        name: argument name used in error messages (e.g. "upper features").

    Returns:
        :class:`PseudoLabels` with ``num_clusters`` = the clusters actually used (k-means can
        leave a cluster empty; ids are compacted to 0..used−1 and the count is logged).

    Raises:
        ValueError: bad features (see :func:`check_features`), n_clusters < 2, fewer samples than
        n_clusters, all samples identical. TypeError: n_clusters not an int.
    """
    from sklearn.cluster import MiniBatchKMeans

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(f"n_clusters: expected an int, got {type(n_clusters).__name__}")
    if n_clusters < 2:
        raise ValueError(f"n_clusters: expected >= 2, got {n_clusters}")
    X = check_features(features, name)
    if X.shape[0] < n_clusters:
        raise ValueError(f"{name}: {X.shape[0]} samples cannot form n_clusters={n_clusters} clusters; "
                         "use fewer clusters (at most the number of target images)")
    _check_not_identical(X, name)
    if init_size is not None:
        init_size = min(max(int(init_size), 3 * int(n_clusters)), X.shape[0])
    km = MiniBatchKMeans(n_clusters=int(n_clusters), batch_size=batch_size, max_iter=max_iter,
                         init_size=init_size, n_init=n_init, random_state=random_state)
    import warnings

    with warnings.catch_warnings():
        # "Number of distinct clusters found smaller than n_clusters": handled below.
        warnings.simplefilter("ignore")
        km.fit(X)
    labels, used = _relabel(km.labels_.astype(np.int64))
    if used < n_clusters:
        log.warning("%s: k-means used %d of %d clusters (the others are empty)", name, used, n_clusters)
    centers = km.cluster_centers_[np.unique(km.labels_)].astype(np.float32)
    return PseudoLabels(labels, centers, used, "kmeans",
                        {"inertia": float(km.inertia_), "n_clusters_requested": int(n_clusters)})


def _within(jd, eps: float):
    """The stored entries of CSR ``jd`` that are <= eps (the diagonal's 0 included), as CSR.

    DBSCAN's neighbours are exactly these (scikit-learn's radius query on a precomputed sparse
    graph keeps ``data <= eps``), so its labels do not change; but DBSCAN copies its input and
    builds per-row neighbour arrays from it, and the entries beyond eps are most of the matrix."""
    import scipy.sparse as sp

    keep = jd.data <= eps
    ptr = np.concatenate([[0], np.cumsum(keep)])[jd.indptr].astype(jd.indptr.dtype)
    return sp.csr_matrix((jd.data[keep], jd.indices[keep], ptr), shape=jd.shape)


def dbscan_pseudo_labels(features, *, eps: float = 0.6, min_samples: int = 4, k1: int = 20, k2: int = 6,
                         backend=None, progress=None, name: str = "features") -> PseudoLabels:
    """DBSCAN pseudo-labels on the sparse k-reciprocal Jaccard distance (MMT / SpCL style).

    The Jaccard distance comes from :func:`reidkern.rerank.jaccard_distance` (exact, sparse CSR,
    O(N·k) memory: every absent pair is at distance 1 and no eps < 1 can join it), fed to
    ``sklearn.cluster.DBSCAN(eps, min_samples, metric="precomputed")``.

    Args:
        features: [N, D] float, N > k1.
        eps, min_samples: DBSCAN's (field defaults 0.6, 4); eps must be in (0, 1).
        k1, k2: k-reciprocal neighbourhood and query-expansion sizes (20, 6).
        backend, progress: passed to ``jaccard_distance``.
        name: argument name in error messages.

    Returns:
        :class:`PseudoLabels` (outliers −1; ``info`` has "outliers" and "seconds_jaccard").

    Raises:
        ValueError: bad features, N <= k1, eps outside (0, 1), all samples identical, or no
        cluster found (every sample an outlier: raise eps / lower min_samples).
    """
    import time

    from sklearn.cluster import DBSCAN

    from reidkern.rerank import jaccard_distance

    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps: expected a value in (0, 1) (Jaccard distances are in [0, 1]), got {eps!r}")
    X = check_features(features, name)
    if X.shape[0] <= k1:
        raise ValueError(f"{name}: {X.shape[0]} samples are too few for k1={k1} reciprocal neighbours "
                         f"(need more than k1)")
    _check_not_identical(X, name)
    t0 = time.perf_counter()
    jd = jaccard_distance(torch.from_numpy(X), k1=k1, k2=k2, backend=backend, progress=progress)
    t1 = time.perf_counter()
    raw = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed",
                 n_jobs=1).fit_predict(_within(jd, float(eps)))
    labels, k = _relabel(raw.astype(np.int64))
    if k == 0:
        raise ValueError(f"{name}: DBSCAN found no cluster (all {X.shape[0]} samples are outliers at "
                         f"eps={eps}, min_samples={min_samples}); raise eps or lower min_samples")
    centers = cluster_centers(X, labels, k)
    return PseudoLabels(labels, centers, k, "dbscan",
                        {"outliers": int((labels < 0).sum()), "seconds_jaccard": t1 - t0,
                         "seconds_dbscan": time.perf_counter() - t1, "jaccard_nnz": int(jd.nnz)})


def pseudo_label_quality(labels, true_pids) -> Dict[str, float]:
    """Agreement of pseudo-labels with the true identities (scikit-learn's
    ``normalized_mutual_info_score`` and ``adjusted_rand_score``), over the clustered samples
    (outliers −1 left out and counted).

    Returns ``{"nmi", "ari", "num_clusters", "num_ids", "outliers"}``.
    Raises ValueError when the lengths differ.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    true_pids = np.asarray(true_pids)
    if labels.shape != true_pids.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and true_pids {true_pids.shape}: expected equal 1-D shapes")
    keep = labels >= 0
    nmi = normalized_mutual_info_score(true_pids[keep], labels[keep]) if keep.any() else 0.0
    ari = adjusted_rand_score(true_pids[keep], labels[keep]) if keep.any() else 0.0
    return {"nmi": float(nmi), "ari": float(ari), "num_clusters": int(len(np.unique(labels[keep]))),
            "num_ids": int(len(np.unique(true_pids))), "outliers": int((~keep).sum())}
