"""The per-epoch pseudo-label step of clustering-based domain adaptation: one clustering per
feature branch, computed completely before anything is changed, with its RNG in the checkpoint.

:class:`PseudoLabelStep` clusters each branch's features of the whole target set (LF2: global,
upper, lower) and keeps the labels, cluster counts and the clustering RNG. ``run`` either returns
a complete new set of pseudo-labels (committed to the step's state at once) or raises/falls back
leaving the previous epoch's set and the RNG untouched: a pseudo-label epoch is never half-applied.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from .clustering import PseudoLabels, dbscan_pseudo_labels, kmeans_pseudo_labels

__all__ = ["PseudoLabelStep"]

log = logging.getLogger(__name__)

_METHODS = ("kmeans", "dbscan")


def _numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class PseudoLabelStep:
    """One clustering per branch, every epoch.

    Args:
        branches: branch names, in order (LF2: ``("global", "upper", "lower")``).
        method: ``"kmeans"`` (official LF2: MiniBatchKMeans) or ``"dbscan"`` (Jaccard + DBSCAN).
        num_clusters: k for k-means (required for "kmeans").
        kmeans_kwargs: per-branch keyword arguments for :func:`kmeans_pseudo_labels`
            (``{"global": {"init_size": 1500}, ...}``; official: 1500 global, 900 parts).
        dbscan_kwargs: keyword arguments for :func:`dbscan_pseudo_labels` (eps, min_samples, k1, k2).
        seed: seeds the clustering RNG (``numpy.random.Generator``, PCG64); each k-means draws its
            ``random_state`` from it, and its state is saved by :meth:`state_dict`.
        on_no_cluster: what to do when DBSCAN finds no cluster in some branch:
            ``"keep_previous"`` (default: log a warning and keep the previous epoch's labels for
            every branch; the first epoch has none and raises) or ``"raise"``.

    State after a successful :meth:`run`: ``labels`` {branch: int64 [N]} (−1 = outlier),
    ``results`` {branch: PseudoLabels}, ``epoch`` (number of successful runs).
    """

    def __init__(self, branches: Sequence[str] = ("global", "upper", "lower"), method: str = "kmeans",
                 num_clusters: Optional[int] = None, kmeans_kwargs: Optional[Mapping[str, dict]] = None,
                 dbscan_kwargs: Optional[dict] = None, seed: int = 0, on_no_cluster: str = "keep_previous"):
        if method not in _METHODS:
            raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
        if method == "kmeans" and num_clusters is None:
            raise ValueError("num_clusters: k-means needs the number of clusters")
        if on_no_cluster not in ("keep_previous", "raise"):
            raise ValueError(f"on_no_cluster: expected 'keep_previous' or 'raise', got {on_no_cluster!r}")
        self.branches = tuple(branches)
        if not self.branches or len(set(self.branches)) != len(self.branches):
            raise ValueError(f"branches: expected distinct names, got {branches!r}")
        self.method = method
        self.num_clusters = num_clusters
        self.kmeans_kwargs = dict(kmeans_kwargs or {})
        self.dbscan_kwargs = dict(dbscan_kwargs or {})
        self.on_no_cluster = on_no_cluster
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.labels: Optional[Dict[str, np.ndarray]] = None
        self.results: Optional[Dict[str, PseudoLabels]] = None
        self.epoch = 0
        self.fallbacks = 0
        self.fell_back = False  # the last run kept the previous pseudo-labels

    def _cluster(self, branch: str, X, seed: int) -> PseudoLabels:
        name = f"{branch} features"
        if self.method == "kmeans":
            kw = dict(self.kmeans_kwargs.get(branch, {}))
            return kmeans_pseudo_labels(X, self.num_clusters, random_state=seed, name=name, **kw)
        return dbscan_pseudo_labels(X, name=name, **self.dbscan_kwargs)

    def run(self, features: Mapping[str, object]) -> Dict[str, PseudoLabels]:
        """Cluster every branch of ``features`` ({branch: [N, D] float}, same N for all).

        Returns the new {branch: PseudoLabels} (also kept in ``self.results``), or — after the
        documented DBSCAN fallback — the previous ones.

        Raises:
            ValueError: a branch missing or of another length; any clustering error (NaN
            features, N < k, identical features, ...), or no DBSCAN cluster with no previous set
            or ``on_no_cluster="raise"``. The step's state (labels, RNG) is then unchanged.
        """
        missing = [b for b in self.branches if b not in features]
        if missing:
            raise ValueError(f"features: missing branch(es) {missing}; expected {list(self.branches)}")
        sizes = {b: len(features[b]) for b in self.branches}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"features: every branch needs the same number of samples, got {sizes}")
        n = next(iter(sizes.values()))
        if self.labels is not None and len(next(iter(self.labels.values()))) != n:
            raise ValueError(f"features: {n} samples, but the previous pseudo-labels cover "
                             f"{len(next(iter(self.labels.values())))} (the target set changed)")
        rng_state = self.rng.bit_generator.state
        seeds = self.rng.integers(0, 2**31 - 1, size=len(self.branches))
        out: Dict[str, PseudoLabels] = {}
        try:
            for branch, seed in zip(self.branches, seeds):
                t0 = time.perf_counter()
                out[branch] = self._cluster(branch, features[branch], int(seed))
                out[branch].info["seconds"] = time.perf_counter() - t0
        except ValueError as err:
            self.rng.bit_generator.state = rng_state  # nothing of this epoch is kept
            no_cluster = "found no cluster" in str(err)
            if no_cluster and self.on_no_cluster == "keep_previous" and self.results is not None:
                self.fallbacks += 1
                self.fell_back = True
                log.warning("pseudo-labels: %s; keeping the previous epoch's pseudo-labels for "
                            "every branch (fallback %d)", err, self.fallbacks)
                return self.results
            raise
        self.results = out
        self.labels = {b: r.labels for b, r in out.items()}
        self.epoch += 1
        self.fell_back = False
        for b, r in out.items():
            log.info("pseudo-labels epoch %d, %s: %d clusters, %d outliers, %.1f s", self.epoch, b,
                     r.num_clusters, r.num_outliers, r.info["seconds"])
        return out

    def state_dict(self) -> dict:
        """Labels, cluster counts/centres, epoch count and the RNG state, as torch tensors and
        plain Python values (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "method": self.method,
            "branches": list(self.branches),
            "epoch": self.epoch,
            "fallbacks": self.fallbacks,
            "rng": self.rng.bit_generator.state,
            "results": None if self.results is None else {
                b: {"labels": torch.from_numpy(r.labels), "centers": torch.from_numpy(r.centers),
                    "num_clusters": r.num_clusters, "method": r.method,
                    "info": {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
                             for k, v in r.info.items()}} for b, r in self.results.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (same branches and method).

        Raises:
            ValueError: other branches or method than this step's.
        """
        if list(state["branches"]) != list(self.branches) or state["method"] != self.method:
            raise ValueError(f"state: saved for method {state['method']!r} / branches {state['branches']}, "
                             f"this step is {self.method!r} / {list(self.branches)}")
        self.epoch = int(state["epoch"])
        self.fallbacks = int(state.get("fallbacks", 0))
        self.rng.bit_generator.state = state["rng"]
        res = state["results"]
        if res is None:
            self.results = self.labels = None
        else:
            self.results = {b: PseudoLabels(_numpy(r["labels"]).astype(np.int64), _numpy(r["centers"]),
                                            int(r["num_clusters"]), r["method"], dict(r["info"]))
                            for b, r in res.items()}
            self.labels = {b: r.labels for b, r in self.results.items()}
