"""topk_token_aggregate: every backend against the float64 eager reference, values and gradients."""
import math

import pytest
import torch

import reidkern
from reidkern.ops import topk_token_aggregate
from reidkern.ops.reference.topk_token_aggregate import topk_token_aggregate_reference
from reidkern.testing import assert_close, device_backend_cases, opcheck

CASES = device_backend_cases()
NATIVE = reidkern.build_info()["native"]


def make(B, L, Np, C, dtype=torch.float32, seed=0, ties=False, softmax=True):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, L, Np, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: many exact ties, broken by the lowest token index
        scores = torch.randint(0, 3, (B, L, Np), generator=g).double()
    elif softmax:
        scores = scores.softmax(dim=-1)
    tokens = torch.randn(B, L, C, generator=g, dtype=torch.float64)
    return scores.to(dtype).requires_grad_(), tokens.to(dtype).requires_grad_()


def check(device, backend, scores, tokens, k):
    """Values, indices and gradients of ``backend`` on ``device`` against the float64 reference
    (``scores`` and ``tokens`` are CPU leaves; the op runs on copies on ``device``)."""
    if device != "cpu":
        scores, tokens = (t.detach().to(device).requires_grad_() for t in (scores, tokens))
    parts, idx, sel = topk_token_aggregate(scores, tokens, k=k, backend=backend)
    s64, t64 = (t.detach().cpu().double().requires_grad_() for t in (scores, tokens))
    rp, ri, rs = topk_token_aggregate_reference(s64, t64, k)
    dt = scores.dtype
    assert parts.dtype == dt and idx.dtype == torch.int64 and idx.shape == ri.shape
    assert torch.equal(idx.cpu(), ri)
    assert_close(parts, rp, dtype=dt)
    assert_close(sel, rs, dtype=dt)
    g = torch.Generator().manual_seed(3)
    gp, gs = torch.randn(rp.shape, generator=g, dtype=torch.float64), torch.randn(rs.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((parts * gp.to(dt).to(device)).sum() + (sel * gs.to(dt).to(device)).sum(),
                                (scores, tokens))
    ref = torch.autograd.grad((rp * gp).sum() + (rs * gs).sum(), (s64, t64))
    rtol = 1e-10 if dt == torch.float64 else 2e-5
    atol = 1e-11 if dt == torch.float64 else 2e-5
    for name, a, b in zip(("scores", "tokens"), grads, ref):
        assert_close(a, b, rtol=rtol, atol=atol, msg=f"grad {name}")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,k", [((2, 37, 5, 23), 7), ((3, 1, 1, 1), 1), ((2, 19, 6, 130), 19),
                                     ((1, 50, 3, 9), 1)])
def test_matches_reference(device, backend, dtype, shape, k):
    check(device, backend, *make(*shape, dtype=dtype, seed=k), k)


@pytest.mark.parametrize("device,backend", CASES)
def test_ties_take_the_lowest_index(device, backend):
    scores, tokens = make(2, 41, 4, 11, dtype=torch.float64, ties=True, seed=1)
    check(device, backend, scores, tokens, 9)


@pytest.mark.parametrize("device,backend", CASES)
def test_non_contiguous_inputs_and_zero_scores(device, backend):
    scores, tokens = make(2, 33, 5, 17, dtype=torch.float64, seed=2)
    s_nc = scores.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    t_nc = torch.randn(2, 17, 33, dtype=torch.float64).transpose(1, 2).requires_grad_()
    assert not s_nc.is_contiguous() and not t_nc.is_contiguous()
    check(device, backend, s_nc, t_nc, 6)
    if device != "cpu":  # the same strides on the device
        s_nc = scores.detach().to(device).transpose(1, 2).contiguous().transpose(1, 2)
        t_nc = torch.randn(2, 17, 33, dtype=torch.float64, device=device).transpose(1, 2)
        assert not s_nc.is_contiguous() and not t_nc.is_contiguous()
        ref = topk_token_aggregate_reference(s_nc.cpu(), t_nc.cpu(), 6)[0]
        assert_close(topk_token_aggregate(s_nc, t_nc, k=6, backend=backend)[0], ref)
    zero = torch.zeros(1, 8, 2, dtype=torch.float64, device=device, requires_grad=True)
    parts, _, _ = topk_token_aggregate(zero, torch.randn(1, 8, 3, dtype=torch.float64, device=device), k=3,
                                       backend=backend)
    assert (parts == 0).all()


@pytest.mark.parametrize("device,backend", device_backend_cases(("cpp", "cuda")))
def test_gradcheck(device, backend):
    scores, tokens = (t.detach().to(device).requires_grad_() for t in make(2, 9, 3, 4, dtype=torch.float64, seed=4))
    fn = lambda s, t: tuple(o for o in topk_token_aggregate(s, t, k=4, backend=backend) if o.is_floating_point())
    assert torch.autograd.gradcheck(fn, (scores, tokens))


