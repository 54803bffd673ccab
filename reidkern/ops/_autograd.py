"""The one way reidkern's ops get autograd, for every backend.

An op with a backward defines, in ``reidkern/ops/<op>.py``, one factory
``make(backward_op) -> (backward, setup_context)``: what the forward saves and how the gradient is
formed, written once against the signature of the op's backward. :func:`register` attaches that pair
to the compiled forward op (``"reidkern::<op>_fwd"``, C++ and CUDA alike) when reidkern is imported,
and to the Triton forward op (a ``torch.library.triton_op``) the first time the Triton backend runs,
so ``reidkern/triton/<op>.py`` holds kernels and launchers only and imports nothing from
``reidkern.ops`` (no import cycle).
"""
import importlib

import torch

from reidkern._library import native_available

_registered = set()


def register(forward, backward_op, make):
    """Registers ``make(backward_op)`` as the autograd formula of ``forward``, once.

    Args:
        forward: the forward op: a ``"reidkern::<name>"`` string or a ``torch.library.triton_op``.
        backward_op: the op computing the input gradients (passed to ``make``).
        make: ``backward_op -> (backward, setup_context)`` for ``torch.library.register_autograd``.
    """
    key = forward if isinstance(forward, str) else id(forward)
    if key in _registered:
        return
    backward, setup_context = make(backward_op)
    torch.library.register_autograd(forward, backward, setup_context=setup_context)
    _registered.add(key)


def attach(op, make):
    """Gives op ``op``'s autograd ``make`` to both of its forwards; returns its Triton loader.

    The compiled forward ``reidkern::<op>_fwd`` (backward ``reidkern::<op>_bwd``) gets it now, when
    the compiled library is loaded. The returned function imports ``reidkern.triton.<op>`` (and so
    Triton) only when first called, gives its ``<op>_triton_fwd`` op the autograd with
    ``<op>_triton_bwd`` as the backward, and returns the module: each op module defines
    ``_triton = _autograd.attach("<op>", _make_autograd)`` and calls ``_triton().<launcher>``.
    """
    if native_available():
        register(f"reidkern::{op}_fwd", getattr(torch.ops.reidkern, f"{op}_bwd"), make)

    def triton_module():
        tt = importlib.import_module(f"reidkern.triton.{op}")
        register(getattr(tt, f"{op}_triton_fwd"), getattr(tt, f"{op}_triton_bwd"), make)
        return tt

    triton_module.__doc__ = f"reidkern.triton.{op}, its forward op given this op's autograd."
    return triton_module
