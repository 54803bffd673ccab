"""reidkern.nn attention layers: fused ops vs the float64 eager reference, torch.compile, names."""
import copy

import pytest
import torch

import reidkern
from reidkern.nn import (DictionaryCrossAttention, PartTemplateInit, PrototypeUnification,
                         TargetAwareAttention, TemplateCrossAttention, TopKTokenAggregation)
from reidkern.nn.attention import reference as attn_ref
from reidkern.nn.attention import folded_norm
from reidkern.nn.attention.folded_norm import folded_part_attention
from reidkern.testing import assert_close, device_backend_cases

NATIVE = reidkern.build_info()["native"]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def cases():
    g = _g(0)
    B = 2
    tok = lambda L, C: torch.randn(B, L, C, generator=g)
    mask = torch.rand(B, 11, generator=g) < 0.3
    return [
        ("cross", lambda: TemplateCrossAttention(32, num_heads=4, ffn_dim=48),
         lambda: (torch.randn(5, 32, generator=g), tok(11, 32)), dict(key_padding_mask=mask)),
        ("cross_batched_q", lambda: TemplateCrossAttention(16, num_heads=2, head_dim=24, context_dim=12,
                                                           shared_norm=False, qkv_bias=True),
         lambda: (tok(3, 16), tok(11, 12)), {}),
        ("dpti", lambda: PartTemplateInit(24, num_parts=4), lambda: (tok(13, 24),), {}),
        ("dga", lambda: DictionaryCrossAttention(dim=24, num_atoms=17, num_heads=2, head_dim=8, ffn_dim=32),
         lambda: (tok(9, 24),), dict(foreground=True)),
        ("dga_context", lambda: DictionaryCrossAttention(dim=24, num_atoms=17, num_heads=2, head_dim=8, ffn_dim=32),
         lambda: (tok(9, 24), ), dict(context=tok(11, 24), context_padding_mask=mask)),
        ("pgu", lambda: PrototypeUnification(dim=24, num_prototypes=3, num_layers=2, num_heads=2,
                                             head_dim=40, ffn_dim=32, out_dim=20),
         lambda: (tok(11, 24),), dict(key_padding_mask=mask)),
        ("drm", lambda: TopKTokenAggregation(in_channels=16, num_parts=3, alpha=0.7, reduced_channels=8),
         lambda: (torch.randn(B, 16, 6, 3, generator=g),), {}),
        ("tsaa", lambda: TargetAwareAttention(dim=16, attn_dim=8, hidden_dim=12),
         lambda: (tok(11, 16), tok(3, 16)), dict(key_padding_mask=mask)),
    ]


CASES = cases()


