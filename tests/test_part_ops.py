"""reidkern.nn.part_ops: the fused part pooling and per-part cosine logits equal their ``mean`` /
``F.normalize`` formulations in value and gradient (float64, odd small sizes), under gradcheck,
and refuse bad shapes."""
import pytest
import torch
import torch.nn.functional as F

from reidkern.nn.part_ops import cosine_part_logits, grid_part_pool
from reidkern.testing import assert_close

TOL = dict(rtol=1e-10, atol=1e-12)


def pool_reference(tokens, grid, y_pooling, cls_weight, part_weight):
    B, D = tokens.shape[0], tokens.shape[-1]
    gh, gw = grid
    cls, cells = tokens[:, :1], tokens[:, 1:].reshape(B, gh, gw, D)
    parts = cells.mean(dim=2)
    if y_pooling:
        parts = (parts + cells.mean(dim=1)) / 2
    return cls_weight * cls + part_weight * parts


@pytest.mark.parametrize("grid,y_pooling,cls_weight,part_weight", [
    ((3, 3), True, 1 / 3.5, 2.5 / 3.5), ((5, 3), False, 1 / 9, 8 / 9), ((3, 3), False, 0.0, 1.0),
    ((1, 1), True, 0.5, 0.5)])
def test_grid_part_pool_equals_means(grid, y_pooling, cls_weight, part_weight):
    torch.manual_seed(0)
    gh, gw = grid
    tokens = torch.randn(5, 1 + gh * gw, 7, dtype=torch.float64, requires_grad=True)
    out = grid_part_pool(tokens, grid, y_pooling, cls_weight, part_weight)
    ref = pool_reference(tokens, grid, y_pooling, cls_weight, part_weight)
    assert out.shape == (5, gh, 7)
    assert_close(out, ref, **TOL)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, tokens, g)[0], torch.autograd.grad(ref, tokens, g)[0], **TOL)
    with torch.no_grad():  # the no-grad path computes the same
        assert_close(grid_part_pool(tokens, grid, y_pooling, cls_weight, part_weight), ref, **TOL)
    assert torch.autograd.gradcheck(lambda t: grid_part_pool(t, grid, y_pooling, cls_weight, part_weight),
                                    (tokens,))


def test_grid_part_pool_non_contiguous_tokens():
    torch.manual_seed(1)
    base = torch.randn(6, 10, 4, dtype=torch.float64, requires_grad=True)
    tokens = base.transpose(0, 2)  # [4, 10, 6]: a 3x3 grid, non-contiguous
    out = grid_part_pool(tokens, (3, 3), True, 0.2, 0.8)
    ref = pool_reference(tokens, (3, 3), True, 0.2, 0.8)
    assert_close(out, ref, **TOL)
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, base, g)[0], torch.autograd.grad(ref, base, g)[0], **TOL)


def test_cosine_part_logits_equal_normalized_einsum():
    torch.manual_seed(2)
    B, P, C, K = 5, 3, 7, 6
    feats = F.normalize(torch.randn(B, P, K, dtype=torch.float64), dim=-1).requires_grad_()
    weight = torch.randn(P, C, K, dtype=torch.float64)
    weight[1, 4] = 0.0  # a zero class row: F.normalize's floor, no gradient through the norm
    weight[2, 0] *= 1e-14  # below the floor
    weight.requires_grad_()
    out = cosine_part_logits(feats, weight, scale=30.0)
    ref = 30.0 * torch.einsum("bpk,pck->bpc", feats, F.normalize(weight, dim=-1))
    assert out.shape == (B, P, C)
    assert_close(out, ref, **TOL)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (feats, weight), g), torch.autograd.grad(ref, (feats, weight), g)):
        assert_close(a, b, **TOL)
    w = torch.randn(P, C, K, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: cosine_part_logits(f, w, 2.0), (feats, w))


def test_bad_shapes():
    with pytest.raises(ValueError, match="tokens"):
        grid_part_pool(torch.randn(2, 9, 4), (3, 3))
    with pytest.raises(ValueError, match="square"):
        grid_part_pool(torch.randn(2, 7, 4), (3, 2), y_pooling=True)
    with pytest.raises(ValueError, match="weight"):
        cosine_part_logits(torch.randn(2, 3, 4), torch.randn(3, 5, 6))


def test_cosine_part_logits_dtypes():
    f, w = torch.randn(2, 3, 4), torch.randn(3, 5, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="features and weight: expected one dtype"):
        cosine_part_logits(f, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts both for the GEMM
        out = cosine_part_logits(f.bfloat16(), w.float())
    assert out.dtype == torch.float32 and out.shape == (2, 3, 5)
    torch.testing.assert_close(out, cosine_part_logits(f, w.float()), rtol=0.05, atol=0.05)
