"""Property-based fuzzing of reidkern.nn layers and losses: a float32 call either raises
ValueError/TypeError naming an argument (the layer's, or the op's it forwards to: q/k/v, scores,
tokens, embeddings), or equals the same module run in float64 on the reference backend (the eager
twin for the attention blocks) within float32 tolerance; an empty batch gives an empty output or a
zero loss."""
import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reidkern.nn import (AMSoftmaxLoss, BatchHardMiner, CrossModalRankingLoss,
                         DictionaryCrossAttention, PartDiversityLoss, PartTemplateInit,
                         PrototypeUnification, SoftTripletLoss, TargetAwareAttention,
                         TemplateCrossAttention, TopKTokenAggregation, TripletLoss)
from reidkern.nn.attention.reference import template_cross_attention_reference
from reidkern.testing import backends_for

from fuzz_strategies import finite, outcome, tensors

BACKENDS = backends_for("cpu", supported=("cpp", "reference"))
INPUT = dict(dtypes=(torch.float32,), regimes=("normal", "ties", "tiny", "nonfinite", "normal"))
OP_NAMES = ("q", "k", "v", "key_padding_mask", "scores", "tokens", "embeddings", "labels")


def _twin(module, backend="reference"):
    """The module in float64 on the reference backend (same parameters)."""
    twin = copy.deepcopy(module).double()
    for m in twin.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return twin


def _close(got, want, scale=1.0):
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4 * scale)


def _mask(draw, rows, L):
    if not draw(st.booleans()):
        return None
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    return torch.rand(rows, L, generator=g) < 0.4


@given(st.data())
def test_template_cross_attention(data):
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 99)))
    dim, heads = draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2, 0, 16]))
    kw = dict(head_dim=draw(st.sampled_from([None, 3])), ffn_dim=draw(st.sampled_from([None, 6])),
              qkv_bias=draw(st.booleans()), fold_projections=draw(st.sampled_from([None, True, False])),
              backend=draw(st.sampled_from(BACKENDS)))
    layer, err = outcome(lambda: TemplateCrossAttention(dim, heads, **kw), ("num_heads", "head_dim"))
    if heads == 0 or (heads > dim and kw["head_dim"] is None):
        assert err is not None
        return
    B, Nq, L = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    query, _ = draw(tensors(draw(st.sampled_from([(B, Nq, dim), (Nq, dim)])), **INPUT))
    context, _ = draw(tensors(draw(st.sampled_from([(B, L, dim), (L, dim)])), **INPUT))
    mask = _mask(draw, B if (query.dim() == 3 or context.dim() == 3) else draw(st.integers(0, 2)), L)
    res, err = outcome(lambda: layer(query, context, key_padding_mask=mask),
                       ("query", "context", "key_padding_mask") + OP_NAMES)
    if not finite(query, context):
        assert err is not None
        return
    assert err is None, err
    Bt = next((n for n in (query.dim() == 3 and query.shape[0], context.dim() == 3 and context.shape[0],
                           mask is not None and mask.shape[0]) if n is not False and n != 1), 1)
    assert res.shape == (Bt, Nq, dim)
    twin = _twin(layer)
    q64 = query.double() if query.dim() == 3 else query.double().expand(Bt, -1, -1)
    c64 = context.double() if context.dim() == 3 else context.double().expand(Bt, -1, -1)
    if Bt:
        _close(res, template_cross_attention_reference(twin, q64, c64, mask))


@given(st.data())
def test_lgur_layers(data):
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 99)))
    backend = draw(st.sampled_from(BACKENDS))
    B, L = draw(st.integers(0, 2)), draw(st.integers(1, 4))
    tokens, _ = draw(tensors((B, L, 8), **INPUT))
    dga = DictionaryCrossAttention(dim=8, num_atoms=3, num_heads=2, head_dim=4, ffn_dim=6, backend=backend)
    pgu = PrototypeUnification(dim=8, num_prototypes=2, num_layers=draw(st.integers(0, 2)), num_heads=2,
                               head_dim=4, ffn_dim=6, out_dim=5, backend=backend)
    mask = _mask(draw, B, L)
    fg = draw(st.booleans())
    for module, call, shape in ((dga, lambda m, t: m(t, foreground=fg), (B, L, 8)),
                                (pgu, lambda m, t: m(t, key_padding_mask=mask), (B, 2, 5))):
        res, err = outcome(lambda: call(module, tokens), ("tokens", "key_padding_mask") + OP_NAMES)
        reads_tokens = module is dga or len(pgu.layers) > 0  # PGU without layers ignores them
        if not finite(tokens) and reads_tokens:
            assert err is not None
            continue
        assert err is None, err
        assert res.shape == shape
        _close(res, call(_twin(module), tokens.double()))


