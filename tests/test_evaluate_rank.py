"""evaluate_rank / evaluate_features against the float64 torchreid-algorithm reference."""
import os
import warnings

import pytest
import torch

import reidkern
from reidkern.metrics import evaluate_features, evaluate_rank, pairwise_distance
from reidkern.metrics.distance import ranking_distance
from reidkern.ops import evaluate_rank_per_query
from reidkern.ops.reference.evaluate_rank import evaluate_rank_reference
from reidkern.testing import assert_close, device_backend_cases, opcheck

CASES = device_backend_cases()


def on(device, tensors):
    """The tensors of a case, moved to ``device``."""
    return tuple(t.to(device) for t in tensors)


def make_case(num_q, num_g, num_ids, num_cams, ties=True, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many exact ties, ordered by gallery index
        distmat = torch.randint(0, 7, (num_q, num_g), generator=g).to(dtype)
    else:
        distmat = torch.rand(num_q, num_g, generator=g, dtype=torch.float64).to(dtype)
    q_pids = torch.randint(0, num_ids, (num_q,), generator=g)
    g_pids = torch.randint(0, num_ids, (num_g,), generator=g)
    q_camids = torch.randint(0, num_cams, (num_q,), generator=g)
    g_camids = torch.randint(0, num_cams, (num_g,), generator=g)
    return distmat, q_pids, g_pids, q_camids, g_camids


def check_per_query(out, ref):
    first_hit, ap, inp = (t.cpu() for t in out)
    assert torch.equal(first_hit, ref[0])
    assert_close(ap, ref[1], dtype=torch.float64, atol=1e-12)
    assert_close(inp, ref[2], dtype=torch.float64, atol=1e-12)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trapezoid", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (13, 37), (29, 300)])
def test_matches_reference_with_ties(device, backend, dtype, trapezoid, shape):
    case = make_case(*shape, num_ids=5, num_cams=3, seed=shape[0] * 1000 + shape[1], dtype=dtype)
    out = evaluate_rank_per_query(*on(device, case), trapezoid=trapezoid, backend=backend)
    check_per_query(out, evaluate_rank_reference(*case, trapezoid=trapezoid))


@pytest.mark.parametrize("device,backend", CASES)
def test_continuous_distances_and_many_positives(device, backend):
    # Few ids: many positives per query (exercises the sorted-positive paths), no ties.
    case = make_case(17, 513, num_ids=3, num_cams=4, ties=False, seed=3)
    check_per_query(evaluate_rank_per_query(*on(device, case), backend=backend), evaluate_rank_reference(*case))


@pytest.mark.parametrize("device,backend", CASES)
def test_all_distances_equal(device, backend):
    distmat, qp, gp, qc, gc = make_case(5, 40, 4, 2, seed=5)
    distmat = torch.zeros_like(distmat)
    check_per_query(evaluate_rank_per_query(*on(device, (distmat, qp, gp, qc, gc)), backend=backend),
                    evaluate_rank_reference(distmat, qp, gp, qc, gc))


@pytest.mark.parametrize("device,backend", CASES)
def test_non_contiguous_distmat(device, backend):
    distmat, qp, gp, qc, gc = make_case(31, 23, 6, 3, seed=7)
    transposed = distmat.to(device).t().contiguous().t()  # column-major view
    assert not transposed.is_contiguous()
    strided = torch.zeros(31, 46, device=device)[:, ::2]
    strided.copy_(distmat)
    for d in (transposed, strided):
        check_per_query(evaluate_rank_per_query(d, *on(device, (qp, gp, qc, gc)), backend=backend),
                        evaluate_rank_reference(distmat, qp, gp, qc, gc))


def test_protocol_by_hand():
    # Query pid 1 cam 0. Gallery: [pid1 cam0 (junk), pid2, pid1 cam1, pid3, pid1 cam2]
    distmat = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]])
    q_pids, q_camids = torch.tensor([1]), torch.tensor([0])
    g_pids, g_camids = torch.tensor([1, 2, 1, 3, 1]), torch.tensor([0, 0, 1, 0, 2])
    r = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4)
    # Valid order: pid2, pid1, pid3, pid1 -> hits at ranks 2 and 4.
    assert r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    rt = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4, trapezoid=True)
    # Trapezoid: hit 1 at rank 2: (old 0/1 + 1/2)/2; hit 2 at rank 4: (1/3 + 2/4)/2.
    assert rt.mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2)


