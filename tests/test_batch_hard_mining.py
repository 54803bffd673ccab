"""batch_hard_mining against the float64 fast-reid-style and torchreid-style references."""
import warnings

import pytest
import torch

from reidkern.ops import batch_hard_mining
from reidkern.ops.reference.batch_hard_mining import (batch_hard_mining_loop,
                                                      batch_hard_mining_reference,
                                                      pairwise_distance_matrix)
from reidkern.testing import (DEVICE_BACKENDS, assert_close, device_backend_cases, opcheck, to_cpu,
                              unusable_reason)

CASES = device_backend_cases()
METRICS = ["euclidean", "sqeuclidean", "cosine"]


def make_case(b, d, num_ids, seed=0, dtype=torch.float32, ints=False, m=None):
    g = torch.Generator().manual_seed(seed)
    if ints:  # small integers: every distance exact in float32, many exact ties
        x = torch.randint(-2, 3, (b, d), generator=g).to(dtype)
    else:
        x = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, num_ids, (b,), generator=g)
    if m is None:
        return x, labels
    y = (torch.randint(-2, 3, (m, d), generator=g).to(dtype) if ints
         else torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype))
    return x, labels, y, torch.randint(0, num_ids, (m,), generator=g)


def check_mining(out, x, labels, metric, y=None, ly=None, self_offset=None, exact=False):
    """Distances within the dtype's tolerance of the float64 reference; indices equal to the
    reference's, or (float32 on continuous data) pointing at a candidate of the right kind whose
    float64 distance equals the best one within tolerance (near-ties may flip in float32)."""
    xd = x.detach().double()
    yd = None if y is None else y.detach().double()
    ref = batch_hard_mining_reference(xd, labels, yd, ly, metric, self_offset)
    dtype = x.dtype
    assert_close(out.dist_ap, ref[0], dtype=dtype, atol=1e-5 if dtype == torch.float32 else None)
    assert_close(out.dist_an, ref[1], dtype=dtype, atol=1e-5 if dtype == torch.float32 else None)
    assert torch.equal(out.valid, (ref[2] >= 0) & (ref[3] >= 0))
    assert torch.equal(out.p_index >= 0, ref[2] >= 0) and torch.equal(out.n_index >= 0, ref[3] >= 0)
    if exact or dtype == torch.float64:
        assert torch.equal(out.p_index, ref[2]) and torch.equal(out.n_index, ref[3])
        return
    dist = pairwise_distance_matrix(xd, xd if yd is None else yd, metric)
    cand_labels = labels if ly is None else ly
    rows = torch.arange(len(labels))
    for idx, best, same in ((out.p_index, ref[0], True), (out.n_index, ref[1], False)):
        has = idx >= 0
        chosen = idx[has]
        assert torch.equal(cand_labels[chosen] == labels[has], torch.full_like(chosen, same, dtype=torch.bool))
        assert_close(dist[rows[has], chosen], best[has], dtype=torch.float32, atol=1e-5)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 3), (2, 5), (13, 7), (37, 19), (70, 33)])
