"""template_attention, forward + backward: eager (matmul + softmax), F.scaled_dot_product_attention,
torch.compile(eager) and the reidkern backends, at the papers' shapes.

Shapes (B, H, Nq, L, D): DPTI part templates (B=64, 6–8 templates over 16x8 / 24x8 tokens,
d 256–768), LGUR DGA (192 image tokens over 400 dictionary atoms, 6 heads x 64; the atoms are
shared by the batch) and PGU (6 prototypes over 192 tokens, 6 heads x 512, learned queries
broadcast). Each call: forward, then torch.autograd.grad for q, k, v.
"""
import pytest
import torch
import torch.nn.functional as F

from reidkern.ops import template_attention
from reidkern.ops.reference.template_attention import template_attention_reference

from _common import device_and_backend, record, reidkern_providers, smoke

# name: (B, H, Nq, L, D, q_batch1, shared_kv)
SIZES = ({"smoke": (2, 2, 6, 24, 16, True, False), "smoke_dga": (2, 2, 8, 20, 16, False, True)} if smoke() else {
    "dpti_d256": (64, 8, 6, 128, 32, True, False),
    "dpti_d768": (64, 8, 8, 192, 96, True, False),
    "lgur_dga": (64, 6, 192, 400, 64, False, True),
    "lgur_pgu": (64, 6, 6, 192, 512, True, False),
})
PROVIDERS = ["eager", "sdpa", "compile"] + reidkern_providers()
REPRESENTATIVE = {"lgur_dga", "lgur_pgu"}  # `reidkern bench` without --full


def make_inputs(B, H, Nq, L, D, q_batch1, shared_kv, device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1 if q_batch1 else B, H, Nq, D, generator=g)
    if shared_kv:  # dictionary atoms: one [H, L, D] set seen by the whole batch (expanded, no copy)
        k = torch.randn(1, H, L, D, generator=g)
        v = torch.randn(1, H, L, D, generator=g)
    else:
        k = torch.randn(B, H, L, D, generator=g)
        v = torch.randn(B, H, L, D, generator=g)
    q, k, v = (t.to(device).requires_grad_() for t in (q, k, v))
    go = torch.randn(B, H, Nq, D, generator=g).to(device)
    return q, k, v, go


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_template_attention(benchmark, provider, size):
    B, H, Nq, L, D, q1, shared = SIZES[size]
    device, backend = device_and_backend(provider)
    q, k, v, go = make_inputs(B, H, Nq, L, D, q1, shared, device)
    kx = lambda t: t.expand(B, -1, -1, -1)  # noqa: E731  (broadcast views, as the layers pass them)

    if provider == "eager":
        fwd = lambda: template_attention_reference(kx(q), kx(k), kx(v))[0]  # noqa: E731
    elif provider == "sdpa":
        fwd = lambda: F.scaled_dot_product_attention(kx(q), kx(k), kx(v))  # noqa: E731
    elif provider == "compile":
        compiled = torch.compile(lambda q, k, v: template_attention_reference(q, k, v)[0])
        fwd = lambda: compiled(kx(q), kx(k), kx(v))  # noqa: E731
    else:
        fwd = lambda: template_attention(q, kx(k), kx(v), backend=backend).out  # noqa: E731

    def fn():
        out = fwd()
        return out, torch.autograd.grad(out, (q, k, v), go)

    out, grads = record(benchmark, "template_attention", provider, f"{size} {B}x{H}x{Nq}x{L}x{D}", fn,
                        device, passes="forward+backward")
    ref = template_attention_reference(kx(q), kx(k), kx(v))[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert grads[1].shape == k.shape
