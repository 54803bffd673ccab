"""Pseudo-labels for domain adaptation: k-means and Jaccard + DBSCAN clusterings, their errors and
fallbacks, the all-or-nothing per-epoch step and its RNG in checkpoints."""
import copy
import logging

import numpy as np
import pytest
import torch

from reidkern.uda import (PseudoLabelStep, check_features, cluster_centers, dbscan_pseudo_labels,
                          kmeans_pseudo_labels, pseudo_label_quality)


def blobs(n_ids=6, per_id=8, dim=16, noise=0.05, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(n_ids, dim))
    pids = np.repeat(np.arange(n_ids), per_id)
    x = centers[pids] + noise * g.normal(size=(len(pids), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), pids


def test_kmeans_recovers_identities():
    x, pids = blobs()
    r = kmeans_pseudo_labels(x, 6, random_state=0)
    q = pseudo_label_quality(r.labels, pids)
    assert q["nmi"] == pytest.approx(1.0) and q["ari"] == pytest.approx(1.0)
    assert r.num_clusters == 6 and r.centers.shape == (6, 16) and r.labels.dtype == np.int64
    assert set(r.labels) == set(range(6))
    # Same seed, same clustering.
    assert np.array_equal(kmeans_pseudo_labels(x, 6, random_state=0).labels, r.labels)


def test_dbscan_on_sparse_jaccard_recovers_identities():
    x, pids = blobs(n_ids=4, per_id=12)
    r = dbscan_pseudo_labels(x, eps=0.6, min_samples=4, k1=10, k2=3)
    q = pseudo_label_quality(r.labels, pids)
    assert r.method == "dbscan" and r.num_clusters == 4 and q["ari"] == pytest.approx(1.0)
    np.testing.assert_allclose(r.centers, cluster_centers(x, r.labels, 4), rtol=1e-6)
    assert r.info["jaccard_nnz"] < len(x) ** 2


def test_dbscan_sparse_equals_dense_jaccard():
    # Same clusters as DBSCAN on the dense float64 reference Jaccard matrix.
    from sklearn.cluster import DBSCAN

    from reidkern.ops.reference.k_reciprocal import jaccard_distance_reference

    x, _ = blobs(n_ids=5, per_id=9, noise=0.3, seed=3)
    r = dbscan_pseudo_labels(x, eps=0.5, min_samples=3, k1=8, k2=3)
    dense = jaccard_distance_reference(torch.from_numpy(x).double(), 8, 3).numpy().clip(min=0)
    ref = DBSCAN(eps=0.5, min_samples=3, metric="precomputed").fit_predict(dense)
    from sklearn.metrics import adjusted_rand_score

    assert np.array_equal(r.labels < 0, ref < 0)
    assert adjusted_rand_score(ref[ref >= 0], r.labels[r.labels >= 0]) == pytest.approx(1.0)


def test_quality_counts_outliers():
    q = pseudo_label_quality(np.array([0, 0, 1, -1]), np.array([5, 5, 6, 6]))
    assert q == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0), "num_clusters": 2, "num_ids": 2, "outliers": 1}
    with pytest.raises(ValueError, match="equal 1-D"):
        pseudo_label_quality(np.zeros(3), np.zeros(4))


# ---- bad input ---------------------------------------------------------------------------------

def test_fewer_images_than_clusters():
    x, _ = blobs(n_ids=2, per_id=3)
    with pytest.raises(ValueError, match="6 samples cannot form n_clusters=10"):
        kmeans_pseudo_labels(x, 10)
    with pytest.raises(ValueError, match="too few for k1=20"):
        dbscan_pseudo_labels(x)


def refused_as_identical(n, dim, cluster):
    """Checks that `cluster` refuses n identical rows; returns them (float32, [n, dim])."""
    x = np.ones((n, dim), dtype=np.float32)
    with pytest.raises(ValueError, match=f"all {n} samples are identical"):
        cluster(x)
    return x


def test_identical_features():
    refused_as_identical(30, 8, lambda x: kmeans_pseudo_labels(x, 3))
    refused_as_identical(30, 8, lambda x: dbscan_pseudo_labels(x, k1=5, k2=2))


def test_nan_features():
    x, _ = blobs()
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match="2 of 48 samples have NaN or inf values \\(first at row 3\\)"):
        kmeans_pseudo_labels(x, 6)
    with pytest.raises(ValueError, match="NaN"):
        dbscan_pseudo_labels(x, k1=5, k2=2)