def test_matches_reference(device, backend, metric, dtype, shape):
    x, labels = make_case(*shape, num_ids=max(2, shape[0] // 4), seed=sum(shape), dtype=dtype)
    out = batch_hard_mining(x.to(device), labels.to(device), metric, backend=backend)
    check_mining(to_cpu(out), x, labels, metric)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("metric", METRICS)
def test_ties_go_to_lowest_index(device, backend, metric):
    x, labels = make_case(41, 3, num_ids=4, seed=3, ints=True)
    x[5] = x[6] = x[7]  # duplicated rows and labels: exact ties
    labels[5] = labels[6] = labels[7]
    out = to_cpu(batch_hard_mining(x.to(device), labels.to(device), metric, backend=backend))
    # cosine of parallel integer vectors is equal only up to rounding: exact there for duplicates only
    check_mining(out, x, labels, metric, exact=metric != "cosine")
    others = torch.ones(41, dtype=torch.bool)
    others[5:8] = False  # anchors 5-7 exclude themselves
    for idx in (out.p_index[others], out.n_index[others]):
        assert not bool(((idx == 6) | (idx == 7)).any())  # rows 5, 6, 7 coincide: 5 always wins
    # a hand-made tie: anchor 0's positives 1 and 2 at the same distance, negative 3 and 4 too
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    out = to_cpu(batch_hard_mining(x.to(device), labels.to(device), "euclidean", backend=backend))
    assert out.p_index[0] == 1 and out.n_index[0] == 3
    assert out.p_index[1] == 2 and out.p_index[2] == 1


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("metric", METRICS)
def test_memory_bank_and_self_offset(device, backend, metric):
    x, labels, y, ly = make_case(11, 6, num_ids=3, seed=4, dtype=torch.float64, m=29)
    on = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    check_mining(to_cpu(batch_hard_mining(*on(x, labels), metric, ref_embeddings=y.to(device),
                                          ref_labels=ly.to(device), backend=backend)),
                 x, labels, metric, y, ly, -1)
    # the batch sits at rows 7..17 of a gathered set: those rows are the anchors themselves
    y2, ly2 = y.clone(), ly.clone()
    y2[7:18], ly2[7:18] = x, labels
    out = to_cpu(batch_hard_mining(*on(x, labels), metric, ref_embeddings=y2.to(device),
                                   ref_labels=ly2.to(device), self_offset=7, backend=backend))
    check_mining(out, x, labels, metric, y2, ly2, 7)
    assert not bool((out.p_index == torch.arange(11) + 7).any())


@pytest.mark.parametrize("device,backend", CASES)
def test_non_contiguous_inputs(device, backend):
    x, labels = make_case(23, 10, num_ids=5, seed=5, dtype=torch.float64)
    xt = x.to(device).t().contiguous().t()
    strided = torch.zeros(23, 20, dtype=torch.float64, device=device)[:, ::2]
    strided.copy_(x)
    lab = torch.zeros(46, dtype=torch.long, device=device)[::2]
    lab.copy_(labels)
    for xx in (xt, strided):
        assert not xx.is_contiguous()
        check_mining(to_cpu(batch_hard_mining(xx, lab, "euclidean", backend=backend)), x, labels, "euclidean")


@pytest.mark.parametrize("device,backend", CASES)
def test_anchors_without_positive_or_negative_are_reported(device, backend):
    x = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2], device=device)  # anchor 2 has no positive
    out = batch_hard_mining(x, labels, backend=backend)
    assert out.valid.tolist() == [True, True, False, True, True]
    assert out.p_index[2] == -1 and out.dist_ap[2] == 0
    same = batch_hard_mining(x, torch.zeros(5, dtype=torch.long, device=device), backend=backend)  # no negatives
    assert not same.valid.any() and (same.n_index == -1).all() and (same.dist_an == 0).all()
    single = batch_hard_mining(x[:1], labels[:1], backend=backend)
    assert not single.valid.any() and torch.isfinite(single.dist_ap).all()
    (g,) = torch.autograd.grad((out.dist_ap + out.dist_an).sum() + (same.dist_ap + same.dist_an).sum(), x)
    assert torch.isfinite(g).all()
    empty = batch_hard_mining(torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device),
                              backend=backend)
    assert empty.dist_ap.shape == (0,) and empty.p_index.dtype == torch.int64
    nothing = batch_hard_mining(x, labels, ref_embeddings=torch.zeros(0, 4, dtype=torch.float64, device=device),
                                ref_labels=torch.zeros(0, dtype=torch.long, device=device), backend=backend)
    assert not nothing.valid.any() and (nothing.p_index == -1).all()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("metric", METRICS)
def test_gradients_match_reference(device, backend, metric):
    x, labels, y, ly = make_case(19, 9, num_ids=4, seed=6, dtype=torch.float64, m=15)
    w = torch.randn(2, 19, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for ref_set in (False, True):
        xa = x.to(device).requires_grad_()
        xr = x.clone().requires_grad_()
        ya = y.to(device).requires_grad_()
        yr = y.clone().requires_grad_()
        kw = dict(ref_embeddings=ya, ref_labels=ly.to(device)) if ref_set else {}
        out = to_cpu(batch_hard_mining(xa, labels.to(device), metric, backend=backend, **kw))
        ref = batch_hard_mining_reference(xr, labels, yr if ref_set else None, ly if ref_set else None,
                                          metric)
        loss = (w[0] * out.dist_ap + w[1] * out.dist_an).sum()
        loss_ref = (w[0] * ref[0] + w[1] * ref[1]).sum()
        inputs, inputs_ref = ([xa, ya], [xr, yr]) if ref_set else ([xa], [xr])
        for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(loss_ref, inputs_ref)):
            assert_close(got, want, atol=1e-10)


@pytest.mark.parametrize("device,backend", CASES)
def test_float32_gradients(device, backend):
    x, labels = make_case(33, 17, num_ids=6, seed=8)
    xa = x.to(device).requires_grad_()
    xr = x.double().requires_grad_()
    out = to_cpu(batch_hard_mining(xa, labels.to(device), backend=backend))
    ref = batch_hard_mining_reference(xr, labels)
    if torch.equal(out.p_index, ref[2]) and torch.equal(out.n_index, ref[3]):
        (g,) = torch.autograd.grad((out.dist_ap - 2 * out.dist_an).sum(), xa)
        (gr,) = torch.autograd.grad((ref[0] - 2 * ref[1]).sum(), xr)
        assert_close(g, gr, dtype=torch.float32, atol=1e-5)
    else:  # a float32 near-tie picked another pair: not a gradient error
        pytest.fail("float32 mining differs from float64 on this seed; choose another")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck(device, backend, metric):
    x, labels, y, ly = (t.to(device) for t in make_case(7, 4, num_ids=3, seed=9, dtype=torch.float64, m=6))
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: batch_hard_mining(a, labels, metric, backend=backend)[:2], (x,))
    assert torch.autograd.gradcheck(
        lambda a, b: batch_hard_mining(a, labels, metric, ref_embeddings=b, ref_labels=ly,
                                       backend=backend)[:2], (x, y))


