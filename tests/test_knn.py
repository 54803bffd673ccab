"""knn (exact float64 k nearest neighbours + row maximum) against the float64 reference."""
import pytest
import torch

from reidkern.ops import knn
from reidkern.ops.reference.knn import knn_reference
from reidkern.testing import assert_close, device_backend_cases, opcheck, unusable_reason

CASES = device_backend_cases()


def clustered(n, dim, num_ids, seed, dtype=torch.float32, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=g, dtype=torch.float64)
    ids = torch.randint(0, num_ids, (n,), generator=g)
    return (centers[ids] + spread * torch.randn(n, dim, generator=g, dtype=torch.float64)).to(dtype)


def check(out, ref):
    d, i, m = out
    rd, ri, rm = ref
    assert torch.equal(i.cpu(), ri), "neighbour indices differ"
    assert_close(d, rd, dtype=torch.float64, rtol=1e-12, atol=1e-12)
    assert_close(m, rm, dtype=torch.float64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (7, 5, 3, 4), (23, 41, 9, 17), (40, 33, 33, 8)])
def test_matches_reference(device, backend, dtype, shape):
    m, n, k, dim = shape
    x = clustered(m, dim, 4, seed=m * 7 + n, dtype=dtype)
    y = clustered(n, dim, 4, seed=n * 3 + k, dtype=dtype)
    check(knn(x.to(device), y.to(device), k, backend=backend), knn_reference(x, y, k))


@pytest.mark.parametrize("device,backend", CASES)
def test_ties_are_ordered_by_index(device, backend):
    # Integer features from a tiny range: many exactly equal distances and duplicate rows.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (29, 4), generator=g).float()
    out = tuple(t.cpu() for t in knn(x.to(device), x.to(device), 12, backend=backend))
    check(out, knn_reference(x, x, 12))
    d, i, _ = out
    assert (d[:, :-1] <= d[:, 1:]).all()
    same = d[:, :-1] == d[:, 1:]
    assert (i[:, :-1][same] < i[:, 1:][same]).all()


@pytest.mark.parametrize("device,backend", CASES)
def test_padding_offset_and_noncontiguous(device, backend):
    x = clustered(9, 6, 3, seed=2, dtype=torch.float64)
    y = clustered(4, 12, 3, seed=3, dtype=torch.float64)[:, ::2]  # non-contiguous
    assert not y.is_contiguous()
    d, i, m = (t.cpu() for t in knn(x.to(device), y.to(device), 6, index_offset=100, backend=backend))
    rd, ri, rm = knn_reference(x, y, 6, index_offset=100)
    assert torch.equal(i.cpu(), ri) and (i[:, 4:] == -1).all() and (i[:, :4] >= 100).all()
    assert torch.isinf(d[:, 4:]).all()
    assert_close(d[:, :4], rd[:, :4], dtype=torch.float64, rtol=1e-12, atol=1e-12)
    assert_close(m, rm, dtype=torch.float64, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(unusable_reason("cpu", "cpp") is not None, reason="compiled library not built")
def test_cpp_tiles_and_large_norms():
    # More rows and columns than one tile (256 x 4096); a large common offset makes the BLAS
    # cancellation error large, so the exact recheck must do the ranking.
    x = clustered(300, 5, 40, seed=4, dtype=torch.float32, spread=0.05) + 1000.0
    y = torch.cat([x, clustered(4000, 5, 40, seed=5, dtype=torch.float32, spread=0.05) + 1000.0])
    check(knn(x, y, 7, backend="cpp"), knn_reference(x, y, 7))


@pytest.mark.parametrize("device,backend", device_backend_cases(("cpp", "cuda")))
def test_opcheck(device, backend):
    x = clustered(6, 5, 2, seed=6).to(device)
    y = clustered(9, 5, 2, seed=7).to(device)
    opcheck(torch.ops.reidkern.knn.default, (x, y, 4, 0))
    opcheck(torch.ops.reidkern.knn.default, (x.double(), y.double(), 12, 3))


def test_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="feature dimension"):
        knn(x, torch.randn(5, 2), 2)
    with pytest.raises(ValueError, match="k must"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="x must be 2-D"):
        knn(torch.randn(3), x, 1)
    with pytest.raises(ValueError, match="y contains NaN"):
        knn(x, torch.full((2, 3), float("nan")), 1)


# ---- the self search (y is x): the symmetric C++ kernel, each pair's product once ----------------

NEEDS_CPP = pytest.mark.skipif(unusable_reason("cpu", "cpp") is not None, reason="compiled library not built")


def one_sided(x, k, **kw):
    """The one-sided kernel on the same values (a copy, so ``y is x`` does not hold)."""
    return knn(x, x.clone(), k, backend="cpp", **kw)


def check_equal(out, ref):
    # both are exact float64 results: bit-equal, indices and padding included
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


@NEEDS_CPP
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 5), (3, 3), (511, 7), (512, 9), (513, 22), (1025, 4),
                                 (1300, 1300)])
def test_self_search_equals_one_sided_at_tile_edges(n, k, dtype):
    # sizes around the 512-row tiles (one row more / fewer than a tile; k above N pads with
    # (inf, -1); k = N keeps every row)
    x = clustered(n, 6, max(1, n // 30), seed=n, dtype=dtype)
    out = knn(x, x, k, backend="cpp")
    check_equal(out, one_sided(x, k))
    if k <= n <= 600:
        check(out, knn_reference(x, x, k))


@NEEDS_CPP
def test_self_search_crosses_column_tiles():
    # more rows than one 8192-column product tile: pairs across both tile boundaries, the
    # transposed (column-side) updates of every tile row, and a large offset so that the BLAS
    # cancellation error is large and the exact recheck must do the ranking
    x = clustered(8300, 3, 300, seed=11, dtype=torch.float32, spread=0.05) + 1000.0
    out = knn(x, x, 5, backend="cpp")
    check_equal(out, one_sided(x, 5))
    rows = torch.tensor([0, 511, 512, 8191, 8192, 8299])
    rd, ri, rm = knn_reference(x[rows], x, 5)
    assert torch.equal(out[1][rows], ri)
    assert torch.equal(out[0][rows], rd) and torch.equal(out[2][rows], rm)


@NEEDS_CPP
def test_self_search_ties_duplicates_and_offset():
    # integer features from {0, 1, 2}: many equal distances and duplicate rows on both sides of a
    # tile boundary; ties must come out ordered by index, as in the one-sided kernel
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (700, 3), generator=g).double()
    out = knn(x, x, 30, index_offset=50, backend="cpp")
    check_equal(out, one_sided(x, 30, index_offset=50))
    check(out, knn_reference(x, x, 30, index_offset=50))
    d, i, _ = out
    same = d[:, :-1] == d[:, 1:]
    assert same.any() and (i[:, :-1][same] < i[:, 1:][same]).all()


@NEEDS_CPP
def test_self_search_validates_once_and_names_x():
    x = torch.randn(6, 3)
    x[4, 2] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        knn(x, x, 2)
    opcheck(torch.ops.reidkern.knn_self.default, (clustered(9, 5, 2, seed=8), 4))
    opcheck(torch.ops.reidkern.knn_self.default, (clustered(7, 5, 2, seed=9).double(), 10))
