"""Activation memory of CAL's head: bytes autograd keeps for the backward pass, reidkern's model vs
its eager twin, at the paper's shapes (layer4 maps 2048×18×9 of 288×144 images, batch 64 = 8 ids ×
(4 visible + 4 infrared), N_p = 6, 395 ids).

The sampled-RSS peak of bench_models.py is a lower bound that reads ~0 on a loaded CPU; this
counts exactly, with ``torch.autograd.graph.saved_tensors_hooks``, every distinct storage saved
for backward during one training forward of the head (DRM + TSAA + classifiers + losses; parameters
and the input maps excluded). It is the memory a training step holds between forward and backward
beyond the backbone's.

    PYTHONPATH=.. python cal_saved_memory.py [--batch 64]
"""
import argparse
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import saved_for_backward_bytes, saved_memory_row, storage_ids  # noqa: E402
from model_cases import cal as case  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model, twin = case.build(False)
    model.train()
    batch = case.make_batch(dataclasses.replace(case.CASES[0], batch=a.batch), False)
    fmap = torch.relu(torch.randn(a.batch, 2048, 18, 9)).requires_grad_()
    skip = storage_ids(*model.parameters(), fmap)

    def head(impl):  # one training forward of the head, losses included
        return lambda: impl.loss(impl.forward_head(fmap, batch["modality"], batch["pid"], batch["partner"]))

    r = saved_for_backward_bytes(head(model), skip)
    e = saved_for_backward_bytes(head(twin), skip)
    print(saved_memory_row(f"CAL head (DRM + TSAA + classifiers + losses), batch {a.batch}, 18x9 maps", e, r))


if __name__ == "__main__":
    main()
