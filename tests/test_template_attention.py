"""template_attention: every backend against the float64 eager reference, values and gradients."""
import pytest
import torch

import reidkern
from reidkern.ops import TemplateAttentionResult, template_attention
from reidkern.ops.reference.template_attention import template_attention_reference
from reidkern.testing import assert_close, device_backend_cases, opcheck

CASES = device_backend_cases()
COMPILED = device_backend_cases(("cpp", "cuda"))
NATIVE = reidkern.build_info()["native"]


def make(B, H, Nq, L, D, q_batch1=False, dtype=torch.float32, seed=0, transposed_kv=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1 if q_batch1 else B, H, Nq, D, generator=g, dtype=torch.float64)
    if transposed_kv:  # [B, L, H, D] projections viewed as [B, H, L, D]: non-contiguous
        k = torch.randn(B, L, H, D, generator=g, dtype=torch.float64).transpose(1, 2)
        v = torch.randn(B, L, H, D, generator=g, dtype=torch.float64).transpose(1, 2)
    else:
        k = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
        v = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)]


def make_mask(B, L, seed=0, full_row=None, device="cpu"):
    g = torch.Generator().manual_seed(seed + 7)
    mask = torch.rand(B, L, generator=g) < 0.35
    if full_row is not None:
        mask[full_row] = True
    return mask.to(device)


def check(backend, q, k, v, mask=None, scale=None):
    out, w, mean = template_attention(q, k, v, mask, scale=scale, return_weights=True,
                                      return_mean_logit=True, backend=backend)
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    B = max(q.shape[0], k.shape[0], 1 if mask is None else mask.shape[0])
    ro, rw, rm = template_attention_reference(q64, k64.expand(B, -1, -1, -1), v64.expand(B, -1, -1, -1),
                                              None if mask is None else mask.cpu(), scale)
    dt = q.dtype
    assert out.dtype == dt and out.shape == ro.shape
    assert_close(out, ro, dtype=dt)
    assert_close(w, rw, dtype=dt)
    assert_close(mean, rm, dtype=dt)
    g = torch.Generator().manual_seed(5)
    go, gw, gm = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (ro, rw, rm))
    go_, gw_, gm_ = (t.to(dt).to(q.device) for t in (go, gw, gm))
    grads = torch.autograd.grad((out * go_).sum() + (w * gw_).sum() + (mean * gm_).sum(), (q, k, v))
    ref = torch.autograd.grad((ro * go).sum() + (rw * gw).sum() + (rm * gm).sum(), (q64, k64, v64))
    rtol = 1e-10 if dt == torch.float64 else 2e-5
    atol = 1e-11 if dt == torch.float64 else 2e-5
    for name, a, b in zip("qkv", grads, ref):
        assert a.shape == b.shape, name
        assert_close(a, b, rtol=rtol, atol=atol, msg=f"grad {name}")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [
    (2, 3, 6, 37, 19, True),    # odd sizes, learned queries broadcast over the batch
    (3, 2, 1, 1, 1, False),     # single key, single query, D = 1
    (2, 1, 5, 70, 33, False),   # several key tiles
])
def test_matches_reference(device, backend, dtype, shape):
    *dims, q1 = shape
    q, k, v = make(*dims, q_batch1=q1, dtype=dtype, seed=sum(dims), device=device)
    check(backend, q, k, v)


@pytest.mark.parametrize("device,backend", CASES)
def test_masks_and_fully_padded_rows(device, backend):
    q, k, v = make(3, 2, 4, 29, 16, q_batch1=True, dtype=torch.float64, seed=3, device=device)
    mask = make_mask(3, 29, full_row=1, device=device)
    check(backend, q, k, v, mask)
    out, w, _ = template_attention(q, k, v, mask, return_weights=True, backend=backend)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[1] == 0).all() and (w[1] == 0).all()
    assert (w.masked_select(mask[:, None, None, :].expand_as(w)) == 0).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert (dk[1] == 0).all() and (dv[1] == 0).all()
    assert torch.isfinite(dq).all()


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_keys_shared_by_the_batch(device, backend, with_mask):
    # LGUR's dictionary: k, v [1, H, L, D] seen by every sample; their gradients sum over the batch
    q, _, _ = make(3, 2, 5, 23, 12, dtype=torch.float64, seed=21, device=device)
    _, k, v = make(1, 2, 5, 23, 12, dtype=torch.float64, seed=22, device=device)
    mask = make_mask(3, 23, full_row=2, device=device) if with_mask else None
    check(backend, q, k, v, mask)
    out = template_attention(q, k, v, mask, backend=backend).out
    assert out.shape == (3, 2, 5, 12)
    dk, dv = torch.autograd.grad(out.sum(), (k, v))
    assert dk.shape == k.shape and dv.shape == v.shape
    # batch-1 queries and keys with a per-sample mask: B comes from the mask
    q1 = q[:1].detach().requires_grad_()
    check(backend, q1, k, v, make_mask(3, 23, seed=4, device=device))


