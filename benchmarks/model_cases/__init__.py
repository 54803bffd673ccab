"""Cases of benchmarks/bench_models.py: one module per paper (``model_cases/<paper>.py``) with a
``CASES`` list of :class:`ModelCase`, registered by one line in bench_models.py.

A case builds the reidkern model and its eager twin (``reidkern/models/<paper>_eager.py``: the
same parameters run through the field's standard blocks) and says how to run them. The default
hooks fit an image model whose model and twin both offer

    forward_backbone(img) -> tuple of tensors        (the backbone's outputs)
    forward_head(*feats)  -> outputs                 (everything after the backbone, train mode)
    loss(outputs, pid)    -> (loss, logs)

Models with other inputs (text, two modalities, a teacher) pass their own ``make_batch``,
``backbone`` and ``head_loss`` functions.
"""
import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, Tuple

import torch

# A whole step at a paper's batch takes minutes on a small CPU: REIDKERN_BENCH_STEP_BATCH runs the
# "step" measurements at another batch (the "head" ones keep the paper's); the size column says
# which batch each row measured.
STEP_BATCH = os.environ.get("REIDKERN_BENCH_STEP_BATCH")


def pk_labels(batch: int, num_instances: int) -> torch.Tensor:
    """P×K identity labels: batch // K identities with K images each (K = num_instances)."""
    if batch % num_instances:
        raise ValueError(f"batch {batch} is not a multiple of num_instances {num_instances}")
    return torch.arange(batch // num_instances).repeat_interleave(num_instances)


def image_batch(case: "ModelCase", smoke: bool, device="cpu") -> Dict[str, torch.Tensor]:
    b, (h, w) = case.shape(smoke)
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(b, 3, h, w, generator=g).to(device),
            "pid": pk_labels(b, case.num_instances).to(device)}


def image_backbone(impl, batch) -> Tuple[torch.Tensor, ...]:
    return tuple(impl.forward_backbone(batch["img"]))


def image_head_loss(impl, feats, batch) -> torch.Tensor:
    return impl.loss(impl.forward_head(*feats), batch["pid"])[0]


@dataclass
class ModelCase:
    """One model configuration to time.

    build(smoke) -> (model, twin): the reidkern model (train mode) and its eager twin over the same
        parameters; in smoke mode a tiny configuration.
    batch, size: the paper's batch and (H, W) input; smoke_batch, smoke_size: CI's tiny ones.
    parts: which measurements to run: "step" (forward + backward of the whole model) and/or
        "head" (forward + backward of everything after the backbone, loss included).
    """

    name: str
    build: Callable[[bool], Tuple[torch.nn.Module, torch.nn.Module]]
    batch: int
    size: Tuple[int, int]
    smoke_batch: int = 4
    smoke_size: Tuple[int, int] = (32, 16)
    num_instances: int = 4
    parts: Tuple[str, ...] = ("step", "head")
    note: str = ""
    make_batch: Callable = image_batch
    backbone: Callable = image_backbone
    head_loss: Callable = image_head_loss

    def for_part(self, part: str) -> "ModelCase":
        """This case with the batch of measurement ``part`` (see STEP_BATCH)."""
        if part == "step" and STEP_BATCH:
            return replace(self, batch=int(STEP_BATCH))
        return self

    def shape(self, smoke: bool):
        return (self.smoke_batch, self.smoke_size) if smoke else (self.batch, self.size)

    def label(self, smoke: bool) -> str:
        b, (h, w) = self.shape(smoke)
        return f"{self.name} batch {b} {h}x{w}"