def test_euclidean_clamp_gives_zero_gradient_at_coincident_points():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    for backend in ("reference",) + tuple(b for d, b in DEVICE_BACKENDS if d == "cpu" and not unusable_reason(d, b)):
        out = batch_hard_mining(x, labels, backend=backend)
        assert float(out.dist_ap[0].detach()) == pytest.approx(1e-6)  # sqrt(1e-12)
        (g,) = torch.autograd.grad(out.dist_ap.sum(), x)
        assert torch.equal(g, torch.zeros_like(g))


def test_torchreid_loop_oracle_agrees():
    x, labels = make_case(24, 8, num_ids=6, seed=10, dtype=torch.float64)
    for metric in METRICS:
        ap, an = batch_hard_mining_loop(x, labels, metric)
        out = batch_hard_mining(x, labels, metric)
        assert torch.equal(out.valid, ~(ap.isnan() | an.isnan())) and not out.valid.all()
        assert_close(out.dist_ap[out.valid], ap[out.valid])
        assert_close(out.dist_an[out.valid], an[out.valid])


@pytest.mark.parametrize("device,backend", device_backend_cases(("cpp", "cuda")))
def test_opcheck(device, backend):
    x, labels, y, ly = (t.to(device) for t in make_case(9, 5, num_ids=3, seed=11, dtype=torch.float64, m=7))
    for metric in range(3):
        opcheck(torch.ops.reidkern.batch_hard_mining_fwd.default,
                (x.clone().requires_grad_(), labels, y.clone().requires_grad_(), ly, metric, -1))
        opcheck(torch.ops.reidkern.batch_hard_mining_fwd.default,
                (x.float().requires_grad_(), labels, x.float(), labels, metric, 0))
        out = torch.ops.reidkern.batch_hard_mining_fwd(x, labels, y, ly, metric, -1)
        g = torch.randn(9, dtype=torch.float64).to(device)
        opcheck(torch.ops.reidkern.batch_hard_mining_bwd.default,
                (g, g.flip(0), x, y, out[0], out[1], out[2], out[3], metric))


# ---- bad input ----------------------------------------------------------------------------------

X, L = make_case(6, 4, num_ids=2, seed=12)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(embeddings=torch.zeros(6)), ValueError, "embeddings"),
    (dict(embeddings=torch.zeros(6, 0)), ValueError, "D = 0"),
    (dict(embeddings=torch.full((6, 4), float("nan"))), ValueError, "embeddings contains NaN"),
    (dict(embeddings=torch.zeros(6, 4, dtype=torch.complex64)), TypeError, "embeddings"),
    (dict(labels=torch.zeros(5, dtype=torch.long)), ValueError, "labels has length 5"),
    (dict(labels=torch.zeros(6)), TypeError, "labels must hold integers"),
    (dict(labels=torch.zeros(6, 1, dtype=torch.long)), ValueError, "labels"),
    (dict(metric="manhattan"), ValueError, "metric"),
    (dict(ref_embeddings=torch.zeros(3, 4)), ValueError, "ref_labels"),
    (dict(ref_embeddings=torch.zeros(3, 5), ref_labels=torch.zeros(3, dtype=torch.long)), ValueError,
     "ref_embeddings has feature dimension"),
    (dict(ref_embeddings=torch.zeros(3, 4), ref_labels=torch.zeros(2, dtype=torch.long)), ValueError,
     "ref_labels has length"),
    (dict(ref_embeddings=torch.full((3, 4), float("inf")), ref_labels=torch.zeros(3, dtype=torch.long)),
     ValueError, "ref_embeddings contains NaN or inf"),
    (dict(self_offset=1.5), TypeError, "self_offset"),
])
def test_bad_input_names_the_argument(kwargs, exc, match):
    args = dict(embeddings=X, labels=L)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        batch_hard_mining(**args)


def test_backend_choice(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        batch_hard_mining(X, L, backend="fortran")
    with pytest.raises(ValueError, match="cuda"):
        batch_hard_mining(X, L, backend="cuda")
    monkeypatch.setenv("REIDKERN_BACKEND", "reference")
    check_mining(batch_hard_mining(X, L), X, L, "euclidean")


def test_reference_serves_with_one_warning_when_library_missing(monkeypatch):
    from reidkern import _library
    monkeypatch.setattr(_library, "_C", None)
    monkeypatch.setattr(_library, "_warned", set())
    with pytest.warns(RuntimeWarning, match="reference"):
        out = batch_hard_mining(X, L)
    check_mining(out, X, L, "euclidean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch_hard_mining(X, L)
