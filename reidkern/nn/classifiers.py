"""Per-part classifier blocks run as one batched computation (LA-Transformer's 14 ClassBlocks)."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from reidkern.nn.part_ops import cosine_part_logits


class PartClassBlocks(nn.Module):
    """P independent ``ClassBlock``s (Linear → BatchNorm1d → Dropout → Linear), one per part, run
    as one batched GEMM per layer instead of a Python loop of P small ones.

    Part p computes ``logits_p = W2_p · dropout(BN_p(W1_p x_p + b1_p)) + b2_p``; the BatchNorms are
    per part and per channel (training: batch statistics, running averages with ``momentum``;
    eval: running statistics), exactly as P separate ``nn.BatchNorm1d(bottleneck)``. Source: the
    LA-Transformer official code's ``ClassBlock(768, #ids, droprate=0.5, relu=False, bnorm=True,
    num_bottleneck=256)`` (itself from the Zheng et al. PCB/baseline code), its initialisation
    included: W1 Kaiming-normal (fan_out), BN weight N(1, 0.02), W2 N(0, 0.001), biases 0.

    With ``cosine=True`` the last layer gives AM-Softmax/CosFace logits without margin
    ``scale · cos(h_p, W2_p[c])`` (no bias); the margin is applied by the loss, which knows the labels.

    Parameters (state_dict names): ``fc1_weight`` [P, bottleneck, in], ``fc1_bias`` [P, bottleneck],
    ``bn_weight``/``bn_bias`` [P, bottleneck], buffers ``bn_running_mean``/``bn_running_var``
    [P, bottleneck], ``fc2_weight`` [P, C, bottleneck], ``fc2_bias`` [P, C] (absent with cosine).

    Shapes: ``forward(x [B, P, in]) → (logits [B, P, C], bottleneck features [B, P, bottleneck])``.
    Raises ValueError when x is not [B, P, in].
    """

    def __init__(self, num_parts, in_features, bottleneck, num_classes, dropout=0.5, cosine=False,
                 scale=30.0, momentum=0.1, eps=1e-5):
        super().__init__()
        P, K, C = num_parts, bottleneck, num_classes
        self.num_parts, self.in_features, self.bottleneck, self.num_classes = P, in_features, K, C
        self.dropout, self.cosine, self.scale, self.momentum, self.eps = dropout, cosine, scale, momentum, eps
        self.fc1_weight = nn.Parameter(torch.empty(P, K, in_features))
        self.fc1_bias = nn.Parameter(torch.zeros(P, K))
        self.bn_weight = nn.Parameter(torch.empty(P, K))
        self.bn_bias = nn.Parameter(torch.zeros(P, K))
        self.register_buffer("bn_running_mean", torch.zeros(P, K))
        self.register_buffer("bn_running_var", torch.ones(P, K))
        self.fc2_weight = nn.Parameter(torch.empty(P, C, K))
        self.fc2_bias = None if cosine else nn.Parameter(torch.zeros(P, C))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            # kaiming_normal_(fan_out) of each [K, in] Linear weight: std = sqrt(2 / K)
            self.fc1_weight.normal_(0.0, math.sqrt(2.0 / self.bottleneck))
            self.bn_weight.normal_(1.0, 0.02)
            self.fc2_weight.normal_(0.0, 0.001)

    def extra_repr(self):
        return (f"num_parts={self.num_parts}, in_features={self.in_features}, bottleneck={self.bottleneck}, "
                f"num_classes={self.num_classes}, dropout={self.dropout}, cosine={self.cosine}")

    def forward(self, x):
        if x.dim() != 3 or x.shape[1] != self.num_parts or x.shape[2] != self.in_features:
            raise ValueError(f"x: expected [B, {self.num_parts}, {self.in_features}], got {tuple(x.shape)}")
        B, P, K = x.shape[0], self.num_parts, self.bottleneck
        # einsum runs one batched GEMM over the parts (no per-part weight copies)
        h = torch.einsum("bpi,pki->bpk", x, self.fc1_weight) + self.fc1_bias
        # P·K independent channels: one batch_norm call equals P BatchNorm1d(K) calls
        h = F.batch_norm(h.reshape(B, P * K), self.bn_running_mean.view(-1), self.bn_running_var.view(-1),
                         self.bn_weight.reshape(-1), self.bn_bias.reshape(-1), self.training,
                         self.momentum, self.eps).view(B, P, K)
        z = F.dropout(h, self.dropout, self.training)
        if self.cosine:
            # the class weights are not normalised as a copy: the logits divide by their norms
            logits = cosine_part_logits(F.normalize(z, dim=-1), self.fc2_weight, self.scale)
        else:
            logits = torch.einsum("bpk,pck->bpc", z, self.fc2_weight) + self.fc2_bias
        return logits, h