def test_summary_matches_reference_and_skips_queries():
    distmat, qp, gp, qc, gc = make_case(60, 200, 40, 3, seed=11)
    qp[:5] = 1000  # ids absent from the gallery: skipped and counted
    r = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=20)
    fh, ap, inp = evaluate_rank_reference(distmat, qp, gp, qc, gc)
    valid = fh >= 0
    assert r.num_skipped_queries == int((~valid).sum()) >= 5
    assert r.num_valid_queries == int(valid.sum())
    assert r.mAP == pytest.approx(float(ap[valid].mean()), abs=1e-12)
    assert r.mINP == pytest.approx(float(inp[valid].mean()), abs=1e-12)
    expected_cmc = torch.stack([(fh[valid] <= k).double().mean() for k in range(20)])
    assert_close(r.cmc, expected_cmc, dtype=torch.float64)
    assert torch.isnan(r.all_AP[:5]).all()
    cmc, mAP = r  # torchreid-style unpacking
    assert mAP == r.mAP and cmc is r.cmc
    assert "Rank-1" in r.summary()


def test_max_rank_clipped_to_gallery_with_warning():
    case = make_case(4, 6, 2, 2, seed=2)
    with pytest.warns(UserWarning, match="max_rank"):
        r = evaluate_rank(*case, max_rank=50)
    assert len(r.cmc) == 6


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_features_tiles_match_full_matrix(metric):
    g = torch.Generator().manual_seed(4)
    qf = torch.randn(37, 16, generator=g, dtype=torch.float64)
    gf = torch.randn(211, 16, generator=g, dtype=torch.float64)
    qp, gp = torch.randint(0, 20, (37,), generator=g), torch.randint(0, 20, (211,), generator=g)
    qc, gc = torch.randint(0, 3, (37,), generator=g), torch.randint(0, 3, (211,), generator=g)
    r = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, tile_rows=5, progress=False)
    full = torch.cdist(qf, gf) ** 2 if metric == "euclidean" else 1 - torch.nn.functional.normalize(
        qf, dim=1) @ torch.nn.functional.normalize(gf, dim=1).t()
    fh, ap, inp = evaluate_rank_reference(full, qp, gp, qc, gc)
    valid = fh >= 0
    assert torch.equal(r.first_hit, fh)
    assert r.mAP == pytest.approx(float(ap[valid].mean()), abs=1e-6)
    assert r.mINP == pytest.approx(float(inp[valid].mean()), abs=1e-6)


def test_pairwise_distance_definitions():
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64)
    assert_close(pairwise_distance(x, y), torch.cdist(x, y))  # one meaning per name (reidkern/_metric.py)
    assert_close(pairwise_distance(x, y, "sqeuclidean"), torch.cdist(x, y) ** 2)
    cos = torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=2)
    assert_close(pairwise_distance(x, y, "cosine"), 1 - cos)
    for metric in ("euclidean", "sqeuclidean", "cosine"):  # ranking_distance ranks as the metric does
        assert torch.equal(ranking_distance(x, y, metric).argsort(1), pairwise_distance(x, y, metric).argsort(1))
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(x, y, "manhattan")


# ---- bad input ----------------------------------------------------------------------------------

GOOD = make_case(4, 6, 3, 2, seed=1)


@pytest.mark.parametrize("index,bad,exc,match", [
    (0, torch.zeros(4), ValueError, "distmat"),
    (0, torch.zeros(0, 6), ValueError, "empty query"),
    (0, torch.zeros(4, 0), ValueError, "empty gallery"),
    (0, torch.full((4, 6), float("nan")), ValueError, "NaN"),
    (0, torch.full((4, 6), float("inf")), ValueError, "NaN or inf"),
    (1, torch.zeros(5, dtype=torch.long), ValueError, "q_pids"),
    (2, torch.zeros(6), TypeError, "g_pids"),
    (3, torch.zeros(4, 1, dtype=torch.long), ValueError, "q_camids"),
    (4, torch.zeros(3, dtype=torch.long), ValueError, "g_camids"),
])
def test_bad_input_names_the_argument(index, bad, exc, match):
    args = list(GOOD)
    args[index] = bad
    with pytest.raises(exc, match=match):
        evaluate_rank(*args)


def test_bad_max_rank_and_no_valid_query():
    with pytest.raises(ValueError, match="max_rank"):
        evaluate_rank(*GOOD, max_rank=0)
    d, qp, gp, qc, gc = GOOD
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(d, qp + 100, gp, qc, gc)