def test_argument_errors():
    x, _ = blobs()
    with pytest.raises(TypeError, match="n_clusters"):
        kmeans_pseudo_labels(x, 2.5)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_pseudo_labels(x, 1)
    with pytest.raises(ValueError, match="eps"):
        dbscan_pseudo_labels(x, eps=1.5)
    with pytest.raises(TypeError, match="floating-point"):
        check_features(np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[num_samples, dim\]"):
        check_features(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="method"):
        PseudoLabelStep(method="spectral")
    with pytest.raises(ValueError, match="num_clusters"):
        PseudoLabelStep(method="kmeans")


def test_dbscan_all_outliers():
    x, _ = blobs(n_ids=3, per_id=10)
    with pytest.raises(ValueError, match="found no cluster .*all 30 samples are outliers"):
        dbscan_pseudo_labels(x, k1=5, k2=2, min_samples=31)


# ---- the per-epoch step ------------------------------------------------------------------------

def branch_features(seed=0, **kw):
    x, pids = blobs(seed=seed, **kw)
    g = np.random.default_rng(seed + 100)
    return {b: x + 0.01 * g.normal(size=x.shape).astype(np.float32) for b in ("global", "upper", "lower")}, pids


def test_step_resume_restores_labels_and_rng():
    f1, _ = branch_features(0)
    f2, _ = branch_features(1)
    f3, _ = branch_features(2)
    straight = PseudoLabelStep(num_clusters=5, seed=7, kmeans_kwargs={"global": {"init_size": 30}})
    straight.run(f1)
    saved = copy.deepcopy(straight.state_dict())
    straight.run(f2)
    want = straight.run(f3)
    resumed = PseudoLabelStep(num_clusters=5, seed=123, kmeans_kwargs={"global": {"init_size": 30}})
    resumed.load_state_dict(saved)
    assert resumed.epoch == 1
    for b in ("global", "upper", "lower"):
        assert np.array_equal(resumed.labels[b], saved["results"][b]["labels"])
    resumed.run(f2)
    got = resumed.run(f3)
    for b in want:
        assert np.array_equal(got[b].labels, want[b].labels)
    # Without the restored RNG the same features get other k-means ids: the RNG matters.
    unrestored = PseudoLabelStep(num_clusters=5, seed=123, kmeans_kwargs={"global": {"init_size": 30}})
    unrestored.run(f1)
    unrestored.run(f2)
    other = unrestored.run(f3)
    assert any(not np.array_equal(other[b].labels, want[b].labels) for b in want)
    with pytest.raises(ValueError, match="saved for method"):
        PseudoLabelStep(method="dbscan").load_state_dict(saved)


def test_step_failure_leaves_state_untouched():
    f, _ = branch_features()
    step = PseudoLabelStep(num_clusters=6, seed=0)
    step.run(f)
    before = copy.deepcopy(step.state_dict())
    bad = dict(f)
    bad["upper"] = f["upper"].copy()
    bad["upper"][0, 0] = np.nan
    with pytest.raises(ValueError, match="upper features"):
        step.run(bad)
    after = step.state_dict()
    assert after["rng"] == before["rng"] and after["epoch"] == before["epoch"] == 1
    with pytest.raises(ValueError, match="missing branch"):
        step.run({"global": f["global"]})
    with pytest.raises(ValueError, match="same number of samples"):
        step.run({**f, "lower": f["lower"][:10]})


def test_dbscan_no_cluster_keeps_previous_labels(caplog):
    f, _ = branch_features(n_ids=3, per_id=10)
    step = PseudoLabelStep(method="dbscan", dbscan_kwargs={"k1": 5, "k2": 2, "min_samples": 4}, seed=0)
    first = step.run(f)
    assert not step.fell_back
    step.dbscan_kwargs["min_samples"] = 31  # every sample an outlier from now on
    with caplog.at_level(logging.WARNING, logger="reidkern.uda.pseudo_label_step"):
        again = step.run(f)
    assert step.fell_back and step.fallbacks == 1 and step.epoch == 1
    assert again is first
    assert "keeping the previous epoch's pseudo-labels" in caplog.text
    # No previous set, or on_no_cluster="raise": a clear error.
    fresh = PseudoLabelStep(method="dbscan", dbscan_kwargs={"k1": 5, "k2": 2, "min_samples": 31})
    with pytest.raises(ValueError, match="found no cluster"):
        fresh.run(f)
    strict = PseudoLabelStep(method="dbscan", dbscan_kwargs={"k1": 5, "k2": 2}, on_no_cluster="raise")
    strict.run(f)
    strict.dbscan_kwargs["min_samples"] = 31
    with pytest.raises(ValueError, match="found no cluster"):
        strict.run(f)


def test_inf_and_minus_inf_features_are_refused():
    # the finiteness check goes through min/max; each kind of bad value on its own
    for bad in (np.inf, -np.inf, np.nan):
        x, _ = blobs()
        x[40, 3] = bad
        with pytest.raises(ValueError, match="1 of 48 samples have NaN or inf values \\(first at row 40\\)"):
            check_features(x)


def test_identical_check_across_blocks():
    # the identical-rows check goes block by block (1024 rows): a single different row in a later
    # block makes the set clusterable, and all-identical over several blocks is refused
    x = refused_as_identical(2100, 4, lambda x: kmeans_pseudo_labels(x, 3))
    x[2099, 1] = 2.0
    kmeans_pseudo_labels(x, 2, n_init=1, max_iter=5)


def test_dbscan_input_keeps_exactly_the_pairs_within_eps():
    import scipy.sparse as sp

    from reidkern.rerank import jaccard_distance
    from reidkern.uda.clustering import _within

    x, _ = blobs(n_ids=5, per_id=9, noise=0.3)
    jd = jaccard_distance(torch.from_numpy(x), k1=6, k2=3)
    for eps in (0.3, 0.6, 0.95):
        w = _within(jd, eps)
        dense = jd.toarray()
        stored = sp.csr_matrix((np.ones_like(jd.data), jd.indices, jd.indptr), shape=jd.shape).toarray() > 0
        want = stored & (dense <= eps)  # the stored zeros (the diagonal) stay
        got = sp.csr_matrix((np.ones_like(w.data), w.indices, w.indptr), shape=w.shape).toarray() > 0
        assert np.array_equal(got, want) and np.array_equal(w.toarray()[want], dense[want])
        assert want.diagonal().all()
    assert _within(jd, 0.3).nnz < jd.nnz  # something was left out
