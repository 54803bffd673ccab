"""Activation memory of LGUR's DGA + PGU: bytes autograd keeps for the backward pass, reidkern's
model vs its eager twin, at the paper's token shapes (192 image tokens, captions of 64 with
padding, 400 atoms, 6 × 512 PGU).

The sampled-RSS peak of bench_models.py is a lower bound that reads ~0 on a loaded CPU; this
counts exactly, with ``torch.autograd.graph.saved_tensors_hooks``, every distinct storage saved
for backward during one training forward of DGA + PGU (parameters excluded). It is the memory a
training step holds between forward and backward, the part that scales with the batch.

    PYTHONPATH=.. python lgur_saved_memory.py [--batch 16] [--device cpu|meta]

``meta`` runs no arithmetic (any batch in seconds); its SDPA path saves a little more than the CPU
kernel does, so the eager figure there is an upper bound.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import saved_for_backward_bytes, saved_memory_row, storage_ids  # noqa: E402
from model_cases import lgur as case  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    with torch.device(a.device):
        model, twin = case.build(False)
        v = torch.randn(a.batch, 192, 384, requires_grad=True)
        t = torch.randn(a.batch, case.CAPTION_LEN, 384, requires_grad=True)
        pad = (torch.arange(case.CAPTION_LEN)[None] >= torch.randint(32, 65, (a.batch, 1))).expand(a.batch, -1)
    skip = storage_ids(*model.parameters())
    r = saved_for_backward_bytes(lambda: model.granularity_unify(v, t, pad), skip)
    e = saved_for_backward_bytes(lambda: twin.granularity_unify(v, t, pad), skip)
    print(saved_memory_row(f"LGUR DGA+PGU, batch {a.batch}, 192 image tokens, captions {case.CAPTION_LEN} "
                           f"({a.device})", e, r))


if __name__ == "__main__":
    main()
