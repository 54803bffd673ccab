"""Backend choice shared by every op.

Order: the explicit ``backend=`` argument, then the ``REIDKERN_BACKEND`` environment variable, then
the device default (CUDA tensors: the compiled CUDA kernel; CPU tensors: the compiled C++ kernel).
Backends:

* ``"cpp"``       compiled CPU kernel (csrc/cpu/<op>.cpp), CPU tensors.
* ``"cuda"``      compiled CUDA kernel (csrc/cuda/<op>.cu), CUDA tensors.
* ``"triton"``    Triton kernel (reidkern/triton/<op>.py); CUDA tensors, or CPU tensors when
                  ``TRITON_INTERPRET=1`` was set before reidkern imported Triton (tests).
* ``"reference"`` eager PyTorch reference (reidkern/ops/reference/<op>.py), any device.

When a compiled backend is asked for (or is the default) but the library was not built, the
reference serves with one warning per op.
"""
import importlib.util
import os

import torch

from reidkern._library import native_available, native_with_cuda, warn_fallback

BACKENDS = ("cpp", "cuda", "triton", "reference")
ENV_VAR = "REIDKERN_BACKEND"


def triton_available() -> bool:
    """True when the ``triton`` package is importable."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")


def _fits(name, device: torch.device) -> bool:
    if name == "cpp":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    if name == "triton":
        return device.type == "cuda" or triton_interpret()
    return True


def resolve_backend(op: str, device: torch.device, backend=None, supported=BACKENDS) -> str:
    """Returns the backend that runs ``op`` on ``device``.

    Raises:
        ValueError: ``backend`` is unknown, not implemented for this op, or cannot run on ``device``
            (e.g. ``"cuda"`` with CPU tensors, ``"triton"`` on CPU without ``TRITON_INTERPRET=1``).
    """
    device = torch.device(device)
    if backend is not None:
        _check_name(backend, "backend")
        if backend not in supported:
            raise ValueError(f"backend={backend!r} is not implemented for {op}; choose from {supported}")
        if not _fits(backend, device):
            raise ValueError(
                f"backend={backend!r} cannot run {op} on {device.type} tensors"
                + (" (set TRITON_INTERPRET=1 before importing reidkern to interpret Triton on CPU)"
                   if backend == "triton" else "")
            )
        choice = backend
    else:
        env = os.environ.get(ENV_VAR)
        if env:
            _check_name(env, f"${ENV_VAR}")
        # The environment variable is a preference: it applies where it fits the device and op.
        if env and env in supported and _fits(env, device):
            choice = env
        else:
            choice = "cuda" if device.type == "cuda" else "cpp"
            if choice not in supported:
                choice = "triton" if device.type == "cuda" and "triton" in supported else "reference"
    if choice == "triton" and not triton_available():
        raise ValueError(f"backend='triton' for {op} needs the triton package (pip install triton)")
    if choice in ("cpp", "cuda"):
        if not native_available():
            warn_fallback(op, "the compiled library is not available")
            return "reference"
        if choice == "cuda" and not native_with_cuda():
            if triton_available() and "triton" in supported:
                return "triton"
            warn_fallback(op, "reidkern was built without CUDA kernels")
            return "reference"
    return choice
