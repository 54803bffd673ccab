"""The one way reidkern's ops get autograd, for every backend.

An op with a backward defines, in ``reidkern/ops/<op>.py``, one factory
``make(backward_op) -> (backward, setup_context)``: what the forward saves and how the gradient is
formed, written once against the signature of the op's backward. :func:`register` attaches that pair
to the compiled forward op (``"reidkern::<op>_fwd"``, C++ and CUDA alike) when reidkern is imported,
and to the Triton forward op (a ``torch.library.triton_op``) the first time the Triton backend runs,
so ``reidkern/triton/<op>.py`` holds kernels and launchers only and imports nothing from
``reidkern.ops`` (no import cycle).
"""
import torch

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