def test_bad_features():
    q, g = torch.randn(3, 4), torch.randn(5, 4)
    ids = (torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="feature dimension"):
        evaluate_features(q, torch.randn(5, 3), ids[0], ids[1], ids[0], ids[1])
    with pytest.raises(ValueError, match="metric"):
        evaluate_features(q, g, ids[0], ids[1], ids[0], ids[1], metric="manhattan")
    with pytest.raises(ValueError, match="qf"):
        evaluate_features(q.masked_fill(q > 0, float("nan")), g, ids[0], ids[1], ids[0], ids[1])


def test_backend_choice(monkeypatch):
    case = make_case(3, 5, 2, 2)
    with pytest.raises(ValueError, match="backend"):
        evaluate_rank_per_query(*case, backend="fortran")
    with pytest.raises(ValueError, match="cuda"):
        evaluate_rank_per_query(*case, backend="cuda")
    monkeypatch.setenv("REIDKERN_BACKEND", "reference")
    check_per_query(evaluate_rank_per_query(*case), evaluate_rank_reference(*case))
    monkeypatch.setenv("REIDKERN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="REIDKERN_BACKEND"):
        evaluate_rank_per_query(*case)


def test_reference_serves_with_one_warning_when_library_missing(monkeypatch):
    from reidkern import _library
    monkeypatch.setattr(_library, "_C", None)
    monkeypatch.setattr(_library, "_warned", set())
    case = make_case(3, 5, 2, 2)
    with pytest.warns(RuntimeWarning, match="reference"):
        out = evaluate_rank_per_query(*case)
    check_per_query(out, evaluate_rank_reference(*case))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_rank_per_query(*case)  # warned once only


@pytest.mark.parametrize("device,backend", device_backend_cases(("cpp", "cuda")))
def test_opcheck(device, backend):
    case = on(device, make_case(6, 11, 3, 2, seed=9))
    opcheck(torch.ops.reidkern.evaluate_rank.default, (*case, False))
    opcheck(torch.ops.reidkern.evaluate_rank.default, (*case, True))


def test_build_info():
    info = reidkern.build_info()
    if os.environ.get("REIDKERN_REQUIRE_NATIVE") == "1":  # set by `run.sh test`: no silent fallback
        assert info["native"], info["native_error"]
    assert info["torch_runtime"] == torch.__version__
    assert "reference" in info["backends"]
    if info["native"]:
        assert info["torch_built"] and "cpp" in info["backends"]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("num_ids", [2, 40])  # many positives (binary-search path) and few
def test_ties_with_many_and_few_positives(device, backend, num_ids):
    case = make_case(9, 257, num_ids=num_ids, num_cams=3, seed=num_ids)
    for trapezoid in (False, True):
        check_per_query(evaluate_rank_per_query(*on(device, case), trapezoid=trapezoid, backend=backend),
                        evaluate_rank_reference(*case, trapezoid=trapezoid))


@pytest.mark.parametrize("device,backend", CASES)
def test_non_finite_distance_raises_on_every_backend(device, backend):
    distmat, qp, gp, qc, gc = make_case(6, 30, 4, 2, seed=8)
    distmat, qp, gp, qc, gc = on(device, (distmat, qp, gp, qc, gc))
    distmat[4, 17] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_rank_per_query(distmat, qp, gp, qc, gc, backend=backend)
    distmat[4, 17] = float("-inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_rank_per_query(distmat, qp, gp, qc, gc, backend=backend)


@pytest.mark.parametrize("device,backend", device_backend_cases(devices=("cuda",)))
@pytest.mark.parametrize("trapezoid", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (13, 37), (29, 300), (64, 5000)])
def test_cuda_matches_reference(device, backend, trapezoid, shape):
    case = make_case(*shape, num_ids=7, num_cams=3, seed=shape[1])
    out = evaluate_rank_per_query(*(t.cuda() for t in case), trapezoid=trapezoid, backend=backend)
    assert out[0].is_cuda
    check_per_query(out, evaluate_rank_reference(*case, trapezoid=trapezoid))
    strided = case[0].t().contiguous().t().cuda()
    out = evaluate_rank_per_query(strided, *(t.cuda() for t in case[1:]), trapezoid=trapezoid,
                                  backend=backend)
    check_per_query(out, evaluate_rank_reference(*case, trapezoid=trapezoid))
