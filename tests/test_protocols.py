"""Each protocol against a plain float64 implementation of it (loops, stable sort), with ties."""
import numpy as np
import pytest
import torch

from reidkern.metrics.distance import pairwise_distance
from reidkern.metrics.protocols import (
    TrialsResult, evaluate_image_reid, evaluate_image_reid_distmat, evaluate_regdb, evaluate_regdb_trials,
    evaluate_sysu_mm01, evaluate_sysu_mm01_distmat, evaluate_text_to_image)


def plain_rank(distmat, q_pids, g_pids, keep_fn, max_rank, distinct=False):
    """torchreid / AGW loop in float64 with a stable sort. keep_fn(q) -> bool mask over gallery.
    Returns (cmc, mAP, mINP) over the queries with a positive."""
    cmcs, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        keep = keep_fn(q)[order]
        labels = g_pids[order][keep]
        match = (labels == q_pids[q]).astype(np.int64)
        if not match.any():
            continue
        if distinct:
            _, first = np.unique(labels, return_index=True)
            uniq = labels[np.sort(first)]
            hit = int(np.nonzero(uniq == q_pids[q])[0][0])
        else:
            hit = int(np.nonzero(match)[0][0])
        cmc = np.zeros(max_rank)
        cmc[hit:] = 1 if hit < max_rank else 0
        cmcs.append(cmc)
        cum = match.cumsum()
        aps.append(float(((cum / np.arange(1, len(match) + 1)) * match).sum() / match.sum()))
        last = int(np.nonzero(match)[0][-1])
        inps.append(cum[last] / (last + 1.0))
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps))


def _check(result, plain, max_rank):
    cmc, mAP, mINP = plain
    np.testing.assert_allclose(result.cmc.numpy()[:max_rank], cmc[:max_rank], rtol=0, atol=1e-12)
    assert result.mAP == pytest.approx(mAP, abs=1e-12) and result.mINP == pytest.approx(mINP, abs=1e-12)


def _ties(rng, q, g):
    return rng.integers(0, 6, (q, g)).astype(np.float64)  # many equal distances


def test_image_reid_market_protocol_with_ties():
    rng = np.random.default_rng(0)
    Q, G = 23, 61
    d = _ties(rng, Q, G)
    q_pids, g_pids = rng.integers(0, 6, Q), rng.integers(0, 6, G)
    q_cams, g_cams = rng.integers(0, 3, Q), rng.integers(0, 3, G)
    res = evaluate_image_reid_distmat(d, q_pids, g_pids, q_cams, g_cams, max_rank=10, missing="skip")
    plain = plain_rank(d, q_pids, g_pids, lambda q: ~((g_pids == q_pids[q]) & (g_cams == q_cams[q])), 10)
    _check(res, plain, 10)