def test_alpha_gives_cal_k():
    scores, tokens = make(2, 162, 6, 8)
    _, idx, _ = topk_token_aggregate(scores, tokens, alpha=0.5)
    assert idx.shape[-1] == math.ceil(0.5 * 162 / 6) == 14


@pytest.mark.parametrize("device,backend", device_backend_cases(("cpp", "cuda")))
def test_opcheck(device, backend):
    scores, tokens = (t.detach().to(device).requires_grad_() for t in make(2, 13, 3, 7))
    opcheck(torch.ops.reidkern.topk_token_aggregate_fwd.default, (scores, tokens, 4))
    parts, idx, sel = torch.ops.reidkern.topk_token_aggregate_fwd(scores, tokens, 4)
    opcheck(torch.ops.reidkern.topk_token_aggregate_bwd.default,
            (torch.randn_like(parts), torch.randn_like(sel), scores.detach(), tokens.detach(), idx))
    opcheck(torch.ops.reidkern.topk_token_aggregate_bwd.default,
            (torch.randn_like(parts), None, scores.detach(), tokens.detach(), idx))


@pytest.mark.parametrize("device,backend", device_backend_cases(("triton",)))
def test_opcheck_triton(device, backend):
    from reidkern.ops.topk_token_aggregate import _triton
    _triton()  # the Triton op, its autograd registered (reidkern/ops/_autograd.py)
    scores, tokens = (t.detach().to(device).requires_grad_() for t in make(2, 9, 3, 5))
    # Under TRITON_INTERPRET the kernel cannot run on fake tensors: fake checks run on CUDA only.
    utils = None if device == "cuda" else ("test_schema", "test_autograd_registration")
    opcheck(torch.ops.reidkern.topk_token_aggregate_triton_fwd.default, (scores, tokens, 3),
            **({} if utils is None else {"test_utils": utils}))


@pytest.mark.parametrize("device,backend", CASES)
def test_nan_scores_rank_first_when_unchecked(device, backend):
    """Compiled graphs skip the (data-dependent) NaN check, as validate=False does: every kernel
    must still keep in-range tokens, NaN ranked above every number and ties (NaN ones too) to the
    lowest index, the order of torch.sort(descending=True, stable=True)."""
    nan, inf = math.nan, math.inf
    scores = torch.tensor([[[0.1, nan, nan], [nan, 0.5, nan], [0.3, 0.5, nan], [nan, -inf, nan],
                            [0.7, 0.2, nan]]])  # [1, L=5, Np=3]: no, some and only NaN columns
    tokens = torch.arange(15.0).reshape(1, 5, 3)
    k = 4
    _, idx, sel = topk_token_aggregate(scores.to(device), tokens.to(device), k=k, backend=backend,
                                       validate=False)
    expected = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k].transpose(1, 2)
    assert torch.equal(idx.cpu(), expected)
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, expected.transpose(1, 2), True)
    assert torch.allclose(sel.cpu(), torch.where(kept, scores, 0.0), equal_nan=True)


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_torch_compile_fullgraph():
    scores, tokens = make(2, 13, 3, 7)
    fn = torch.compile(lambda s, t: topk_token_aggregate(s, t, alpha=0.6), fullgraph=True, backend="aot_eager")
    parts, idx, sel = fn(scores, tokens)
    rp, ri, _ = topk_token_aggregate_reference(scores, tokens, math.ceil(0.6 * 13 / 3))
    assert torch.equal(idx, ri)
    assert_close(parts, rp)
    (parts.sum() + sel.sum()).backward()
    assert scores.grad is not None


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(scores=torch.rand(2, 5)), ValueError, "scores must be 3-D"),
    (dict(tokens=torch.rand(2, 5)), ValueError, "tokens must be 3-D"),
    (dict(tokens=torch.rand(2, 4, 3)), ValueError, "tokens must be"),
    (dict(tokens=torch.rand(2, 5, 3, dtype=torch.float64)), TypeError, "same dtype"),
    (dict(scores=torch.ones(2, 5, 3, dtype=torch.long)), TypeError, "scores must be a floating"),
    (dict(k=6), ValueError, "k must be in"),
    (dict(k=0), ValueError, "k must be in"),
    (dict(k=2.5), TypeError, "k must be an int"),
    (dict(k=None, alpha=4.0), ValueError, "alpha"),
    (dict(k=None, alpha=-1.0), ValueError, "alpha"),
    (dict(k=2, alpha=0.5), ValueError, "exactly one"),
    (dict(tokens=torch.rand(2, 5, 3, device="meta")), ValueError, "same device"),
])
def test_bad_input_names_the_argument(kwargs, exc, match):
    args = dict(scores=torch.rand(2, 5, 3), tokens=torch.rand(2, 5, 3), k=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        topk_token_aggregate(**args)
