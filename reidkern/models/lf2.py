"""LF2 — Learning Feature Fusion for unsupervised domain adaptive person ReID.

Source: Ding & Zhou, "Learning Feature Fusion for Unsupervised Domain Adaptive Person
Re-identification" (ICPR 2022, arXiv 2205.09495); structure, losses and schedule as the official
code (github DJEddyking/LF2, ``reid/models/resnet.py``, ``reid/trainers.py``, ``target_train.py``).

One network (:class:`LF2Net`, used as student and as teacher) on a backbone's last feature map
``[B, C, H, W]`` (ResNet-50 with last stride 1 at 256×128: C = 2048, 16×8):

* global branch: GAP + GMP → BatchNorm1d(C) (bias frozen) → ``global_feat`` [B, C]; the
  classifier (Linear(C → num_classes), no bias) reads it;
* K = 2 horizontal parts (rows ``[0, H//2)`` and ``[H//2, 2·(H//2))``, as the official split): per
  part concat(GAP, GMP) [B, 2C] → Linear(2C → C) → BatchNorm1d(C) (bias frozen);
* per part a CBAM-style channel attention (shared bias-free MLP C → C/4 → C on the part's GAP and
  GMP, summed, sigmoid); the part's fusion weight is ``(GAP + GMP)(part) · attention`` [B, C];
* ``bottleneck``: the stage-1 (source) head's BatchNorm1d(C) (bias frozen) — the official network
  keeps it in stage 2 too (computed, unused), so it is counted in the parameters.

:class:`FeatureFusion` (official ``Fuse``) weights the *teacher's* global map by the *student's*
part weights, pools (GAP + GMP) and batch-normalises: three [B, C] features (global, upper, lower)
used **only** as clustering features (flip-averaged and L2-normalised by the pseudo-label step).

:class:`LF2` holds student, teacher (EMA of the student, α = min(1 − 1/(t+1), 0.999) every
iteration) and the fusion module. Inference is the teacher's L2-normalised
concat[global, upper, lower] (3C = 6144-d for ResNet-50), flip-averaged by the extractor.

Facts of the official code kept here (see docs/models/lf2.md): the channel-attention MLPs and the
fusion BatchNorms receive no gradient (their outputs reach only the clustering features), so they
keep their initial values; the teacher runs in training mode during training (its BatchNorm
running statistics, and the fusion's, come from its own forward passes; only parameters are
averaged).
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_label_smoothing
from .backbones.resnet import ResNet50

__all__ = ["ChannelAttention", "FeatureFusion", "LF2Net", "LF2", "LF2Output", "LF2Loss", "lf2_resnet50",
           "lf2_osnet_x0_25", "official_parameter_count", "ema_alpha"]


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018): ``sigmoid(mlp(GMP(x)) + mlp(GAP(x)))``.

    ``mlp`` = 1×1 conv C → C/reduction, ReLU, 1×1 conv → C, no biases (official
    ``ChannelAttention(2048, reduction=4)``: 2048 → 512 → 2048). Parameter names ``se.0`` /
    ``se.2`` as the official code.

    Shapes: ``x`` [B, C, h, w] float → [B, C, 1, 1] in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        if channels % reduction:
            raise ValueError(f"reduction: {reduction} does not divide channels={channels}")
        self.se = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.se(x.amax((2, 3), keepdim=True)) + self.se(x.mean((2, 3), keepdim=True)))


def _frozen_bias_bn(channels: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)  # official: BNNeck-style bias frozen
    return bn


POOLINGS = ("avgmax", "avg")
PART_INITS = ("kaiming", "identity")


def _pool(x: torch.Tensor, pooling: str = "avgmax") -> torch.Tensor:
    """``"avgmax"``: GAP + GMP over the spatial dims (official); ``"avg"``: GAP only.
    [B, C, h, w] → [B, C]."""
    if pooling == "avg":
        return x.mean((2, 3))
    return x.mean((2, 3)) + x.amax((2, 3))


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


class LF2Output(NamedTuple):
    """What :class:`LF2Net` computes for a batch (all float, B = batch size, C = channels).

    global_feat, upper_feat, lower_feat: [B, C] branch features after their BatchNorm.
    logits: [B, num_classes] classifier on ``global_feat`` (None without a classifier).
    upper_weight, lower_weight: [B, C] fusion weights of the parts (pooled part × attention).
    featmap: [B, C, H, W] the backbone's last feature map.
    """

    global_feat: torch.Tensor
    upper_feat: torch.Tensor
    lower_feat: torch.Tensor
    logits: Optional[torch.Tensor]
    upper_weight: torch.Tensor
    lower_weight: torch.Tensor
    featmap: torch.Tensor


class LF2Net(nn.Module):
    """The LF2 network (student or teacher): a backbone and the LF2 heads (module docstring).

    Args:
        backbone: module with ``featuremaps(x [B, 3, H, W]) -> [B, C, h, w]`` (reidkern's
            ``ResNet50`` / ``OSNet`` have it). ``h >= 2``.
        channels: C, the feature map's channels (2048 for ResNet-50, 128 for OSNet x0.25).
        num_classes: classifier outputs (pseudo-label clusters in stage 2, source identities in
            stage 1); 0 = no classifier. Re-sized by :meth:`reset_classifier`.
        reduction: channel-attention MLP reduction (official 4).
        pooling: the global branch's pooling, ``"avgmax"`` (GAP + GMP, official) or ``"avg"``
            (GAP only: keeps a source model trained with GAP, such as OSNet, at its own
            embedding — on OSNet x0.25's map GAP + GMP scores 10 mAP points lower on Con-ReID,
            see docs/models/lf2.md). The parts' input stays concat(GAP, GMP) either way.
        part_init: the part projections' init, ``"kaiming"`` (official: Kaiming normal, fan-out)
            or ``"identity"`` (weight [I, 0], bias 0: at the start each part's feature is its
            GAP, so that a pretrained map gives useful part features from the first step).

    Forward: ``x`` float [B, 3, H, W] → :class:`LF2Output`.

    Raises:
        TypeError: a backbone without ``featuremaps``. ValueError: bad num_classes, pooling or
        part_init.
    """

    # Skipped when a checkpoint has another number of classes (reidkern.models.weights.load_weights).
    id_classifier_prefixes = ("classifier.",)

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int = 0, reduction: int = 4,
                 pooling: str = "avgmax", part_init: str = "kaiming"):
        super().__init__()
        _check_choice("pooling", pooling, POOLINGS)
        _check_choice("part_init", part_init, PART_INITS)
        if not hasattr(backbone, "featuremaps"):
            raise TypeError("backbone: expected a module with featuremaps(x) -> [B, C, H, W]")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
        self.backbone = backbone
        self.channels = channels
        self.pooling = pooling
        self.bottleneck = _frozen_bias_bn(channels)
        self.bn_global = _frozen_bias_bn(channels)
        self.bn_upper = _frozen_bias_bn(channels)
        self.bn_lower = _frozen_bias_bn(channels)
        self.fc_upper = nn.Linear(2 * channels, channels)
        self.fc_lower = nn.Linear(2 * channels, channels)
        for fc in (self.fc_upper, self.fc_lower):
            if part_init == "identity":
                with torch.no_grad():
                    fc.weight.zero_()
                    fc.weight[:, :channels].copy_(torch.eye(channels))
            else:
                nn.init.kaiming_normal_(fc.weight, mode="fan_out")
            nn.init.zeros_(fc.bias)
        self.ca_upper = ChannelAttention(channels, reduction)
        self.ca_lower = ChannelAttention(channels, reduction)
        self.classifier: Optional[nn.Linear] = None
        self.reset_classifier(num_classes)

    @property
    def num_classes(self) -> int:
        return 0 if self.classifier is None else self.classifier.out_features

    def reset_classifier(self, num_classes: int, weight: Optional[torch.Tensor] = None) -> None:
        """Make the classifier Linear(C → num_classes, bias=False) with weight ``weight``
        [num_classes, C] when given (LF2: the L2-normalised cluster centroids), else N(0, 0.001²)
        (official init). ``num_classes=0`` removes it.

        An existing classifier keeps its ``weight`` Parameter object (only its data is replaced,
        whatever the new size), so an optimizer built over the model keeps training it.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
        if weight is not None:
            if weight.dim() != 2 or weight.shape != (num_classes, self.channels):
                raise ValueError(f"weight: expected shape [{num_classes}, {self.channels}], got "
                                 f"{list(weight.shape)}")
        if num_classes == 0:
            self.classifier = None
            return
        ref = self.bn_global.weight
        with torch.no_grad():
            data = torch.empty(num_classes, self.channels, device=ref.device, dtype=ref.dtype)
            if weight is None:
                nn.init.normal_(data, std=0.001)
            else:
                data.copy_(weight)
        if self.classifier is None:
            self.classifier = nn.Linear(self.channels, num_classes, bias=False, device=ref.device, dtype=ref.dtype)
        self.classifier.weight.data = data
        self.classifier.out_features = num_classes

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The classifier's size follows the clustering of the saved epoch: adopt it on load.
        w = state_dict.get(prefix + "classifier.weight")
        if w is not None and w.dim() == 2 and w.shape[0] != self.num_classes:
            self.reset_classifier(int(w.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def parts(self, featmap: torch.Tensor):
        """The K = 2 horizontal parts of [B, C, H, W] (rows [0, H//2), [H//2, 2·(H//2)))."""
        h = featmap.shape[2] // 2
        if h == 0:
            raise ValueError(f"featmap: needs at least 2 rows to split in 2 parts, got {list(featmap.shape)}")
        return featmap[:, :, :h], featmap[:, :, h:2 * h]

    def forward(self, x: torch.Tensor) -> LF2Output:
        return self.forward_head(self.backbone.featuremaps(x))

    def forward_head(self, featmap: torch.Tensor) -> LF2Output:
        """The LF2 heads on a backbone map [B, C, H, W] (everything after the backbone)."""
        global_feat = self.bn_global(_pool(featmap, self.pooling))
        upper, lower = self.parts(featmap)
        feats, weights = [], []
        for part, fc, bn, ca in ((upper, self.fc_upper, self.bn_upper, self.ca_upper),
                                 (lower, self.fc_lower, self.bn_lower, self.ca_lower)):
            avg, mx = part.mean((2, 3)), part.amax((2, 3))
            feats.append(bn(fc(torch.cat([avg, mx], dim=1))))
            weights.append((avg + mx) * ca(part).flatten(1))
        logits = self.classifier(global_feat) if self.classifier is not None else None
        return LF2Output(global_feat, feats[0], feats[1], logits, weights[0], weights[1], featmap)

    def source_forward(self, x: torch.Tensor):
        """Stage 1 (source pre-training, official ``resnet50_source``): ``(pooled [B, C], logits)``
        with pooled = GAP of the map (soft triplet on it), logits = classifier(bottleneck(pooled))
        (label-smoothed CE); in eval mode returns the test feature L2-normalise(bottleneck(pooled))."""
        pooled = self.backbone.featuremaps(x).mean((2, 3))
        bn = self.bottleneck(pooled)
        if not self.training:
            return F.normalize(bn, dim=1)
        if self.classifier is None:
            raise ValueError("source_forward in training needs a classifier (num_classes > 0)")
        return pooled, self.classifier(bn)

    @staticmethod
    def embedding(out: LF2Output) -> torch.Tensor:
        """Test feature of one network: L2-normalise(concat[global, upper, lower]) [B, 3C]."""
        return F.normalize(torch.cat([out.global_feat, out.upper_feat, out.lower_feat], dim=1), dim=1)


class FeatureFusion(nn.Module):
    """LF2's fusion module (official ``Fuse``): the teacher's global map ``x`` [B, C, H, W]
    weighted by the student's part weights ``upper_weight`` / ``lower_weight`` [B, C], each pooled
    (GAP + GMP; ``pooling="avg"``: GAP, as the networks' global branch) and batch-normalised
    (biases frozen), with the unweighted map as the third: returns ``(global, upper, lower)``
    clustering features, each [B, C]."""

    def __init__(self, channels: int, pooling: str = "avgmax"):
        super().__init__()
        _check_choice("pooling", pooling, POOLINGS)
        self.pooling = pooling
        self.bn_global = _frozen_bias_bn(channels)
        self.bn_upper = _frozen_bias_bn(channels)
        self.bn_lower = _frozen_bias_bn(channels)

    def forward(self, x: torch.Tensor, upper_weight: torch.Tensor, lower_weight: torch.Tensor):
        p = self.pooling
        g = self.bn_global(_pool(x, p))
        u = self.bn_upper(_pool(x * upper_weight[:, :, None, None], p))
        l_ = self.bn_lower(_pool(x * lower_weight[:, :, None, None], p))
        return g, u, l_


def ema_alpha(global_step: int, alpha: float = 0.999) -> float:
    """Mean-teacher momentum at iteration ``global_step`` (0-based): min(1 − 1/(t+1), alpha)
    (official ``_update_ema_variables``; t = 0 copies the student)."""
    if global_step < 0:
        raise ValueError(f"global_step: expected >= 0, got {global_step}")
    return min(1.0 - 1.0 / (global_step + 1), alpha)


class LF2(nn.Module):
    """Student, mean teacher and fusion module of LF2 (official ``Encoder``).

    Args:
        student: an :class:`LF2Net` (loaded from the stage-1 source model).
        teacher: its teacher; default a deep copy of ``student`` (official: both loaded from the
            same source checkpoint). Teacher parameters never require grad.

    ``forward(x)``:
      * training: the student's :class:`LF2Output` (for the loss); the teacher and the fusion run
        too, without grad and in training mode, only to keep their BatchNorm running statistics as
        the official code does (``update_teacher_stats=False`` skips it);
      * eval: the teacher's test feature L2-normalise(concat[global, upper, lower]) [B, 3C].

    ``clustering_features(x)`` (eval, no grad): the fusion module's (global, upper, lower), each
    [B, C] — the teacher's map weighted by the student's parts.
    """

    def __init__(self, student: LF2Net, teacher: Optional[LF2Net] = None, update_teacher_stats: bool = True):
        super().__init__()
        if not isinstance(student, LF2Net):
            raise TypeError(f"student: expected an LF2Net, got {type(student).__name__}")
        self.student = student
        self.teacher = copy.deepcopy(student) if teacher is None else teacher
        if not isinstance(self.teacher, LF2Net):
            raise TypeError(f"teacher: expected an LF2Net, got {type(self.teacher).__name__}")
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        ref = student.bn_global.weight
        self.fusion = FeatureFusion(student.channels, student.pooling).to(device=ref.device, dtype=ref.dtype)
        self.update_teacher_stats = update_teacher_stats

    @property
    def channels(self) -> int:
        return self.student.channels

    def train(self, mode: bool = True) -> "LF2":
        super().train(mode)
        return self

    def forward(self, x: torch.Tensor):
        if not self.training:
            return LF2Net.embedding(self.teacher(x))
        out = self.student(x)
        if self.update_teacher_stats:
            with torch.no_grad():
                t = self.teacher(x)
                self.fusion(t.featmap, out.upper_weight.detach(), out.lower_weight.detach())
        return out

    @torch.no_grad()
    def clustering_features(self, x: torch.Tensor):
        """(global, upper, lower) fusion features [B, C] each, from the current mode's BatchNorm."""
        s = self.student(x)
        t = self.teacher(x)
        return self.fusion(t.featmap, s.upper_weight, s.lower_weight)

    # The bench_models interface (benchmarks/model_cases/lf2.py): student backbone, heads, loss.
    def forward_backbone(self, img: torch.Tensor):
        return (self.student.backbone.featuremaps(img),)

    def forward_head(self, featmap: torch.Tensor) -> LF2Output:
        return self.student.forward_head(featmap)

    def loss(self, out: LF2Output, y_g: torch.Tensor, y_u: torch.Tensor, y_l: torch.Tensor):
        """:class:`LF2Loss` with one batch for the three terms (labels per branch)."""
        return LF2Loss()(out, y_g, out, y_u, out, y_l)

    @torch.no_grad()
    def update_teacher(self, global_step: int, alpha: float = 0.999) -> float:
        """teacher ← a·teacher + (1 − a)·student over the parameters (buffers are the teacher's
        own), a = :func:`ema_alpha` (global_step, alpha). Returns a."""
        a = ema_alpha(global_step, alpha)
        t_params = list(self.teacher.parameters())
        s_params = list(self.student.parameters())
        if len(t_params) != len(s_params):
            raise ValueError("teacher and student have different parameter lists")
        torch._foreach_mul_(t_params, a)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - a)
        return a

    @torch.no_grad()
    def set_classifier(self, centers: torch.Tensor) -> None:
        """Re-initialise student's and teacher's classifiers from cluster centres [k, C]
        (L2-normalised here, as the official code does each epoch)."""
        w = F.normalize(torch.as_tensor(centers, dtype=self.student.bn_global.weight.dtype,
                                        device=self.student.bn_global.weight.device), dim=1)
        self.student.reset_classifier(int(w.shape[0]), w)
        self.teacher.reset_classifier(int(w.shape[0]), w)
        self.teacher.classifier.weight.requires_grad_(False)  # when it was created here


class LF2Loss(nn.Module):
    """LF2's stage-2 loss (official ``SingelmeanTrainer``):

    ``CE_ls(global logits, y_g) + ST(global_feat, y_g) + part_weight · (ST(upper_feat, y_u) + ST(lower_feat, y_l))``

    with CE_ls the label-smoothed cross-entropy (ε = 0.1; official ``CrossEntropyLabelSmooth``,
    equal to ``F.cross_entropy(label_smoothing=ε)``) and ST reidkern's
    :class:`~reidkern.nn.SoftTripletLoss` (margin 0: softplus(d_ap − d_an), batch-hard mining on
    Euclidean distances of the features after their BatchNorm). The official code draws one P×K
    batch per label set: the global terms use the batch sampled by global pseudo-labels, the upper
    term the batch sampled by upper labels, the lower term the batch sampled by lower labels.

    Args:
        label_smoothing: ε (0.1). part_weight: weight of each part's triplet term (0.5).
        margin: SoftTripletLoss margin (0 = LF2). backend: mining kernel backend.

    ``forward(out_g, y_g, out_u, y_u, out_l, y_l)`` with :class:`LF2Output` s and int64 label
    tensors [B] → ``(loss scalar, logs dict of floats)``. Raises ValueError when ``out_g`` has no
    logits (the classifier is set by the first pseudo-label epoch).
    """

    def __init__(self, label_smoothing: float = 0.1, part_weight: float = 0.5, margin: float = 0.0, backend=None):
        super().__init__()
        from reidkern.nn import SoftTripletLoss

        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.part_weight = part_weight
        self.triplet = SoftTripletLoss(margin=margin, metric="euclidean", backend=backend)

    def forward(self, out_g: LF2Output, y_g: torch.Tensor, out_u: LF2Output, y_u: torch.Tensor,
                out_l: LF2Output, y_l: torch.Tensor):
        if out_g.logits is None:
            raise ValueError("out_g: the network has no classifier yet (run a pseudo-label epoch first)")
        ce = F.cross_entropy(out_g.logits, y_g, label_smoothing=self.label_smoothing)
        tri_g = self.triplet(out_g.global_feat, y_g)
        tri_u = self.triplet(out_u.upper_feat, y_u)
        tri_l = self.triplet(out_l.lower_feat, y_l)
        loss = ce + tri_g + self.part_weight * (tri_u + tri_l)
        with torch.no_grad():
            acc = (out_g.logits.argmax(1) == y_g).float().mean()
        logs = {"loss": float(loss.detach()), "ce": float(ce.detach()), "tri_global": float(tri_g.detach()),
                "tri_upper": float(tri_u.detach()), "tri_lower": float(tri_l.detach()), "acc": float(acc)}
        return loss, logs


class _ResNet50Trunk(ResNet50):
    """reidkern's ResNet-50 (torchvision names) with ``featuremaps(x) -> layer4 map``."""

    def featuremaps(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)["layer4"]


def lf2_resnet50(num_classes: int = 0, weights=None, last_stride: int = 1, pooling: str = "avgmax",
                 part_init: str = "kaiming") -> LF2Net:
    """LF2 network on ResNet-50 (the paper's; last stride 1, C = 2048).

    Args:
        num_classes: classifier size (0: none yet; stage 2 sets it from the clustering).
        weights: optional torchvision ResNet-50 weights for the backbone (local file/state_dict;
            ``fc.*`` ignored).
        last_stride: layer4 stride (official 1).
        pooling, part_init: see :class:`LF2Net` (defaults: the official head).
    """
    trunk = _ResNet50Trunk(last_stride=last_stride)
    if weights is not None:
        trunk.load_weights(weights)
    return LF2Net(trunk, 2048, num_classes, pooling=pooling, part_init=part_init)


def lf2_osnet_x0_25(num_classes: int = 0, weights=None, folded: Optional[bool] = None, pooling: str = "avg",
                    part_init: str = "identity") -> LF2Net:
    """LF2 heads on an OSNet x0.25 trunk (conv5 map, C = 128, 16×8 at 256×128) — a supported
    configuration for adapting the real MSMT17 OSNet model (not the paper's backbone).

    Args:
        weights: e.g. ``reid-mini/osnet_x0_25_msmt17.onnx`` (BN folded) or a torchreid ``.pth``.
        folded: see :func:`reidkern.models.backbones.osnet_x0_25`.
        pooling, part_init: see :class:`LF2Net`. The defaults here (GAP, identity part
            projections) start the teacher at the source model's own quality: OSNet was trained
            on GAP of this map, and GAP + GMP with Kaiming-initialised parts scores mAP 75.5 on
            Con-ReID where OSNet's embedding scores 83.4. ``("avgmax", "kaiming")`` is the
            official head.
    """
    from .backbones.osnet import osnet_x0_25

    trunk = osnet_x0_25(weights, folded=folded)
    trunk.train()
    return LF2Net(trunk, 128, num_classes, pooling=pooling, part_init=part_init)


def official_parameter_count(channels: int = 2048, num_classes: int = 700, backbone_params: int = 23_508_032,
                             reduction: int = 4) -> dict:
    """Parameters of the official stage-2 structure (``Encoder`` = student + teacher + Fuse),
    counted from its layer list: backbone (ResNet-50 without fc: 23,508,032), ``feat_bn``,
    ``BN_g``/``BN_u``/``BN_l`` (2C each), two ``adativeFC`` Linear(2C → C) with bias, two
    ``ChannelAttention`` (2·C·C/r, no bias), classifier C·k (no bias); Fuse: three BatchNorm1d(C).

    Returns ``{"network": n, "fusion": f, "total": 2n + f}``. With the defaults (k = 700, the
    Duke→Market setting): network 45,933,632, fusion 12,288, total 91,879,552.
    """
    c = channels
    heads = 4 * 2 * c + 2 * (2 * c * c + c) + 2 * (2 * c * (c // reduction)) + c * num_classes
    network = backbone_params + heads
    fusion = 3 * 2 * c
    return {"network": network, "fusion": fusion, "total": 2 * network + fusion}