@pytest.mark.parametrize("device,backend", CASES)
def test_non_contiguous_and_scale(device, backend):
    q, k, v = make(2, 3, 3, 21, 8, dtype=torch.float64, seed=11, transposed_kv=True, device=device)
    assert not k.is_contiguous()
    check(backend, q, k, v, scale=1.0)  # DPTI Eq. 5-6: unscaled logits
    # gradients come back in the inputs' layout
    dk = torch.autograd.grad(template_attention(q, k, v, backend=backend).out.sum(), k)[0]
    assert dk.shape == k.shape


@pytest.mark.parametrize("device,backend", CASES)
def test_large_head_dim_and_many_queries(device, backend):
    if backend == "triton" and device == "cpu":
        pytest.skip("covered by the small Triton shapes: the interpreter is slow")
    q, k, v = make(2, 2, 32, 100, 512, q_batch1=True, seed=2, device=device)
    check(backend, q, k, v, make_mask(2, 100, device=device))


@pytest.mark.parametrize("device,backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["transposed_kv", "shared_kv", "padded", "many_queries",
                                  "few_queries_wide", "few_queries_blas", "mid_queries_small"])
def test_gemm_sized_heads(device, backend, dtype, case):
    # Each CPU kernel path: BLAS GEMMs (Nq > 8 or D > 128, Nq * L * D >= 2^16), the few-query
    # kernels (Nq <= 8) with several column strips and key tiles plus tails, the small-head
    # dot-product kernels (Nq > 8, little work).
    if case == "few_queries_wide":
        q, k, v = make(3, 2, 6, 67, 100, dtype=dtype, seed=25, transposed_kv=True, device=device)
        check(backend, q, k, v, make_mask(3, 67, full_row=0, device=device))
    elif case == "few_queries_blas":
        q, k, v = make(2, 1, 8, 40, 260, q_batch1=True, dtype=dtype, seed=26, device=device)
        check(backend, q, k, v, make_mask(2, 40, device=device))
    elif case == "mid_queries_small":
        q, k, v = make(3, 2, 12, 23, 10, q_batch1=True, dtype=dtype, seed=27, device=device)
        check(backend, q, k, v, make_mask(3, 23, full_row=1, device=device))
    elif case == "transposed_kv":
        q, k, v = make(2, 2, 9, 67, 120, dtype=dtype, seed=21, transposed_kv=True, device=device)
        check(backend, q, k, v)
    elif case == "shared_kv":  # dictionary atoms: one [1, H, L, D] set expanded over the batch
        q, k1, v1 = make(3, 2, 24, 53, 64, dtype=dtype, seed=22, device=device)
        k1, v1 = (t.detach()[:1].clone().requires_grad_() for t in (k1, v1))
        out = template_attention(q, k1.expand(3, -1, -1, -1), v1.expand(3, -1, -1, -1), backend=backend).out
        q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k1, v1))
        ref = template_attention_reference(q64, k64.expand(3, -1, -1, -1), v64.expand(3, -1, -1, -1))[0]
        assert_close(out, ref, dtype=dtype)
        go = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad(out, (q, k1, v1), go.to(dtype).to(device))
        refg = torch.autograd.grad(ref, (q64, k64, v64), go)
        tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=5e-5)
        for name, a, b in zip("qkv", grads, refg):
            assert_close(a, b, msg=f"grad {name}", **tol)
    elif case == "padded":
        q, k, v = make(3, 1, 11, 97, 101, q_batch1=True, dtype=dtype, seed=23, device=device)
        check(backend, q, k, v, make_mask(3, 97, full_row=2, device=device), scale=0.3)
    else:
        q, k, v = make(2, 1, 40, 45, 37, dtype=dtype, seed=24, device=device)
        check(backend, q, k, v, make_mask(2, 45, device=device))


