"""ResNet-50 with torchvision's parameter names, returning the stage feature maps ReID needs.

Source: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the
"v1.5" form torchvision uses (stride on the 3×3 convolution of the Bottleneck). The ReID
"last stride 1" trick (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
ReID", CVPRW 2019) keeps layer4 at 1/16 resolution: a 256×128 input gives 2048×16×8.

Parameter names equal torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1``..``layer4``
with ``Bottleneck`` ``conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/.1``, ``fc``), so a
torchvision checkpoint file loads unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from ..weights import LoadResult, WeightsLike, load_weights

__all__ = ["Bottleneck", "ResNetTrunk", "ResNet50", "resnet50", "STAGES", "STAGE_CHANNELS"]

#: Stage names in forward order. "stem" = conv1→bn1→relu→maxpool (1/4 resolution).
STAGES: Tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
#: Output channels of each stage.
STAGE_CHANNELS: Dict[str, int] = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
_LAYERS = (3, 4, 6, 3)
_WIDTHS = (64, 128, 256, 512)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1×1 → 3×3 (stride) → 1×1, ×4 expansion), torchvision names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(index: int, stride: int) -> nn.Sequential:
    planes = _WIDTHS[index]
    inplanes = 64 if index == 0 else _WIDTHS[index - 1] * Bottleneck.expansion
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    blocks = [Bottleneck(inplanes, planes, stride, downsample)]
    blocks += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, _LAYERS[index])]
    return nn.Sequential(*blocks)


def _check_stages(out_stages, allowed: Sequence[str], name: str = "out_stages") -> Tuple[str, ...]:
    if isinstance(out_stages, str):
        out_stages = (out_stages,)
    try:
        stages = tuple(out_stages)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of stage names, got {type(out_stages).__name__}") from None
    if not stages:
        raise ValueError(f"{name}: must name at least one stage of {tuple(allowed)}")
    bad = [s for s in stages if s not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown stage(s) {bad}; expected names from {tuple(allowed)}")
    return stages


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected an image batch of shape [B, 3, H, W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


class ResNetTrunk(nn.Module):
    """Any contiguous run of ResNet-50 stages, with torchvision's attribute names.

    ``ResNetTrunk(("stem", "layer1"))`` holds ``conv1``, ``bn1``, ``maxpool``, ``layer1``;
    ``ResNetTrunk(("layer2", "layer3", "layer4"))`` holds ``layer2``..``layer4``. Used as the
    full backbone and as the parts of the two-stream network.

    Args:
        stages: contiguous stage names from ``STAGES``.
        last_stride: stride of layer4's first block (1 for ReID, 2 for ImageNet).
    """

    def __init__(self, stages: Sequence[str], last_stride: int = 1):
        super().__init__()
        stages = _check_stages(stages, STAGES, "stages")
        idx = [STAGES.index(s) for s in stages]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"stages: must be contiguous and in order {STAGES}, got {stages}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride: expected 1 or 2, got {last_stride!r}")
        self.stages = stages
        for s in stages:
            if s == "stem":
                self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.relu = nn.ReLU(inplace=True)
                self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            else:
                i = int(s[-1]) - 1
                stride = (1, 2, 2, last_stride)[i]
                setattr(self, s, _make_layer(i, stride))
        _init_weights(self)

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "stem":
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return getattr(self, name)(x)

    def forward(self, x: torch.Tensor, out_stages: Optional[Iterable[str]] = None) -> "OrderedDict[str, torch.Tensor]":
        """Run the stages in order; return ``{stage: [B, C, H, W]}`` for ``out_stages``
        (default: the last stage). Stops after the deepest stage asked for."""
        wanted = set(_check_stages(out_stages, self.stages)) if out_stages is not None else {self.stages[-1]}
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for s in self.stages:
            x = self.run_stage(s, x)
            if s in wanted:
                out[s] = x
                if len(out) == len(wanted):
                    break
        return out


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet50(ResNetTrunk):
    """ResNet-50 feature extractor with torchvision names.

    Args:
        last_stride: stride of layer4 (1 = ReID default: 256×128 → 2048×16×8; 2 = ImageNet).
        out_stages: stages returned by ``forward``, any of ``"stem"``, ``"layer1"``..``"layer4"``,
            ``"pool"`` (global average pool of layer4, [B, 2048]) and ``"fc"`` (logits, needs
            ``num_classes``). E.g. DPTI: ``("layer3", "layer4")``; LF2: ``("layer4",)``.
        num_classes: if given, builds torchvision's ``fc`` head Linear(2048, num_classes);
            default None (a ReID backbone has no ImageNet head).

    Forward:
        x: float tensor [B, 3, H, W] (ImageNet-normalised RGB).
        returns: ``OrderedDict`` stage name → tensor. Spatial sizes at 256×128 input:
        stem 64×64×32, layer1 256×64×32, layer2 512×32×16, layer3 1024×16×8,
        layer4 2048×16×8 (last_stride=1) or 2048×8×4 (last_stride=2).

    Raises:
        TypeError / ValueError: for a non-tensor or non-[B, 3, H, W] input.
    """

    OUTPUTS = STAGES + ("pool", "fc")

    def __init__(self, last_stride: int = 1, out_stages: Sequence[str] = ("layer4",), num_classes: Optional[int] = None):
        super().__init__(STAGES, last_stride)
        self.out_stages = _check_stages(out_stages, self.OUTPUTS)
        if num_classes is not None:
            if not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes: expected a positive int or None, got {num_classes!r}")
            self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        elif "fc" in self.out_stages:
            raise ValueError("out_stages: 'fc' needs num_classes")
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        _check_image(x)
        conv = [s for s in self.out_stages if s in STAGES]
        head = [s for s in self.out_stages if s not in STAGES]
        if head and "layer4" not in conv:
            conv.append("layer4")
        feats = super().forward(x, conv)
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        pooled = torch.flatten(self.avgpool(feats["layer4"]), 1) if head else None
        for s in self.out_stages:
            if s == "pool":
                out[s] = pooled
            elif s == "fc":
                out[s] = self.fc(pooled)
            else:
                out[s] = feats[s]
        return out

    def load_weights(self, weights: WeightsLike, strict: bool = True) -> LoadResult:
        """Load a torchvision-layout checkpoint (file or state_dict); ``fc.*`` is ignored when
        this model has no ``fc``. See ``reidkern.models.weights.load_weights`` for errors."""
        ignore = () if hasattr(self, "fc") else ("fc.",)
        return load_weights(self, weights, strict=strict, ignore_prefixes=ignore)


def resnet50(
    last_stride: int = 1,
    weights: Optional[WeightsLike] = None,
    out_stages: Sequence[str] = ("layer4",),
    num_classes: Optional[int] = None,
    strict: bool = True,
) -> ResNet50:
    """Build a ResNet-50 (torchvision names), optionally loading local weights.

    Args:
        last_stride: 1 (ReID) or 2 (ImageNet).
        weights: None (random init), a local ``.pth``/``.pt``/``.safetensors`` path, or a
            state_dict — e.g. torchvision's ``resnet50-0676ba61.pth`` or ``resnet50-19c8e357.pth``.
            Its ``fc`` keys are ignored unless ``num_classes`` is given. Never downloads.
        out_stages, num_classes: see ``ResNet50``.
        strict: see ``reidkern.models.weights.load_weights``.

    Raises:
        FileNotFoundError: ``weights`` path missing. ValueError: unreadable file or key/shape
        mismatch (lists the keys). ValueError: bad ``last_stride``/``out_stages``.
    """
    model = ResNet50(last_stride=last_stride, out_stages=out_stages, num_classes=num_classes)
    if weights is not None:
        model.load_weights(weights, strict=strict)
    return model
