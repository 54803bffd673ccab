"""LA-Transformer as its official code writes the head: the "eager twin" of
:class:`reidkern.models.LATransformer`. ``nn.AdaptiveAvgPool2d((14, 768))`` over the patch tokens, a
Python loop building the 14 globally enhanced local tokens, 14 separate ClassBlock modules
(``classifier{i}``: Linear → BatchNorm1d → Dropout → Linear, each its own small calls) and the sum
of the 14 cross-entropies; the note's AM-Softmax per part and fast-reid's eager batch-hard triplet
loss. The float64 oracle of tests/test_la_transformer.py and the baseline of
benchmarks/model_cases/la_transformer.py.

Parameters: the backbone is the model's own; the 14 ClassBlocks are separate ``nn.Module``s as in
the official code, whose parameters and running statistics *share storage* with the model's stacked
``PartClassBlocks`` (``classifier{i}.0.weight`` is ``model.classifiers.fc1_weight[i]``'s memory): the
same values, always, but their own leaves for autograd — as the official model has 14 separate
sets of parameters (indexing one stacked parameter 14 times would add a full-size zero-filled
gradient per slice, which the official code never pays). :meth:`stacked_grads` puts the blocks'
gradients back into the model's layout.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn.losses import cosface_logits
from reidkern.ops.reference.batch_hard_mining import triplet_loss_fastreid

from .la_transformer import LATransformer

__all__ = ["LATransformerEager"]


def _shared(t):
    """A new leaf Parameter over ``t``'s memory (same values, own autograd identity)."""
    return nn.Parameter(t.detach(), requires_grad=t.requires_grad)


class LATransformerEager(nn.Module):
    """Eager twin of ``model`` (its backbone, and 14 ClassBlocks sharing the model's classifier
    storage; ``state_dict`` names ``model.*`` and ``classifier{i}.*``).

    Same interface as :class:`LATransformer`: ``forward_backbone``, ``forward_head``, ``forward``,
    ``loss``. Raises TypeError for a model that is not an LATransformer.
    """

    def __init__(self, model):
        super().__init__()
        if not isinstance(model, LATransformer):
            raise TypeError(f"model: expected an LATransformer, got {type(model).__name__}")
        self.model = model
        c = model.classifiers
        for i in range(model.num_parts):
            fc1 = nn.Linear(c.in_features, c.bottleneck)
            bn = nn.BatchNorm1d(c.bottleneck, eps=c.eps, momentum=c.momentum)
            fc2 = nn.Linear(c.bottleneck, c.num_classes, bias=not c.cosine)
            fc1.weight, fc1.bias = _shared(c.fc1_weight[i]), _shared(c.fc1_bias[i])
            bn.weight, bn.bias = _shared(c.bn_weight[i]), _shared(c.bn_bias[i])
            bn.running_mean, bn.running_var = c.bn_running_mean[i], c.bn_running_var[i]  # views: updates land in the model
            fc2.weight = _shared(c.fc2_weight[i])
            if not c.cosine:
                fc2.bias = _shared(c.fc2_bias[i])
            setattr(self, f"classifier{i}", nn.Sequential(fc1, bn, nn.Dropout(c.dropout), fc2))

    def blocks(self):
        return [getattr(self, f"classifier{i}") for i in range(self.model.num_parts)]

    def head_parameters(self):
        """The parameters the twin trains: the backbone's and the 14 blocks'."""
        return list(self.model.backbone.parameters()) + [p for b in self.blocks() for p in b.parameters()]

    def stacked_grads(self, grads):
        """Map gradients of :meth:`head_parameters` (same order) to the model's parameter names."""
        n = len(list(self.model.backbone.parameters()))
        out = dict(zip([f"backbone.{k}" for k, _ in self.model.backbone.named_parameters()], grads[:n]))
        per = [list(grads[n + j * len(list(b.parameters())):n + (j + 1) * len(list(b.parameters()))])
               for j, b in enumerate(self.blocks())]
        names = ["fc1_weight", "fc1_bias", "bn_weight", "bn_bias", "fc2_weight", "fc2_bias"]
        if self.model.classifiers.cosine:
            names = names[:-1]
        for k, name in enumerate(names):
            out[f"classifiers.{name}"] = torch.stack([p[k] for p in per])
        return out

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
        for i, block in enumerate(self.blocks()):
            g = (cls + m.lmbd * parts[:, i]) / (1 + m.lmbd)
            if c.cosine:
                h = block[2](block[1](block[0](g)))
                logits.append(cosface_logits(h, block[3].weight, None, scale=c.scale))
            else:
                logits.append(block(g))
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
            ce = ce + F.cross_entropy(part, pids, label_smoothing=m.label_smoothing)
        logs = {"loss_ce": ce.detach()}
        if not m.metric_loss:
            return ce, logs
        tri = triplet_loss_fastreid(outputs["gelt"].flatten(1), pids, m.triplet.margin)
        logs["loss_triplet"] = tri.detach()
        return ce + tri, logs
