"""Helpers shared by reidkern's tests and benchmarks: tolerances, backends, opcheck, data paths."""
from pathlib import Path

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


def reid_mini_dir():
    """Path of the reid-mini real-data folder, or None when absent (see reidkern.data.paths)."""
    from reidkern.data.paths import reid_mini_dir as find

    path = find()
    return None if path is None else Path(path)
