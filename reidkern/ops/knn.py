"""Op ``reidkern::knn``: k nearest neighbours by exact squared Euclidean distance, O(M k) memory.

For each row of ``x`` the k nearest rows of ``y`` (ties by index) and the row's maximum distance
over all of ``y`` -- what k-reciprocal re-ranking needs without an M x Ny matrix. Kernels:
csrc/cpu/knn.cpp (BLAS tiles + exact float64 recheck of the candidates), csrc/cuda/knn.cu and
reidkern/triton/knn.py (tiled float64 distances); oracle in reidkern/ops/reference/knn.py.
"""
from typing import NamedTuple

import torch

from reidkern._library import native_available
from reidkern.ops import _validate as V
from reidkern.ops._backend import resolve_backend
from reidkern.ops.reference.knn import knn_reference

if native_available():
    @torch.library.register_fake("reidkern::knn")
    def _(x, y, k, index_offset):
        m = x.shape[0]
        return (x.new_empty((m, k), dtype=torch.float64), x.new_empty((m, k), dtype=torch.int64),
                x.new_empty((m,), dtype=torch.float64))

    @torch.library.register_fake("reidkern::knn_self")
    def _(x, k):
        m = x.shape[0]
        return (x.new_empty((m, k), dtype=torch.float64), x.new_empty((m, k), dtype=torch.int64),
                x.new_empty((m,), dtype=torch.float64))


class KnnResult(NamedTuple):
    """Result of :func:`knn` (a tuple: ``d, idx, row_max = knn(...)`` works)."""

    distances: torch.Tensor  #: [M, k] float64 squared distances, nearest first (inf padding)
    indices: torch.Tensor    #: [M, k] int64 rows of y (+ index_offset), -1 padding
    row_max: torch.Tensor    #: [M] float64 largest distance of the row over all of y (-inf if y empty)


def _features(t, name):
    t = V.floating(V.as_tensor(t, name), name)
    V.check_ndim(t, 2, name, "[num_samples, dim]")
    return t


# Squared distances of float32 features are exact in the float64 recheck, but the float32 BLAS
# candidate search needs them inside float32's range: beyond these magnitudes the search runs in
# float64 instead (same neighbours, same float64 distances). float64 features beyond 2^480 would
# give inf distances and below 2^-480 (nonzero) underflowing ones: refused.
_F32_RANGE = (-40, 40)
_F64_LIMIT = 480


def _check_range(x, y):
    amax = V.max_abs(x) if y is x else V.max_abs(x, y)
    if x.dtype == torch.float32:
        if V.pow2_exponent(amax, *_F32_RANGE):
            x64 = x.double()
            return x64, (x64 if y is x else y.double())
        return x, y
    if amax > 2.0 ** _F64_LIMIT or 0 < amax < 2.0 ** -_F64_LIMIT:
        raise ValueError(f"x/y: largest magnitude {amax:.3g} is outside [2^-{_F64_LIMIT}, "
                         f"2^{_F64_LIMIT}]: squared distances would overflow or underflow float64; "
                         "rescale the features (the neighbours do not depend on the scale)")
    return x, y


def knn(x, y, k, index_offset=0, backend=None, validate=True):
    """The k nearest rows of ``y`` for every row of ``x`` and each row's maximum distance.

    Distance: squared Euclidean, exactly as float64 computes sum_d (x_d - y_d)^2 in d order (a
    sample's distance to itself is exactly 0, and d(a, b) == d(b, a)). The C++ kernel finds
    candidates with a BLAS product in the inputs' dtype and a rigorous rounding bound, then
    recomputes the candidates exactly, so the neighbours and their order (ties by index) are those
    of the float64 distances. Peak memory: O(tile + M k).

    Self search: when ``y is x`` (the same tensor object) the C++ kernel computes the symmetric
    product x xᵀ once per pair (the tiles on and right of the diagonal, each feeding its rows and,
    transposed, its columns): half the products for the same result, keeping a filter for every
    row at once (a few KB per row).

    Args:
        x: [M, D] float32/float64 features (float16/bfloat16 widened to float32).
        y: [Ny, D] features, same device as x (dtypes unified to the wider one).
        k: neighbours per row (>= 1); rows of a y with fewer than k rows are padded with
            (inf, -1).
        index_offset: int >= 0 added to the returned indices (y is a slice starting at this
            row); the padding index stays -1.
        backend: "cpp" | "cuda" | "triton" | "reference" (see reidkern.ops._backend).
        validate: True (default) checks every argument first (see Raises); False skips the
            checks, for arguments the caller has already checked (docs/adding_an_op.md).

    Returns:
        :class:`KnnResult` ``(distances [M, k] float64, indices [M, k] int64, row_max [M] float64)``, nearest first;
        row_max is -inf when y is empty.

    Raises:
        ValueError: not 2-D, different feature dimensions, devices that differ, NaN/inf, k < 1,
            index_offset < 0, float64 features of magnitude beyond 2^480 (or nonzero below
            2^-480), whose squared distances leave float64's range.
        TypeError: non-numeric inputs, non-int k or index_offset.

    Range: float32 features of any finite magnitude (beyond [2^-40, 2^40] the search runs in
    float64). Meta tensors give meta results of the right shapes.
    """
    self_search = y is x
    if validate:
        x = _features(x, "x")
        y = x if self_search else _features(y, "y")
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"x and y must have the same feature dimension, got {x.shape[1]} and {y.shape[1]}")
        if x.device != y.device:
            raise ValueError(f"x is on device {x.device} but y is on {y.device}; expected one device")
        k = V.check_int(k, "k", minimum=1)
        index_offset = V.check_int(index_offset, "index_offset", minimum=0)
    k, index_offset = int(k), int(index_offset)
    if x.dtype != y.dtype:
        x, y = x.double(), y.double()
    choice = resolve_backend("knn", x.device, backend)
    if x.device.type != "meta":
        if validate:
            V.check_finite(x, "x")
            if not self_search:
                V.check_finite(y, "y")
        x, y = _check_range(x, x if self_search else y)
    if self_search and choice == "cpp":
        d, idx, row_max = torch.ops.reidkern.knn_self(x.contiguous(), k)
        if index_offset:
            idx = torch.where(idx >= 0, idx + index_offset, idx)
        return KnnResult(d, idx, row_max)
    if choice in ("cpp", "cuda"):
        return KnnResult(*torch.ops.reidkern.knn(x.contiguous(), y.contiguous(), k, index_offset))
    if choice == "triton":
        from reidkern.triton.knn import knn_triton
        return KnnResult(*knn_triton(x.contiguous(), y.contiguous(), k, index_offset))
    return KnnResult(*knn_reference(x, y, k, index_offset))
