"""Argument checks shared by the ops: clear ValueError/TypeError naming the argument."""
import math
import numbers

import numpy as np
import torch


def as_tensor(x, name: str, device=None) -> torch.Tensor:
    """Turns a tensor, NumPy array or sequence into a tensor; TypeError naming ``name`` otherwise."""
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    try:
        return torch.as_tensor(np.asarray(x), device=device)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc


def check_float_tensors(named) -> None:
    """TypeError naming the first of the ``(name, value)`` pairs that is not a floating-point
    torch.Tensor (ops that take tensors as they are, without converting arrays)."""
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_ndim(x: torch.Tensor, ndim: int, name: str, shape_doc: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_doc}, got shape {tuple(x.shape)}")


def check_ids(x, length: int, name: str, length_doc: str, device) -> torch.Tensor:
    """Integer id vector (pids/camids/labels) of the given length, as contiguous int64 on ``device``."""
    x = as_tensor(x, name)
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [{length_doc}], got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    if x.shape[0] != length:
        raise ValueError(f"{name} has length {x.shape[0]}, expected {length_doc} = {length}")
    return x.to(device=device, dtype=torch.int64).contiguous()


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError naming ``x`` when it holds NaN or inf (meta tensors hold no values: skipped)."""
    if not x.numel() or x.device.type == "meta":
        return
    if not x.is_floating_point():
        if x.is_complex() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return
    # max |x| is finite exactly when every value is (NaN and inf propagate through the fused
    # min/max reduction): no N x D mask is allocated, unlike torch.isfinite(x).all().
    if not math.isfinite(max_abs(x)):
        raise ValueError(f"{name} contains NaN or inf")


def floating(x: torch.Tensor, name: str) -> torch.Tensor:
    """float32/float64 stay; float16/bfloat16 and integers are widened exactly."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real-valued tensor, got dtype {x.dtype}")
    return x.double()


def check_int(v, name: str, minimum=None, maximum=None) -> int:
    """A Python or NumPy integer (not bool) within [minimum, maximum], as a Python int."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_label_smoothing(value, name: str = "label_smoothing") -> float:
    """ε of a label-smoothed cross-entropy as a float in [0, 1); ValueError naming ``name``
    otherwise (bools, strings, NaN refused). ε = 1 is refused although ``F.cross_entropy``
    accepts it: the target is then uniform over the classes and nothing is learnt. The one rule
    for every place that takes it (recipes, models, losses)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1) (1 makes the target uniform: nothing "
                         f"is learnt), got {value!r}")
    return float(value)


def check_tile_rows(v, name: str = "tile_rows"):
    """None (the op's default) or a positive int."""
    return None if v is None else check_int(v, name, minimum=1)


def check_not_meta(x: torch.Tensor, name: str) -> None:
    """Ops whose output depends on the values (ranking, re-ranking) cannot run on meta tensors."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor: this op's result depends on the values "
                         "(meta tensors carry none)")


def check_same_device(pairs) -> None:
    """ValueError naming the first tensor whose device differs from the first one's."""
    (n0, t0), *rest = pairs
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {n0} is on {t0.device}; expected one device")


def _dense_order(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its dimensions in memory order when that makes it contiguous (e.g. a transposed
    view): reductions over all elements read it sequentially (aminmax over a transposed 67 MB
    view measured 20x slower than over the same memory in order, on a 2-core EPYC)."""
    if t.is_contiguous() or t.dim() < 2:
        return t
    p = t.permute(sorted(range(t.dim()), key=lambda i: (-t.stride(i), -t.shape[i])))
    return p if p.is_contiguous() else t


def abs_max(t: torch.Tensor) -> torch.Tensor:
    """max |t| of a non-empty tensor as a 0-d float64 tensor on t's device (NaN if t holds NaN).

    Floating tensors go through one fused min/max reduction (``torch.aminmax``, which propagates
    NaN) rather than ``abs().max()``, which writes and reads back a copy of t: about 10x slower on
    inputs of 100 MB (float32 [64, 6, 192, 512] on a 2-core EPYC: 63 ms against 6 ms), enough to
    make checking template_attention's arguments cost more than its kernels."""
    t = t.detach()
    if not t.is_floating_point():
        return t.abs().max().double()
    lo, hi = torch.aminmax(_dense_order(t))
    return torch.maximum(-lo, hi).double()


def max_abs(*ts: torch.Tensor) -> float:
    """The largest |value| over the tensors (NaN if any holds NaN; 0 when all are empty); callers
    pass whole feature matrices (106 MB at Market-1501 size), hence :func:`abs_max`."""
    vals = [abs_max(t).cpu() for t in ts if t.numel()]
    return float(torch.stack(vals).max()) if vals else 0.0


def pow2_exponent(amax: float, low: int, high: int) -> int:
    """e such that ``x * 2**-e`` brings a largest magnitude ``amax`` outside [2**low, 2**high]
    into [0.5, 1); 0 when it is already inside (or 0). Scaling by a power of two is exact."""
    import math
    if amax == 0 or not math.isfinite(amax) or 2.0 ** low <= amax <= 2.0 ** high:
        return 0
    return math.frexp(amax)[1]


def finite_magnitudes(named):
    """max |x| of each named tensor with one device sync; ValueError naming the first one that
    holds NaN or inf. Returns [] for meta tensors (no values) and inside compiled graphs."""
    import math
    if torch.compiler.is_compiling() or any(t.device.type == "meta" for _, t in named):
        return []
    with torch.no_grad():
        # one read of each distinct tensor (an attention's keys and values are often the same)
        seen, vals = {}, []
        for _, t in named:
            key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
            if key not in seen:
                seen[key] = abs_max(t) if t.numel() else torch.zeros((), dtype=torch.float64, device=t.device)
            vals.append(seen[key])
        mags = torch.stack(vals).tolist()
    for (name, t), m in zip(named, mags):
        if not math.isfinite(m):
            check_finite(t, name)
    return mags


def compute_max(dtype: torch.dtype) -> float:
    """Largest finite value of the dtype a kernel computes in (float16/bfloat16 run in float32)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max


def normalize_rows(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=dim, eps=eps)`` that stays right for huge rows: when the largest
    |x| is beyond 2^(maxexp/4) (2^32 in float32), x is first scaled by a power of two (exact), so
    the norm does not overflow to inf (which would turn the rows into zeros). Differentiable."""
    import math
    if x.numel() and x.is_floating_point() and x.device.type != "meta" \
            and not torch.compiler.is_compiling():
        amax = float(abs_max(x))
        if math.isfinite(amax) and amax > 2.0 ** (math.frexp(torch.finfo(x.dtype).max)[1] // 4):
            e = math.frexp(amax)[1]
            while e:  # steps that keep each power of two inside the dtype's range
                step = min(60, e)
                x = x * (2.0 ** -step)
                e -= step
    return torch.nn.functional.normalize(x, dim=dim, eps=eps)
