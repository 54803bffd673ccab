"""Loads the compiled library ``reidkern._C`` (op registrations + build facts), if it was built."""
import warnings

try:
    from reidkern import _C  # registers the reidkern::* ops with torch on import
    NATIVE_ERROR = None
except ImportError as exc:  # not compiled (e.g. a source checkout used without `pip install .`)
    _C = None
    NATIVE_ERROR = f"{type(exc).__name__}: {exc}"

# One op per schema generation: a library built from older sources (an in-place build not redone
# after csrc/ changed) lacks some of them; the reference then serves, with the reason in build_info.
_SCHEMA_PROBES = ("batch_hard_mining_fwd", "batch_hard_mining_bwd", "template_attention_fwd",
                  "topk_token_aggregate_fwd", "knn", "evaluate_rank", "pair_sq_dist", "knn_self",
                  "folded_attention_fwd")
if _C is not None:
    import torch

    _missing = [op for op in _SCHEMA_PROBES if not hasattr(torch.ops.reidkern, op)]
    if _missing:
        _C = None
        NATIVE_ERROR = (f"reidkern._C was built from older sources (it lacks reidkern::{', '.join(_missing)}); "
                        "rebuild it: pip install . or python setup.py build_ext --inplace")

_warned = set()


def native_available() -> bool:
    """True when the compiled kernels (CPU C++, and CUDA if built) are loaded."""
    return _C is not None


def native_with_cuda() -> bool:
    """True when the compiled library contains the CUDA kernels."""
    return _C is not None and bool(_C.BUILD_INFO["with_cuda"])


def warn_fallback(op: str, reason: str) -> None:
    """Warns once per op that the eager reference serves instead of a compiled kernel."""
    if op in _warned:
        return
    _warned.add(op)
    warnings.warn(
        f"reidkern.{op}: {reason}; using the eager PyTorch reference (correct but slow). "
        "Build the kernels with `pip install .` and see reidkern.build_info().",
        RuntimeWarning,
        stacklevel=3,
    )
