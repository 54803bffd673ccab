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
from model_cases import cal as case  # noqa: E402


def saved_bytes(impl, fmap, batch, skip):
    seen = {}

    def pack(x):
        s = x.untyped_storage()
        if s._cdata not in skip:
            seen[s._cdata] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = impl.forward_head(fmap, batch["modality"], batch["pid"], batch["partner"])
        impl.loss(out)
    return sum(seen.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model, twin = case.build(False)
    model.train()
    batch = case.make_batch(dataclasses.replace(case.CASES[0], batch=a.batch), False)
    fmap = torch.relu(torch.randn(a.batch, 2048, 18, 9)).requires_grad_()
    skip = {p.untyped_storage()._cdata for p in model.parameters()} | {fmap.untyped_storage()._cdata}
    r = saved_bytes(model, fmap, batch, skip)
    e = saved_bytes(twin, fmap, batch, skip)
    print(f"| CAL head (DRM + TSAA + classifiers + losses), batch {a.batch}, 18x9 maps "
          f"| eager {e / 2**20:,.1f} MiB | reidkern {r / 2**20:,.1f} MiB | {e / r:.2f}x less |")


if __name__ == "__main__":
    main()
