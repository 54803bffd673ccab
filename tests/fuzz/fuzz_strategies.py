"""Hypothesis strategies for hostile tensors, and the property every public entry point must hold.

Values come from a seeded generator (hypothesis draws the seed, the regime, the layout and the
scale), so examples shrink to small seeds and shapes; regimes cover what users feed by mistake:
ties and duplicates (small integers), huge and tiny magnitudes, NaN and infinities.
"""
import math

import torch
from hypothesis import strategies as st

# "normal" and "ties" twice: most examples are valid input, so most reach the comparison
REGIMES = ("normal", "ties", "huge", "tiny", "nonfinite", "normal", "ties")
LAYOUTS = ("contiguous", "transposed", "sliced", "expanded")
FLOATS = (torch.float32, torch.float64)


def scale_exponent(regime, dtype):
    """Powers of two that make values huge or tiny for the dtype (squares overflow float32 at
    2^64, float64 at 2^512)."""
    if regime == "huge":
        return 70 if dtype == torch.float32 else 600
    if regime == "tiny":
        return -70 if dtype == torch.float32 else -600
    return 0


def values(shape, dtype, regime, seed):
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if regime == "ties":
        x = torch.randint(-2, 3, (n,), generator=g).double()
    else:
        x = torch.randn(n, generator=g, dtype=torch.float64)
    if regime == "nonfinite" and n:
        k = int(torch.randint(1, min(n, 3) + 1, (), generator=g))
        pos = torch.randperm(n, generator=g)[:k]
        bad = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        x[pos] = bad[torch.randint(0, 3, (k,), generator=g)]
    x = torch.ldexp(x, torch.tensor(scale_exponent(regime, dtype)))
    return x.reshape(shape).to(dtype)


def with_layout(x, layout):
    """Same values, another memory layout: transposed (last two dims), sliced (every other element
    of a larger buffer) or expanded (stride 0 along dim 0: every row a copy of the first)."""
    if x.dim() == 0 or x.numel() == 0 and layout == "expanded":
        return x
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if layout == "expanded" and x.shape[0] > 0:
        return x[:1].expand(x.shape)
    return x


@st.composite
def tensors(draw, shape, dtypes=FLOATS, regimes=REGIMES, layouts=LAYOUTS):
    """A float tensor of ``shape``; returns ``(tensor, regime)``."""
    dtype = draw(st.sampled_from(dtypes))
    regime = draw(st.sampled_from(regimes))
    seed = draw(st.integers(0, 2 ** 16))
    layout = draw(st.sampled_from(layouts))
    return with_layout(values(shape, dtype, regime, seed), layout), regime


def finite(*ts):
    return all(bool(torch.isfinite(t).all()) for t in ts if t.numel())


def outcome(call, names):
    """Runs ``call()``. A ValueError/TypeError must name one of ``names`` (the arguments); any
    other exception fails the property. Returns ``(result, error)``."""
    try:
        return call(), None
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert any(n in msg for n in names), f"error names none of {names}: {exc!r}"
        return None, exc
