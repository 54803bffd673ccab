"""Attention layers, forward + backward (one training step of the layer): the standard blocks as
the papers' code writes them (eager matmul + softmax, the same block with
F.scaled_dot_product_attention, torch.compile of the eager block) against reidkern's layers.

All providers run the same parameters (reidkern/nn/attention/reference.py holds the standard
blocks). The standard blocks expand the learned queries and the dictionary over the batch and
project k/v per sample; reidkern's layers keep them shared and, for a few queries over many
tokens, fold the k/v projections onto the queries (TemplateCrossAttention._attend_folded).

Shapes (batch 64, no padding):
  lgur_pgu   PrototypeUnification: 6 prototypes over 192 DeiT-S tokens of 384, 2 layers of 6 heads x 512
  lgur_dga   DictionaryCrossAttention: 192 tokens over 400 atoms of 384, 6 heads x 64, FFN 768, foreground mask
  dpti_d256  TemplateCrossAttention: 6 part templates over 16x8 tokens, d 256, 8 heads x 32
  dpti_d768  TemplateCrossAttention: 8 part templates over 24x8 tokens, d 768, 8 heads x 96
Each call: forward, then torch.autograd.grad for the inputs and every parameter.
"""
import pytest
import torch

from reidkern.nn import DictionaryCrossAttention, PrototypeUnification, TemplateCrossAttention
from reidkern.nn.attention import reference as attn_ref

from _common import device_and_backend, record, reidkern_providers, smoke


def _pgu(dims):
    B, L, dim, K, H, hd = dims
    module = PrototypeUnification(dim=dim, num_prototypes=K, num_layers=2, num_heads=H, head_dim=hd,
                                  ffn_dim=512 if not smoke() else 16, out_dim=512 if not smoke() else 8)
    return module, (torch.randn(B, L, dim),), {}, attn_ref.prototype_unification_reference


def _dga(dims):
    B, L, dim, atoms, H, hd = dims
    module = DictionaryCrossAttention(dim=dim, num_atoms=atoms, num_heads=H, head_dim=hd, ffn_dim=2 * dim)
    return module, (torch.randn(B, L, dim),), dict(foreground=True), attn_ref.dictionary_cross_attention_reference


def _templates(dims):
    B, L, dim, Nq, H, hd = dims
    module = TemplateCrossAttention(dim, num_heads=H, head_dim=hd)
    return module, (torch.randn(B, Nq, dim), torch.randn(B, L, dim)), {}, attn_ref.template_cross_attention_reference


# name: (builder, (B, L, dim, queries or atoms, heads, head_dim))
SIZES = ({"smoke_pgu": (_pgu, (2, 12, 16, 3, 2, 24)), "smoke_dga": (_dga, (2, 12, 16, 9, 2, 8)),
          "smoke_templates": (_templates, (2, 12, 16, 3, 2, 8))} if smoke() else {
    "lgur_pgu": (_pgu, (64, 192, 384, 6, 6, 512)),
    "lgur_dga": (_dga, (64, 192, 384, 400, 6, 64)),
    "dpti_d256": (_templates, (64, 128, 256, 6, 8, 32)),
    "dpti_d768": (_templates, (64, 192, 768, 8, 8, 96)),
})
PROVIDERS = ["eager", "sdpa", "compile"] + reidkern_providers()
REPRESENTATIVE = {"dpti_d768"}  # `reidkern bench` without --full


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_attention_layer(benchmark, provider, size):
    builder, dims = SIZES[size]
    device, backend = device_and_backend(provider)
    torch.manual_seed(0)
    module, inputs, kwargs, reference = builder(dims)
    module = module.to(device)
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    inputs = [t.to(device).requires_grad_() for t in inputs]
    params = list(module.parameters())

    if provider in ("eager", "sdpa"):
        fwd = lambda: reference(module, *inputs, attention=provider, **kwargs)  # noqa: E731
    elif provider == "compile":
        compiled = torch.compile(lambda *a: reference(module, *a, attention="eager", **kwargs))
        fwd = lambda: compiled(*inputs)  # noqa: E731
    else:
        fwd = lambda: module(*inputs, **kwargs)  # noqa: E731
    go = torch.randn(fwd().shape, generator=torch.Generator().manual_seed(1)).to(device)

    def fn():
        out = fwd()
        return out, torch.autograd.grad(out, inputs + params, go, allow_unused=True)

    out, _ = record(benchmark, "attention_layer", provider, f"{size} " + "x".join(map(str, dims)), fn,
                    device, passes="forward+backward")
    expected = reference(module, *inputs, attention="eager", **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
