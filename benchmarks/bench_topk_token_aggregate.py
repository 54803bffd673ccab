"""topk_token_aggregate (CAL discriminative region mining), forward + backward: eager (topk +
scatter + matmul), torch.compile(eager) and the reidkern backends.

Shape: CAL on a ResNet-50 map at 288x144 input: 18x9 = 162 tokens of C = 2048, N_p = 6 parts,
k = ceil(0.5 * 162 / 6) = 14, batch 64. Each call: forward, then torch.autograd.grad for the
scores and the tokens (through the parts and Ŝ).
"""
import pytest
import torch

from reidkern.ops import topk_token_aggregate
from reidkern.ops.reference.topk_token_aggregate import topk_token_aggregate_reference

from _common import device_and_backend, record, reidkern_providers, smoke

# name: (B, L, Np, C, k)
SIZES = {"smoke": (2, 18, 3, 32, 4)} if smoke() else {"cal": (64, 162, 6, 2048, 14)}
PROVIDERS = ["eager", "compile"] + reidkern_providers()
REPRESENTATIVE = {"cal"}  # `reidkern bench` without --full


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", list(SIZES))
def test_topk_aggregate(benchmark, provider, size):
    B, L, Np, C, k = SIZES[size]
    device, backend = device_and_backend(provider)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, L, Np, generator=g).softmax(-1).to(device).requires_grad_()
    tokens = torch.randn(B, L, C, generator=g).to(device).requires_grad_()
    gp = torch.randn(B, Np, C, generator=g).to(device)
    if provider == "eager":
        fwd = lambda: topk_token_aggregate_reference(scores, tokens, k)  # noqa: E731
    elif provider == "compile":
        compiled = torch.compile(topk_token_aggregate_reference)
        fwd = lambda: compiled(scores, tokens, k)  # noqa: E731
    else:
        fwd = lambda: topk_token_aggregate(scores, tokens, k=k, backend=backend)  # noqa: E731

    def fn():
        parts, _, selected = fwd()
        # the diversity loss's input Ŝ takes part in the backward too
        return parts, torch.autograd.grad((parts * gp).sum() + selected.sum(), (scores, tokens))

    parts, grads = record(benchmark, "topk_token_aggregate", provider, f"{size} {B}x{L}x{Np}x{C} k={k}",
                          fn, device, passes="forward+backward")
    ref = topk_token_aggregate_reference(scores, tokens, k)[0]
    torch.testing.assert_close(parts, ref, rtol=1e-4, atol=1e-5)
    assert grads[1].shape == tokens.shape