def _run(module, inputs, kwargs):
    out = module(*inputs, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def _set_backend(module, backend):
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend


# The layers on the CPU with their default backend, and on a GPU with each GPU backend (collected
# everywhere, skipped without a GPU; tools/gpu_check.sh runs them): the layer-level CUDA paths (the
# fold choice, masks, layouts) against the same float64 CPU reference.
LAYER_DEVICES = [pytest.param("cpu", None, id="cpu-default")] + device_backend_cases(
    supported=("cuda", "triton"), devices=("cuda",))


@pytest.mark.parametrize("device,backend", LAYER_DEVICES)
@pytest.mark.parametrize("name,make,inputs,kwargs", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_float64_reference(name, make, inputs, kwargs, device, backend, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions on a GPU
    torch.manual_seed(1)
    layer = make()
    args = inputs()
    ref = copy.deepcopy(layer).double()
    _set_backend(ref, "reference")
    args64 = [a.double().requires_grad_() for a in args]
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kwargs.items()}
    layer.to(device)
    if backend is not None:
        _set_backend(layer, backend)
    args32 = [a.detach().to(device).requires_grad_() for a in args]
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    outs = _run(layer, args32, kwargs)
    refs = _run(ref, args64, kw64)
    g = _g(9)
    weights = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in refs]
    for o, r in zip(outs, refs):
        assert_close(o, r, rtol=2e-4, atol=2e-5)
    loss = sum((o * w.to(o.device, torch.float32)).sum() for o, w in zip(outs, weights) if o.is_floating_point())
    loss_ref = sum((r * w).sum() for r, w in zip(refs, weights) if r.is_floating_point())
    grads = torch.autograd.grad(loss, args32 + list(layer.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad(loss_ref, args64 + list(ref.parameters()), allow_unused=True)
    for a, b in zip(grads, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=5e-4, atol=5e-5)


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
@pytest.mark.parametrize("name,make,inputs,kwargs", CASES, ids=[c[0] for c in CASES])
def test_layer_compiles_fullgraph(name, make, inputs, kwargs):
    torch.manual_seed(2)
    layer = make()
    args = inputs()
    expected = _run(layer, args, kwargs)
    torch._dynamo.reset()  # fresh cache: the layers share forward code objects
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = _run(compiled, args, kwargs)
    for o, r in zip(got, expected):
        assert_close(o, r)
    sum(o.float().sum() for o in got if o.is_floating_point()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def assert_folded_equals_projected(layer, make_leaves, call, loss_seed):
    """Runs `layer` folded and projected (``fold_projections`` True then False) on fresh leaves
    from ``make_leaves()`` through ``call(*leaves) -> (out, weights)``, and checks the outputs,
    weights and every gradient (leaves and parameters) equal, float64."""
    results = []
    for fold in (True, False):
        layer.fold_projections = fold
        leaves = [t.clone().requires_grad_() for t in make_leaves()]
        out, w = call(*leaves)
        gg = _g(loss_seed)
        loss = (out * torch.randn(out.shape, generator=gg, dtype=torch.float64)).sum() + (w * w).sum()
        wrt = leaves + list(layer.parameters())
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        # the key bias shifts every logit of a row equally: its gradient is 0 (unused when folded)
        grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(wrt, grads)]
        results.append([out, w] + grads)
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("backend", [None, "reference"])
@pytest.mark.parametrize("q_batch,c_batch", [(1, 3), (3, 3), (3, 1)])
def test_folded_projections_equal_projected(backend, q_batch, c_batch):
    # The folded path (k/v projections moved onto the queries) is the same function as the
    # projected one, biases and fully padded rows included: float64, values and all gradients.
    torch.manual_seed(4)
    layer = TemplateCrossAttention(12, num_heads=3, head_dim=7, qkv_bias=True, ffn_dim=10,
                                   backend=backend).double()
    g = _g(4)
    query = torch.randn(q_batch, 4, 12, generator=g, dtype=torch.float64)
    context = torch.randn(c_batch, 9, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 9, generator=g) < 0.3
    mask[1] = True
    assert_folded_equals_projected(
        layer, lambda: (query, context),
        lambda q, c: layer(q, c, key_padding_mask=mask, return_weights=True), loss_seed=5)


@pytest.mark.parametrize("layout", ["channels_first", "tokens_first"])
@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("middle", ["native", 1, 4000, folded_norm._CHUNK_BYTES])  # kernel; 1, 2, 3 samples
def test_folded_norm_path_equals_projected(layout, qkv_bias, middle, monkeypatch):
    # Per-sample queries over per-sample tokens without padding (DPTI's part attention) take the
    # CPU path with the context's LayerNorm folded in (nn/attention/folded_norm.py): the same
    # function as the projected path, float64, values, weights and every gradient, whether the
    # context is a transposed [B, C, L] map (answered in that layout) or contiguous [B, L, C],
    # and whether the middle runs in the compiled kernel or in PyTorch one sample, two samples or
    # all at a time.
    from reidkern.nn.attention import cross
    if middle == "native" and not NATIVE:
        pytest.skip("compiled library not built")
    calls = []
    if middle != "native":
        monkeypatch.setattr(folded_norm, "_CHUNK_BYTES", middle)
    monkeypatch.setattr(cross, "folded_part_attention",
                        lambda *a: calls.append(1) or folded_part_attention(*a, native=middle == "native"))
    torch.manual_seed(9)
    layer = TemplateCrossAttention(12, num_heads=3, head_dim=5, context_dim=20, shared_norm=False,
                                   qkv_bias=qkv_bias, ffn_dim=10).double()
    g = _g(10)
    with torch.no_grad():  # a non-trivial affine norm
        layer.context_norm.weight.copy_(torch.randn(20, generator=g, dtype=torch.float64))
        layer.context_norm.bias.copy_(torch.randn(20, generator=g, dtype=torch.float64))
    query = torch.randn(3, 4, 12, generator=g, dtype=torch.float64)
    tokens = 2 + 3 * torch.randn(3, 20, 9, generator=g, dtype=torch.float64)  # [B, C, L], offset
    channels_first = layout == "channels_first"
    assert_folded_equals_projected(
        layer, lambda: (query, tokens if channels_first else tokens.transpose(1, 2).contiguous()),
        lambda q, t: layer(q, t.transpose(1, 2) if channels_first else t, return_weights=True),
        loss_seed=11)
    assert len(calls) == 1  # the folded call took the folded-norm path, the projected one did not


@pytest.mark.parametrize("native", [False, True])
def test_folded_part_attention_gradcheck(native, monkeypatch):
    if native and not NATIVE:
        pytest.skip("compiled library not built")
    monkeypatch.setattr(folded_norm, "_CHUNK_BYTES", 2 * (2 * 2) * 7 * 8)  # chunks of 2 + 1 samples
    g = _g(12)
    d = dict(generator=g, dtype=torch.float64)
    q = torch.randn(3, 2, 2, 3, **d).requires_grad_()  # [B, Nq, H, hd]
    w_k, w_v = (torch.randn(2, 3, 7, **d).requires_grad_() for _ in range(2))
    f = lambda *a: folded_part_attention(*a, 1e-5, 0.7, native=native)  # noqa: E731
    for x in (torch.randn(3, 7, 4, **d).transpose(1, 2), torch.randn(3, 4, 7, **d),
              torch.randn(3, 8, 14, **d)[:, ::2, ::2]):  # map, rows, neither stride 1
        x = x.detach().requires_grad_()
        assert torch.autograd.gradcheck(f, (q, w_k, w_v, x))
        assert torch.autograd.gradcheck(lambda *a: f(*a)[0], (q, w_k, w_v, x))  # no gradient of p
    with pytest.raises(RuntimeError):  # the backward is once-differentiable, never silently wrong
        out, _ = f(q, w_k, w_v, x)
        (gq,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        gq.sum().backward()


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,Nq,H,hd,L,C", [(5, 3, 2, 5, 13, 37), (2, 1, 1, 4, 1, 9), (0, 2, 2, 3, 6, 8),
                                          (3, 6, 8, 4, 40, 70)])
def test_folded_part_attention_kernel_equals_pytorch_middle(dtype, B, Nq, H, hd, L, C):
    # The compiled per-sample kernel against the PyTorch middle: odd sizes (vector tails), one
    # token, an empty batch, both layouts of x, with and without a gradient of p; float64 to 1e-12,
    # float32 to float tolerance.
    g = _g(13)
    d = dict(generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    q0 = torch.randn(B, Nq, H, hd, **d)
    wk0, wv0 = (torch.randn(H, hd, C, **d) * 0.3 for _ in range(2))
    xm = 1 + 2 * torch.randn(B, C, L, **d)
    go, gp = torch.randn(B, Nq, H, hd, **d), torch.randn(B, Nq * H, L, **d)
    for x0 in (xm.transpose(1, 2), xm.transpose(1, 2).contiguous()):
        for with_p in (False, True):
            results = []
            for native in (True, False):
                leaves = [t.to(dtype).requires_grad_() for t in (q0, wk0, wv0, x0)]
                out, p = folded_part_attention(*leaves, 1e-5, hd ** -0.5, native=native)
                loss = (out * go.to(dtype)).sum() + ((p * gp.to(dtype)).sum() if with_p else 0)
                grads = torch.autograd.grad(loss, leaves)
                results.append([out, p] + list(grads))
                if B:  # the gradient of x comes back in x's layout
                    assert grads[3].stride() == leaves[3].stride() or L == 1
            for a, b in zip(*results):
                assert_close(a, b, **tol)


def _standard_cases():
    g = _g(6)
    mask = torch.rand(3, 10, generator=g) < 0.3
    tok = lambda L, C: torch.randn(3, L, C, generator=g, dtype=torch.float64)  # noqa: E731
    pgu = PrototypeUnification(dim=16, num_prototypes=3, num_layers=2, num_heads=2, head_dim=24,
                               ffn_dim=20, out_dim=12)
    dga = DictionaryCrossAttention(dim=16, num_atoms=13, num_heads=2, head_dim=8, ffn_dim=24)
    dpti = TemplateCrossAttention(16, num_heads=4, head_dim=6, ffn_dim=20)
    return [
        ("pgu", pgu, (tok(10, 16),), dict(key_padding_mask=mask), attn_ref.prototype_unification_reference),
        ("dga", dga, (tok(10, 16),), dict(foreground=True), attn_ref.dictionary_cross_attention_reference),
        ("dpti_templates", dpti, (tok(4, 16), tok(10, 16)), dict(key_padding_mask=mask),
         attn_ref.template_cross_attention_reference),
    ]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("case", range(3))
def test_layers_equal_the_standard_blocks(case, attention):
    # reidkern's layers (folded projections, shared dictionary) against the field's standard
    # blocks (projected k/v, everything expanded over the batch) in float64, values and gradients.
    torch.manual_seed(7)
    name, layer, inputs, kwargs, reference = _standard_cases()[case]
    layer = layer.double()
    results = []
    for fn in (lambda *a, **k: layer(*a, **k), lambda *a, **k: reference(layer, *a, attention=attention, **k)):
        args = [a.clone().requires_grad_() for a in inputs]
        out = fn(*args, **kwargs)
        loss = (out * torch.randn(out.shape, generator=_g(8), dtype=torch.float64)).sum()
        params = list(layer.parameters())
        grads = torch.autograd.grad(loss, args + params, allow_unused=True)
        results.append([out] + [torch.zeros_like(p) if gr is None else gr for p, gr in zip(args + params, grads)])
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fold_choice_follows_the_multiply_add_count():
    pgu = TemplateCrossAttention(384, num_heads=6, head_dim=512)
    assert pgu._fold(1, 64, 64, 6, 192, torch.device("cpu"))  # 6 prototypes over 192 tokens
    dga = TemplateCrossAttention(384, num_heads=6, head_dim=64)
    assert not dga._fold(64, 1, 64, 192, 400, torch.device("cpu"))  # 192 tokens over 400 atoms


def test_state_dict_names():
    names = set(TemplateCrossAttention(32, num_heads=4, ffn_dim=64).state_dict())
    assert {"norm.weight", "to_q.weight", "to_k.weight", "to_v.weight", "to_out.weight", "to_out.bias",
            "ffn_norm.weight", "ffn.0.weight", "ffn.3.weight"} <= names
    assert "to_q.bias" not in names  # bias-free q/k/v by default (LGUR)
    pgu = PrototypeUnification()
    sd = pgu.state_dict()
    assert sd["prototypes"].shape == (6, 384)
    assert sd["layers.1.to_q.weight"].shape == (6 * 512, 384)
    assert sd["projections.5.weight"].shape == (512, 384) and "projections.5.bias" not in sd
    assert sd["layers.0.ffn.0.weight"].shape == (512, 384)
    dga = DictionaryCrossAttention().state_dict()
    assert dga["dictionary"].shape == (400, 384) and dga["attn.to_k.weight"].shape == (384, 384)
    assert dga["attn.ffn.0.weight"].shape == (768, 384)
    assert set(PartTemplateInit(64, 6).state_dict()) == {"part_queries", "to_v.weight"}


def test_dpti_part_presence_and_cal_diversity():
    torch.manual_seed(3)
    layer = PartTemplateInit(16, num_parts=5)
    tokens = torch.randn(3, 12, 16)
    templates, rho = layer(tokens)
    assert templates.shape == (3, 5, 16)
    assert_close(rho.sum(-1), torch.ones(3))
    gamma = tokens @ layer.part_queries.t()  # Eq. 5, [B, L, N]
    assert_close(rho, torch.softmax(gamma.mean(1), dim=-1), rtol=1e-5, atol=1e-6)
    drm = TopKTokenAggregation(in_channels=8, num_parts=3, alpha=0.5, reduced_channels=4)
    parts, scores, sel = drm(torch.randn(2, 8, 6, 3))
    assert parts.shape == (2, 3, 8) and scores.shape == (2, 18, 3) and sel.shape == (2, 18, 3)
    assert ((sel != 0).sum(1) == 3).all()  # ceil(0.5 * 18 / 3) tokens per part
    gram = sel.transpose(1, 2) @ sel
    assert_close(drm.diversity_loss(sel), torch.triu(gram, 1).sum((1, 2)).mean())


def test_layer_bad_input():
    with pytest.raises(ValueError, match="query"):
        TemplateCrossAttention(8, num_heads=2)(torch.randn(8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        TemplateCrossAttention(8, num_heads=2)(torch.randn(2, 4, 8), torch.randn(2, 3, 8),
                                               key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tokens"):
        PartTemplateInit(8)(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="shared_norm"):
        TemplateCrossAttention(8, num_heads=2, context_dim=4)


@pytest.mark.skipif(not NATIVE, reason="compiled library not built")
def test_folded_attention_ops_opcheck():
    # schema, fake kernels (the gradient of x in x's layout) and dispatch of the CPU-only ops
    from reidkern.testing import opcheck
    g = _g(14)
    d = dict(generator=g, dtype=torch.float64)
    gq = torch.randn(2, 6, 11, **d)
    for x in (torch.randn(2, 11, 5, **d).transpose(1, 2), torch.randn(2, 5, 11, **d)):
        opcheck(torch.ops.reidkern.folded_attention_fwd.default, (gq, x, 1e-5, 0.5),
                test_utils=("test_schema", "test_faketensor"))
        u, p, tc, mu, rstd = torch.ops.reidkern.folded_attention_fwd(gq, x, 1e-5, 0.5)
        for gp in (None, torch.randn(p.shape, **d)):
            opcheck(torch.ops.reidkern.folded_attention_bwd.default,
                    (torch.randn(u.shape, **d), gp, gq, x, p, tc, mu, rstd, 0.5),
                    test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match="g must be contiguous"):
        torch.ops.reidkern.folded_attention_fwd(gq.transpose(1, 2).contiguous().transpose(1, 2), x, 1e-5, 0.5)