def test_image_reid_features_camera_free_and_missing_ids():
    rng = np.random.default_rng(1)
    qf, gf = torch.randn(9, 5, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    q_pids, g_pids = rng.integers(0, 4, 9), rng.integers(0, 4, 30)
    g_pids[:4] = np.arange(4)
    cams_q, cams_g = np.full(9, -1), np.full(30, -1)
    res = evaluate_image_reid(qf, gf, q_pids, g_pids, cams_q, cams_g, metric="cosine", max_rank=5)
    d = pairwise_distance(qf, gf, "cosine").numpy()
    _check(res, plain_rank(d, q_pids, g_pids, lambda q: np.ones(30, bool), 5), 5)
    assert res.num_skipped_queries == 0
    with pytest.raises(ValueError, match=r"query identities do not appear in the gallery \(7"):
        evaluate_image_reid(qf, gf, np.r_[q_pids[:-1], 7], g_pids, cams_q, cams_g)


def test_sysu_trial_distinct_cmc_and_camera_rule():
    rng = np.random.default_rng(2)
    Q, G = 31, 40
    d = _ties(rng, Q, G)
    q_pids, g_pids = rng.integers(0, 8, Q), np.r_[np.arange(8), rng.integers(0, 8, G - 8)]
    q_cams = rng.choice([2, 5], Q)          # infrared cameras 3 and 6 (0-based)
    g_cams = rng.choice([0, 1, 3, 4], G)    # visible cameras 1, 2, 4, 5
    res = evaluate_sysu_mm01_distmat(d, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    keep = lambda q: ~((q_cams[q] == 2) & (g_cams == 1))  # noqa: E731
    _check(res, plain_rank(d, q_pids, g_pids, keep, 20, distinct=True), 20)
    # first_hit is the ordinary rank
    std = plain_rank(d, q_pids, g_pids, keep, 20)
    valid = res.first_hit >= 0
    np.testing.assert_allclose([(res.first_hit[valid] <= k).double().mean() for k in range(20)], std[0])


def test_sysu_over_trials_matches_per_trial():
    rng = np.random.default_rng(3)
    qf = torch.randn(12, 4, dtype=torch.float64)
    gf = torch.randn(50, 4, dtype=torch.float64)
    q_pids = rng.integers(0, 5, 12)
    g_pids = np.r_[np.arange(5), rng.integers(0, 5, 45)]
    q_cams, g_cams = rng.choice([2, 5], 12), rng.choice([0, 1, 3, 4], 50)
    trials = [np.r_[np.arange(5), rng.choice(np.arange(5, 50), 10, replace=False)] for _ in range(3)]
    out = evaluate_sysu_mm01(qf, gf, q_pids, g_pids, q_cams, g_cams, trials=trials, max_rank=10)
    assert isinstance(out, TrialsResult) and len(out.trials) == 3
    maps = []
    for t in trials:
        d = pairwise_distance(qf, gf[t], "euclidean").numpy()
        keep = lambda q, t=t: ~((q_cams[q] == 2) & (g_cams[t] == 1))  # noqa: E731
        maps.append(plain_rank(d, q_pids, g_pids[t], keep, 10, distinct=True)[1])
    assert out.mean["mAP"] == pytest.approx(np.mean(maps), abs=1e-12)
    assert out.std["mAP"] == pytest.approx(np.std(maps), abs=1e-12)
    assert "±" in out.summary()
    with pytest.raises(ValueError, match=r"trials\[0\]"):
        evaluate_sysu_mm01(qf, gf, q_pids, g_pids, q_cams, g_cams, trials=[[60]])


def test_regdb_trials():
    rng = np.random.default_rng(4)
    trials, plains = [], []
    for _ in range(3):
        qf, gf = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
        pids = rng.permutation(np.repeat(np.arange(5), 2))
        trials.append((qf, gf, pids, np.repeat(np.arange(5), 2)))
        d = pairwise_distance(qf, gf, "euclidean").numpy()
        plains.append(plain_rank(d, pids, np.repeat(np.arange(5), 2), lambda q: np.ones(10, bool), 10))
    _check(evaluate_regdb(*trials[0], max_rank=10), plains[0], 10)
    out = evaluate_regdb_trials(trials, max_rank=10)
    assert out.mean["R1"] == pytest.approx(np.mean([p[0][0] for p in plains]))
    assert out.mean["mINP"] == pytest.approx(np.mean([p[2] for p in plains]))


def test_text_to_image_with_ties():
    rng = np.random.default_rng(5)
    img = torch.tensor(rng.integers(-1, 2, (20, 3)), dtype=torch.float64) + 0.0
    img[img.norm(dim=1) == 0] = 1.0
    txt = torch.tensor(rng.integers(-1, 2, (15, 3)), dtype=torch.float64)
    txt[txt.norm(dim=1) == 0] = 1.0
    i_pids = np.r_[np.arange(6), rng.integers(0, 6, 14)]
    t_pids = rng.integers(0, 6, 15)
    res = evaluate_text_to_image(txt, img, t_pids, i_pids)
    d = pairwise_distance(txt, img, "cosine").numpy()
    _check(res, plain_rank(d, t_pids, i_pids, lambda q: np.ones(20, bool), 10), 10)
    assert 0 <= res.rank(1) <= res.rank(5) <= res.rank(10) <= 1
    with pytest.raises(ValueError, match="missing"):
        evaluate_text_to_image(txt, img, t_pids, i_pids, missing="ignore")
