"""Recipe pieces shared by the image models that own their loss and test features (DPTI,
LA-Transformer): ``model(img)`` in train mode gives the outputs ``model.loss(outputs, pids)`` reads,
and in eval mode the test features. One copy here instead of one per recipe."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from reidkern.ops._validate import check_label_smoothing

__all__ = ["SmoothedBuilder", "build_with_weights", "self_loss", "eval_forward"]


def build_with_weights(cls, num_classes: int, weights=None, **kwargs) -> nn.Module:
    """``cls(num_classes, **kwargs)``, then ``model.load_weights(weights)`` when given (a file
    path or a state_dict; the model's ``load_weights`` says which checkpoints it accepts and
    raises ValueError naming ``weights`` for another model's)."""
    model = cls(num_classes, **kwargs)
    if weights is not None:
        model.load_weights(weights)
    return model


class SmoothedBuilder:
    """``build_model`` of a recipe whose model owns its label-smoothed cross-entropy (DPTI,
    LA-Transformer): ``builder(num_classes, **kwargs)`` with ``label_smoothing=ε`` added, ε being
    the recipe's ``label_smoothing`` (bound by :class:`~reidkern.engine.Recipe` through
    ``with_label_smoothing`` on every construction and override).

    Raises ValueError naming ``label_smoothing`` when ``kwargs`` (the recipe's ``model_kwargs``)
    carries another value than the recipe's: one setting, one place.
    """

    def __init__(self, builder, label_smoothing: float = 0.0):
        self.builder, self.label_smoothing = builder, check_label_smoothing(label_smoothing)

    def with_label_smoothing(self, label_smoothing: float) -> "SmoothedBuilder":
        return SmoothedBuilder(self.builder, label_smoothing)

    def __call__(self, num_classes: int, **kwargs) -> nn.Module:
        eps = kwargs.pop("label_smoothing", self.label_smoothing)
        if eps != self.label_smoothing:
            raise ValueError(f"label_smoothing: model_kwargs gives {eps!r} but the recipe's label_smoothing is "
                             f"{self.label_smoothing!r}; set the recipe field only")
        return self.builder(num_classes, label_smoothing=self.label_smoothing, **kwargs)

    def __repr__(self) -> str:
        return f"SmoothedBuilder({getattr(self.builder, '__name__', self.builder)}, label_smoothing={self.label_smoothing})"


def self_loss(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, float]]:
    """One training step's loss: the forward of ``model`` (DDP-wrapped or not) on ``batch["img"]``
    and the unwrapped model's ``loss(outputs, batch["pid"])``; logs as floats."""
    from reidkern.engine import unwrap

    out = model(batch["img"])
    loss, logs = unwrap(model).loss(out, batch["pid"])
    return loss, {k: float(v) for k, v in logs.items()}


def eval_forward(model: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Test features [B, D]: the model's eval-mode forward (the engine sets eval mode and no-grad)."""
    return model(batch["img"])
