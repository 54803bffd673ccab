"""LGUR from the field's standard blocks: the "eager twin" of :class:`reidkern.models.LGUR`.

It runs the *same parameters* (it holds the LGUR module it was built from) through the textbook
computation of the official code: the 400-atom dictionary and the 6 prototypes are expanded
(``repeat``) over the batch, q/k/v are projected per sample and per token, and attention is
``F.scaled_dot_product_attention`` (``attention="sdpa"``, default) or ``matmul + softmax``
(``attention="eager"``) — see :mod:`reidkern.nn.attention.reference`. Encoders and losses are the
model's own (they are standard blocks already). It is the float64 oracle of the tests and the
baseline of ``benchmarks/model_cases/lgur.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from reidkern.nn.attention.reference import dictionary_cross_attention_reference, prototype_unification_reference

from .lgur import LGUR, LGUROutput

__all__ = ["LGUREager"]


class LGUREager(nn.Module):
    """Eager twin of ``model`` (shares its parameters; ``state_dict`` names are ``model.*``).

    Same call signatures as :class:`LGUR`: ``forward``, ``granularity_unify``, ``extract_image``,
    ``extract_text``, ``loss``. Raises ValueError for an ``attention`` other than "sdpa"/"eager".
    """

    def __init__(self, model: LGUR, attention: str = "sdpa"):
        super().__init__()
        if not isinstance(model, LGUR):
            raise TypeError(f"model: expected an LGUR, got {type(model).__name__}")
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")
        self.model, self.attention = model, attention

    def reconstruct(self, tokens, foreground=False, context=None, context_padding_mask=None):
        return dictionary_cross_attention_reference(self.model.dga, tokens, foreground, context,
                                                    context_padding_mask, attention=self.attention)

    def unify(self, tokens, key_padding_mask=None):
        return prototype_unification_reference(self.model.pgu, tokens, key_padding_mask, attention=self.attention)

    def granularity_unify(self, v, t, t_pad, guided: bool = True) -> LGUROutput:
        v_re = self.reconstruct(v, foreground=True)
        t_re = self.reconstruct(t)
        v_g = self.reconstruct(v, foreground=True, context=t, context_padding_mask=t_pad) if guided else None
        return LGUROutput(self.unify(v_re), self.unify(t_re, t_pad), None if v_g is None else self.unify(v_g),
                          self.unify(t, t_pad))

    def forward(self, img, text_ids=None, text_mask=None, encoder_tokens=None) -> LGUROutput:
        m = self.model
        if img.shape[0] != (text_mask if text_mask is not None else text_ids).shape[0]:
            raise ValueError("img and text_ids: image and text batches differ in size")
        t, t_pad = m.encode_text(text_ids, text_mask, encoder_tokens)
        return self.granularity_unify(m.encode_image(img), t, t_pad, guided=self.training)

    def extract_image(self, img):
        return self.unify(self.reconstruct(self.model.encode_image(img), foreground=True)).flatten(1)

    def extract_text(self, text_ids, text_mask, encoder_tokens=None):
        t, t_pad = self.model.encode_text(text_ids, text_mask, encoder_tokens)
        return self.unify(self.reconstruct(t), t_pad).flatten(1)

    def loss(self, out: LGUROutput, pids, generator: Optional[torch.Generator] = None):
        return self.model.loss(out, pids, generator)
