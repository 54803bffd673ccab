"""Triton kernels. Imported lazily by reidkern.ops so that Triton is optional.

On CPU tensors they run only in Triton's interpreter: set ``TRITON_INTERPRET=1`` before reidkern
imports Triton (the tests do this in conftest.py).
"""