@given(st.data())
def test_cal_and_dpti_layers(data):
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 99)))
    backend = draw(st.sampled_from(BACKENDS))
    B, H, W, C = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), 4
    x, _ = draw(tensors((B, C, H, W), **INPUT))
    alpha = draw(st.sampled_from([0.5, 1.0, 2.0]))
    tka = TopKTokenAggregation(C, num_parts=2, alpha=alpha, pool_sizes=(1, 3), reduced_channels=3,
                               backend=backend).eval()
    res, err = outcome(lambda: tka(x), ("x", "alpha") + OP_NAMES)
    if not finite(x):
        assert err is not None
    elif err is None:
        want = _twin(tka)(x.double())
        assert res[0].shape == (B, 2, C)
        _close(res[1], want[1])  # scores; parts compared where top-k is not a near-tie
        if torch.equal(res[2] != 0, want[2] != 0):
            _close(res[0], want[0], scale=float(x.abs().max()) if x.numel() else 1.0)
    else:
        assert "alpha" in str(err) or "k" in str(err)  # k = ceil(alpha HW / Np) > HW
    L = H * W
    tokens, _ = draw(tensors((B, L, C), **INPUT))
    parts, _ = draw(tensors(draw(st.sampled_from([(2, C), (B, 2, C)])), **INPUT))
    taa = TargetAwareAttention(dim=C, attn_dim=3, hidden_dim=5, backend=backend)
    mask = _mask(draw, B, L)
    res, err = outcome(lambda: taa(tokens, parts, key_padding_mask=mask),
                       ("tokens", "parts", "key_padding_mask") + OP_NAMES)
    if not finite(tokens, parts):
        assert err is not None
    else:
        assert err is None, err
        _close(res, _twin(taa)(tokens.double(), parts.double(), key_padding_mask=mask))
    pti = PartTemplateInit(C, num_parts=3, backend=backend)
    res, err = outcome(lambda: pti(tokens, key_padding_mask=mask), ("tokens",) + OP_NAMES)
    if not finite(tokens):
        assert err is not None
    else:
        assert err is None, err
        for got, want in zip(res, _twin(pti)(tokens.double(), key_padding_mask=mask)):
            _close(got, want)


@given(st.data())
def test_metric_losses(data):
    draw = data.draw
    B, D = draw(st.integers(0, 6)), draw(st.integers(1, 4))
    emb, _ = draw(tensors((B, D), dtypes=(torch.float32,)))
    labels = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)), dtype=torch.int64)
    metric = draw(st.sampled_from(["euclidean", "sqeuclidean", "cosine"]))
    backend = draw(st.sampled_from(BACKENDS))
    normalize = draw(st.booleans())
    losses = [TripletLoss(margin=draw(st.sampled_from([0.3, None, 0.0])), metric=metric,
                          mining=draw(st.sampled_from(["hard", "weighted"])),
                          normalize_feature=normalize, backend=backend),
              SoftTripletLoss(margin=draw(st.sampled_from([0.0, 0.5])), metric=metric,
                              normalize_feature=normalize, backend=backend)]
    teacher = emb.flip(0) if draw(st.booleans()) and B else None
    for loss in losses:
        args = (emb, labels) + ((teacher,) if isinstance(loss, SoftTripletLoss) and teacher is not None else ())
        res, err = outcome(lambda: loss(*args), ("embeddings", "labels", "teacher_embeddings"))
        if not finite(emb):
            assert err is not None
            continue
        if err is not None:  # distances beyond float32 (huge embeddings, squared)
            assert "embeddings" in str(err)
            continue
        assert res.shape == () and math.isfinite(float(res.detach()))
        if B == 0:
            assert float(res.detach()) == 0.0
        want = _twin(loss)(*[a.double() if a.is_floating_point() else a for a in args])
        scale = float(want.detach().abs()) + 1.0
        torch.testing.assert_close(res.double(), want, rtol=1e-3, atol=1e-3 * scale)
    miner = BatchHardMiner(metric=metric, backend=backend)
    res, err = outcome(lambda: miner(emb, labels), ("embeddings", "labels"))
    if err is None:
        a, p, n = res
        assert len(a) == len(p) == len(n) <= B


@given(st.data())
def test_classification_and_diversity_losses(data):
    draw = data.draw
    torch.manual_seed(draw(st.integers(0, 99)))
    B, D, C = draw(st.integers(0, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    feats, _ = draw(tensors((B, D), dtypes=(torch.float32,)))
    labels = torch.tensor(draw(st.lists(st.integers(-1, C), min_size=B, max_size=B)), dtype=torch.int64)
    am = AMSoftmaxLoss(D, C)
    res, err = outcome(lambda: am(feats, labels), ("features", "labels", "weight"))
    if not finite(feats) or bool(((labels < 0) | (labels >= C)).any()):
        assert err is not None or B == 0
    elif err is None:
        assert float(res.detach()) == 0.0 if B == 0 else True
        torch.testing.assert_close(res.double(), _twin(am)(feats.double(), labels), rtol=1e-4, atol=1e-4)
    image, _ = draw(tensors((B, D), dtypes=(torch.float32,)))
    text, _ = draw(tensors((B, D), dtypes=(torch.float32,)))
    cm = CrossModalRankingLoss(reduction=draw(st.sampled_from(["sum", "mean"])))
    res, err = outcome(lambda: cm(image, text, generator=torch.Generator().manual_seed(0)), ("image", "text"))
    if not finite(image, text):
        assert err is not None
    else:
        assert err is None, err
        assert res.shape == () and 0 <= float(res.detach()) < math.inf
        if B == 0:
            assert float(res.detach()) == 0.0
    mode = draw(st.sampled_from(["cosine", "overlap"]))
    x, _ = draw(tensors((B, draw(st.integers(1, 3)), draw(st.integers(1, 3))), dtypes=(torch.float32,)))
    div = PartDiversityLoss(mode=mode, reduction=draw(st.sampled_from(["mean", "sum"])))
    res, err = outcome(lambda: div(x), ("parts", "scores"))
    if not finite(x):
        assert err is not None
    elif err is not None:  # overlap sums beyond float32 (huge scores): refused
        assert mode == "overlap" and "range" in str(err), err
    else:
        assert err is None, err
        want = div(x.double())
        if B == 0:
            assert float(res) == 0.0 or div.reduction == "mean"
        torch.testing.assert_close(res.double(), want, rtol=1e-4, atol=1e-4 * (float(want.abs()) + 1),
                                   equal_nan=True)