@pytest.mark.parametrize("device,backend", COMPILED)
def test_gradcheck(device, backend):
    q, k, v = make(2, 2, 3, 7, 5, q_batch1=True, dtype=torch.float64, seed=4, device=device)
    mask = make_mask(2, 7, device=device)
    fn = lambda q, k, v: template_attention(q, k, v, mask, return_weights=True, return_mean_logit=True,
                                            backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_return_forms_and_half_precision():
    q, k, v = make(2, 2, 3, 9, 8)
    # one result type whatever the flags; fields not asked for are None
    res = template_attention(q, k, v)
    assert isinstance(res, TemplateAttentionResult) and res.weights is None and res.mean_logit is None
    out2, w2, mean = template_attention(q, k, v, return_mean_logit=True)
    assert w2 is None and mean.shape == (2, 2, 3)
    assert_close(res.out, out2)
    both = template_attention(q, k, v, return_weights=True, return_mean_logit=True)
    assert both.weights.shape == (2, 2, 3, 9) and both.mean_logit.shape == (2, 2, 3)
    assert template_attention(q, k, v, return_weights=True).mean_logit is None
    qh, kh, vh = (t.detach().bfloat16() for t in (q, k, v))
    oh = template_attention(qh, kh, vh).out
    assert oh.dtype == torch.bfloat16
    assert_close(oh, template_attention_reference(q.double(), k.double(), v.double())[0], dtype=torch.bfloat16)


@pytest.mark.parametrize("device,backend", COMPILED)
def test_opcheck(device, backend):
    q, k, v = make(2, 2, 3, 9, 8, q_batch1=True, device=device)
    mask = make_mask(2, 9, device=device)
    opcheck(torch.ops.reidkern.template_attention_fwd.default, (q, k, v, mask, 0.3, True))
    opcheck(torch.ops.reidkern.template_attention_fwd.default, (q, k, v, None, 0.3, False))
    q2, k2, v2 = make(2, 2, 3, 9, 8, device=device)
    opcheck(torch.ops.reidkern.template_attention_fwd.default, (q2, k2, v2, None, 1.0, True))
    out, lse, mean, w = torch.ops.reidkern.template_attention_fwd(q2, k2, v2, mask, 0.3, True)
    args = (torch.randn_like(out), torch.randn_like(w), torch.randn_like(mean),
            q2.detach(), k2.detach(), v2.detach(), mask, lse.detach(), 0.3)
    opcheck(torch.ops.reidkern.template_attention_bwd.default, args)


@pytest.mark.parametrize("device,backend", COMPILED)
@pytest.mark.parametrize("what", ["v_shape", "mask_shape", "mask_dtype"])
def test_kernel_entry_checks_v_and_mask(device, backend, what):
    # The compiled kernels check their own arguments (csrc/template_attention.h, shared by CPU and
    # CUDA), so a caller of torch.ops.reidkern.* with validate=False-style inputs gets an error, not
    # an out-of-bounds read.
    q, k, v = make(2, 2, 3, 9, 8, device=device)
    mask = make_mask(2, 9, device=device)
    if what == "v_shape":
        v = v[:, :, :5]
    elif what == "mask_shape":
        mask = mask[:, :5].contiguous()
    else:
        mask = mask.to(torch.uint8)
    with pytest.raises(RuntimeError, match="v must have k's shape|key_padding_mask"):
        torch.ops.reidkern.template_attention_fwd(q, k, v, mask, 0.3, False)


@pytest.mark.parametrize("device,backend", COMPILED)
@pytest.mark.parametrize("what", ["grad_out", "lse", "grad_weights", "grad_mean"])
def test_backward_entry_checks_its_gradients(device, backend, what):
    # The backward's own arguments, checked by both kernels (check_template_attention_grads).
    q, k, v = make(2, 2, 3, 9, 8, device=device)
    out, lse, mean, w = torch.ops.reidkern.template_attention_fwd(q, k, v, None, 0.3, True)
    go, gw, gm = torch.randn_like(out), torch.randn_like(w), torch.randn_like(mean)
    if what == "grad_out":
        go = go[..., :5].contiguous()
    elif what == "lse":
        lse = lse[:, :1].contiguous()
    elif what == "grad_weights":
        gw = gw[..., :5].contiguous()
    else:
        gm = gm.double()
    with pytest.raises(RuntimeError, match=f"{what.replace('grad_mean', 'grad_mean_logit')} must"):
        torch.ops.reidkern.template_attention_bwd(go, gw, gm, q.detach(), k.detach(), v.detach(),
                                                  None, lse.detach(), 0.3)


@pytest.mark.parametrize("device,backend", device_backend_cases(("triton",)))
def test_opcheck_triton(device, backend):
    from reidkern.ops.template_attention import _triton
    _triton()  # the Triton op, its autograd registered (reidkern/ops/_autograd.py)
    q, k, v = make(2, 1, 2, 5, 4, q_batch1=True, device=device)
    # Under TRITON_INTERPRET the kernel cannot run on fake tensors (the interpreter reads their
    # storage), so on CPU the fake-tensor checks are left to CUDA runs.
    utils = None if device == "cuda" else ("test_schema", "test_autograd_registration")
    opcheck(torch.ops.reidkern.template_attention_triton_fwd.default,
            (q, k, v, make_mask(2, 5, device=device), 0.5, True),
            **({} if utils is None else {"test_utils": utils}))


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_torch_compile_fullgraph():
    q, k, v = make(2, 2, 3, 9, 8, q_batch1=True)
    mask = make_mask(2, 9)
    fn = torch.compile(lambda q, k, v: template_attention(q, k, v, mask, return_mean_logit=True),
                       fullgraph=True, backend="aot_eager")
    out, w, mean = fn(q, k, v)
    assert w is None
    ro, _, rm = template_attention_reference(q, k, v, mask)
    assert_close(out, ro)
    (out.sum() + mean.sum()).backward()
    assert q.grad is not None and q.grad.shape == q.shape


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate,exc,match", [
    (lambda q, k, v, m: (q[0], k, v, m), ValueError, "q must be 4-D"),
    (lambda q, k, v, m: (q, k[0], v, m), ValueError, "k must be 4-D"),
    (lambda q, k, v, m: (q, k, v[:, :, :-1], m), ValueError, "v must have k's shape"),
    (lambda q, k, v, m: (q[..., :-1], k, v, m), ValueError, "q must be"),
    (lambda q, k, v, m: (q.expand(3, -1, -1, -1)[:2].repeat(2, 1, 1, 1)[:3], k, v, m), ValueError, "q must be"),
    (lambda q, k, v, m: (q.double(), k, v, m), TypeError, "same dtype"),
    (lambda q, k, v, m: (q.long(), k, v, m), TypeError, "q must be a floating"),
    (lambda q, k, v, m: (q.numpy(), k, v, m), TypeError, "q must be a torch.Tensor"),
    (lambda q, k, v, m: (q, k, v, m[:, :-1]), ValueError, "key_padding_mask must be"),
    (lambda q, k, v, m: (q, k, v, m.float()), TypeError, "key_padding_mask must have dtype"),
    (lambda q, k, v, m: (q, k, v, m.to("meta")), ValueError, "key_padding_mask must be on"),
    (lambda q, k, v, m: (q, k.to("meta"), v, m), ValueError, "same device"),
])
def test_bad_input_names_the_argument(mutate, exc, match):
    q, k, v = (t.detach() for t in make(2, 2, 3, 9, 8, q_batch1=True))
    args = mutate(q, k, v, make_mask(2, 9))
    with pytest.raises(exc, match=match):
        template_attention(*args)


def test_bad_scale_and_backend():
    q, k, v = make(2, 2, 3, 9, 8)
    with pytest.raises(TypeError, match="scale"):
        template_attention(q, k, v, scale="big")
    with pytest.raises(ValueError, match="backend"):
        template_attention(q, k, v, backend="cuda")
