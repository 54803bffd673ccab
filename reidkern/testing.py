"""Helpers shared by reidkern's tests and benchmarks: tolerances, device x backend cases, opcheck.

The real-data folders are found by :func:`reidkern.data.paths.reid_mini_dir`."""

import torch

from reidkern._library import native_available, native_with_cuda
from reidkern.ops._backend import triton_available, triton_interpret

# (rtol, atol) for comparing a result computed in `dtype` against the float64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, msg=""):
    """Compares ``actual`` to a float64 ``expected`` with the tolerance of ``dtype`` (default:
    actual's dtype); NaNs must match in position."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    dtype = dtype or (actual.dtype if actual.dtype.is_floating_point else torch.float64)
    r, a = TOLERANCES.get(dtype, (1e-5, 1e-6))
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(),
                               rtol=rtol if rtol is not None else r,
                               atol=atol if atol is not None else a, equal_nan=True, msg=msg or None)


def backends_for(device="cpu", supported=("cpp", "cuda", "triton", "reference")):
    """The backends of an op that can run on ``device`` in this installation."""
    dev = torch.device(device)
    out = []
    if dev.type == "cpu" and native_available() and "cpp" in supported:
        out.append("cpp")
    if dev.type == "cuda" and native_with_cuda() and "cuda" in supported:
        out.append("cuda")
    if "triton" in supported and triton_available() and (dev.type == "cuda" or triton_interpret()):
        out.append("triton")
    if "reference" in supported:
        out.append("reference")
    return out


# Every (device, backend) an op can run on. The reference is the oracle, never a case; Triton runs
# compiled on CUDA and in the interpreter (TRITON_INTERPRET=1, tests/conftest.py) on CPU.
DEVICE_BACKENDS = (("cpu", "cpp"), ("cpu", "triton"), ("cuda", "cuda"), ("cuda", "triton"))


def device_backend_cases(supported=("cpp", "cuda", "triton"), devices=("cpu", "cuda")):
    """pytest parameters ``(device, backend)`` for every device (of ``devices``) x backend (of
    ``supported``) of an op.

    All are collected on every machine; :func:`unusable_reason` says, at set-up
    (tests/conftest.py), why one cannot run here (no GPU, library not built, no triton), and the
    case is skipped with that reason -- or fails, for a compiled backend under
    ``REIDKERN_REQUIRE_NATIVE=1``.
    """
    import pytest

    return [pytest.param(d, b, id=f"{d}-{b}") for d, b in DEVICE_BACKENDS if b in supported and d in devices]


def unusable_reason(device, backend):
    """Why ``backend`` cannot run on ``device`` in this installation, or None when it can."""
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if backend == "cpp" and not native_available():
        return "reidkern's compiled library is not built"
    if backend == "cuda" and not native_with_cuda():
        return "reidkern was built without CUDA kernels"
    if backend == "triton" and not triton_available():
        return "triton is not installed"
    if backend == "triton" and device == "cpu" and not triton_interpret():
        return "Triton on CPU tensors needs TRITON_INTERPRET=1 before triton is imported"
    return None


def to_cpu(out):
    """``out`` (a tensor, or a tuple / NamedTuple of them) with every tensor moved to the CPU."""
    if isinstance(out, torch.Tensor):
        return out.cpu()
    if isinstance(out, tuple):
        items = [to_cpu(t) for t in out]
        return type(out)(*items) if hasattr(out, "_fields") else tuple(items)
    return out


def randomize_batchnorm(model, seed=0):
    """Gives every BatchNorm of ``model`` random running statistics and affine parameters (so
    that eval-mode BN is not the identity in tests); returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model


def devices():
    """Devices to test on: CPU, plus CUDA when present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def opcheck(op, args, kwargs=None, **kw):
    """``torch.library.opcheck`` on a reidkern op (schema, fake kernel, autograd registration)."""
    return torch.library.opcheck(op, args, kwargs or {}, **kw)


def check_compiled_train_forward(model, x, pids, rtol=1e-4, atol=1e-5):
    """``torch.compile(model, fullgraph=True)`` (aot_eager backend: traces the whole graph and its
    backward without a C++ compiler) gives the eager train-mode outputs (a dict of tensors) and its
    ``model.loss(outputs, pids)`` gives the eager gradients of every trainable parameter. Raises
    AssertionError otherwise (dropout must be off: the two forwards draw different masks). Then the
    same for the eval-mode forward (the test features, what a compiled retrieval service runs);
    the model is left in train mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    expected = model(x)
    # eager gradients before the compiled forward: its BatchNorm running-stat updates would bump
    # the version of buffers the eager graph saved
    grads_eager = torch.autograd.grad(model.loss(expected, pids)[0], params, allow_unused=True)
    torch._dynamo.reset()  # fresh cache: models share forward code objects
    got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
    grads = torch.autograd.grad(model.loss(got, pids)[0], params, allow_unused=True)
    for p, g, ge in zip(params, grads, grads_eager):
        assert (g is None) == (ge is None)
        if g is not None:
            torch.testing.assert_close(g, ge, rtol=rtol, atol=atol)
    assert any(g is not None for g in grads)
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x)
            torch._dynamo.reset()
            got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, msg=lambda m: f"eval forward: {m}")
    finally:
        model.train()
