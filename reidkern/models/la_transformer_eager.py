"""LA-Transformer as its official code writes the head: the "eager twin" of
:class:`reidkern.models.LATransformer` (it holds the model and runs its parameters): ``nn.AdaptiveAvgPool2d((14, 768))`` over the patch tokens, a Python loop building the 14
globally enhanced local tokens, a loop over the 14 ClassBlocks (Linear → BatchNorm1d → Dropout →
Linear, each part its own small calls) and the sum of the 14 cross-entropies; the note's AM-Softmax
per part and fast-reid's eager batch-hard triplet loss. The float64 oracle of
tests/test_la_transformer.py and the baseline of benchmarks/model_cases/la_transformer.py.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn.losses import cosface_logits

from reidkern.ops.reference.batch_hard_mining import triplet_loss_fastreid

from .la_transformer import LATransformer

__all__ = ["LATransformerEager"]


class LATransformerEager(nn.Module):
    """Eager twin of ``model`` (shares its parameters; ``state_dict`` names are ``model.*``).

    Same interface as :class:`LATransformer`: ``forward_backbone``, ``forward_head``, ``forward``,
    ``loss``. Raises TypeError for a model that is not an LATransformer.
    """

    def __init__(self, model):
        super().__init__()
        if not isinstance(model, LATransformer):
            raise TypeError(f"model: expected an LATransformer, got {type(model).__name__}")
        self.model = model

    def forward_backbone(self, x):
        return self.model.forward_backbone(x)

    def _parts(self, tokens):
        m = self.model
        gh, gw = m.grid
        patches = tokens[:, 1:]
        parts = nn.functional.adaptive_avg_pool2d(patches, (gh, patches.shape[-1]))  # row means
        if m.y_pooling:  # column means: pool the transposed grid the same way
            cols = patches.reshape(-1, gh, gw, patches.shape[-1]).transpose(1, 2).reshape_as(patches)
            parts = (parts + nn.functional.adaptive_avg_pool2d(cols, (gw, patches.shape[-1]))) / 2
        return tokens[:, 0], parts

    def forward_head(self, tokens):
        m = self.model
        cls, parts = self._parts(tokens)
        P = parts.shape[1]
        if not m.training:
            feats = []
            src = [(cls + m.lmbd * parts[:, i]) / (1 + m.lmbd) for i in range(P)] if m.test_gelt else \
                [parts[:, i] for i in range(P)]
            for p in src:  # the official notebook: part / (‖part‖ · √14), then view(-1)
                feats.append(p / (p.norm(p=2, dim=1, keepdim=True) * math.sqrt(P)))
            return torch.cat(feats, dim=1)
        c = m.classifiers
        gelts, logits = [], []
        for i in range(P):
            g = (cls + m.lmbd * parts[:, i]) / (1 + m.lmbd)
            h = F.linear(g, c.fc1_weight[i], c.fc1_bias[i])
            h = F.batch_norm(h, c.bn_running_mean[i], c.bn_running_var[i], c.bn_weight[i], c.bn_bias[i],
                             c.training, c.momentum, c.eps)
            h = F.dropout(h, c.dropout, c.training)
            if c.cosine:
                logits.append(cosface_logits(h, c.fc2_weight[i], None, scale=c.scale))
            else:
                logits.append(F.linear(h, c.fc2_weight[i], c.fc2_bias[i]))
            gelts.append(g)
        return {"logits": torch.stack(logits, dim=1), "gelt": torch.stack(gelts, dim=1)}

    def forward(self, x):
        return self.forward_head(*self.forward_backbone(x))

    def loss(self, outputs, pids):
        m = self.model
        logits = outputs["logits"]
        ce = 0.0
        for i in range(logits.shape[1]):
            part = logits[:, i]
            if m.metric_loss:
                part = part - m.classifiers.scale * m.am_margin * F.one_hot(pids, part.shape[1]).to(part.dtype)
            ce = ce + F.cross_entropy(part, pids)
        logs = {"loss_ce": ce.detach()}
        if not m.metric_loss:
            return ce, logs
        tri = triplet_loss_fastreid(outputs["gelt"].flatten(1), pids, m.triplet.margin)
        logs["loss_triplet"] = tri.detach()
        return ce + tri, logs
