"""OSNet x0.25 (omni-scale network) with torchreid's parameter names.

Source: Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification" (ICCV 2019),
architecture as in torchreid's ``osnet_x0_25``: conv1 7×7/2 + maxpool 3×3/2; three stages of
two OSBlocks each (bottleneck 1×1 → four streams of 1, 2, 3, 4 "lite 3×3" layers (1×1 conv +
depthwise 3×3) → a unified aggregation gate shared by the streams (GAP → 1×1 → ReLU → 1×1 →
sigmoid) → 1×1 linear, plus a residual with a 1×1 projection when channels change); a
transition (1×1 conv + 2×2 average pool) after stages 2 and 3; conv5 1×1; global average
pool; fc = Linear(128, 512) → BatchNorm1d → ReLU. Channels 16, 64, 96, 128 for x0.25.

Two forms of the same network (the constructor's ``folded`` argument):

* ``folded=False`` (default): each convolution is followed by its BatchNorm, as trained —
  the layout of a torchreid state_dict (``conv1.conv.weight``, ``conv1.bn.running_var``,
  ``conv2.0.conv2a.bn.weight``, ...). Load torchreid ``.pth`` files into this form.
* ``folded=True``: BatchNorm folded into the preceding convolution (conv with bias, no
  ``bn``), the form of ONNX exports such as ``osnet_x0_25_msmt17.onnx``; ``fold_bn()``
  turns a trained unfolded model into this form. ``fc.1`` (BatchNorm1d) is kept in both.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..weights import LoadResult, WeightsLike, load_weights
from .resnet import _check_image

__all__ = ["OSNet", "osnet_x0_25"]


class ConvLayer(nn.Module):
    """Conv → BN → (ReLU). torchreid's ConvLayer / Conv1x1 / Conv1x1Linear share these names."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, relu: bool = True, folded: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=folded)
        self.bn = nn.Identity() if folded else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class LightConv3x3(nn.Module):
    """Lite 3×3: 1×1 conv (no bias) → depthwise 3×3 conv → BN → ReLU."""

    def __init__(self, cin: int, cout: int, folded: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=folded)
        self.bn = nn.Identity() if folded else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate: x · sigmoid(fc2(relu(fc1(GAP(x))))), reduction 16."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))
        return x * w


class OSBlock(nn.Module):
    """Omni-scale residual block (bottleneck reduction 4, streams of 1–4 lite 3×3 layers)."""

    def __init__(self, cin: int, cout: int, folded: bool = False):
        super().__init__()
        mid = cout // 4
        self.conv1 = ConvLayer(cin, mid, 1, folded=folded)
        self.conv2a = LightConv3x3(mid, mid, folded)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid, folded) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid, folded) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid, folded) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = ConvLayer(mid, cout, 1, relu=False, folded=folded)
        self.downsample = ConvLayer(cin, cout, 1, relu=False, folded=folded) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.gate(self.conv2a(x1)) + self.gate(self.conv2b(x1)) + self.gate(self.conv2c(x1)) + self.gate(self.conv2d(x1))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv3(x2) + identity)


def _stage(cin: int, cout: int, transition: bool, folded: bool) -> nn.Sequential:
    layers = [OSBlock(cin, cout, folded), OSBlock(cout, cout, folded)]
    if transition:
        layers.append(nn.Sequential(ConvLayer(cout, cout, 1, folded=folded), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet feature extractor (torchreid names), eval output = the 512-d ``fc`` embedding.

    Args:
        channels: (c1, c2, c3, c4); (16, 64, 96, 128) is x0.25.
        feature_dim: fc size (512).
        folded: BatchNorm folded into the convs (ONNX form) or not (torchreid form); see the
            module docstring.
        num_classes: if given, adds torchreid's ``classifier`` Linear(feature_dim, num_classes)
            and returns logits in training mode (as torchreid does); default None.

    Forward:
        x: float32 [B, 3, H, W], RGB scaled to [0, 1] then ImageNet mean/std normalised; the
        model was trained at 256×128. Returns [B, 512] features (after fc's ReLU, as
        torchreid's ``model.eval()`` output), or [B, num_classes] logits when training with
        a classifier.
    """

    def __init__(self, channels=(16, 64, 96, 128), feature_dim: int = 512, folded: bool = False, num_classes: Optional[int] = None):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.folded = folded
        self.conv1 = ConvLayer(3, c1, 7, stride=2, padding=3, folded=folded)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c1, c2, True, folded)
        self.conv3 = _stage(c2, c3, True, folded)
        self.conv4 = _stage(c3, c4, False, folded)
        self.conv5 = ConvLayer(c4, c4, 1, folded=folded)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c4, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def featuremaps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] → conv5 output [B, 128, H/16, W/16] (16×8 at 256×128)."""
        _check_image(x)
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.fc(torch.flatten(self.global_avgpool(self.featuremaps(x)), 1))
        if self.training and self.classifier is not None:
            return self.classifier(v)
        return v

    @torch.no_grad()
    def fold_bn(self) -> "OSNet":
        """Return a new ``folded=True`` OSNet computing the same eval-mode function: each
        conv's BatchNorm (running statistics) is folded into the conv's weight and bias."""
        if self.folded:
            raise ValueError("fold_bn: this model is already folded")
        out = OSNet(folded=True, feature_dim=self.fc[0].out_features,
                    channels=(self.conv1.conv.out_channels, self.conv2[0].conv3.conv.out_channels,
                              self.conv3[0].conv3.conv.out_channels, self.conv4[0].conv3.conv.out_channels),
                    num_classes=self.classifier.out_features if self.classifier is not None else None)
        src = dict(self.named_modules())
        sd = {}
        for name, mod in out.named_modules():
            if isinstance(mod, (ConvLayer, LightConv3x3)):
                s = src[name]
                conv, bn = (s.conv, s.bn) if isinstance(s, ConvLayer) else (s.conv2, s.bn)
                cname = name + (".conv" if isinstance(s, ConvLayer) else ".conv2")
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                sd[cname + ".weight"] = conv.weight * scale.reshape(-1, 1, 1, 1)
                sd[cname + ".bias"] = bn.bias - bn.running_mean * scale
        own = self.state_dict()
        for k in out.state_dict():
            if k not in sd:
                sd[k] = own[k]
        out.load_state_dict(sd)
        return out.train(self.training)

    def load_weights(self, weights: WeightsLike, strict: bool = True) -> LoadResult:
        """Load a local checkpoint: ``.onnx`` (needs ``onnx``; only into ``folded=True``) or a
        torchreid-layout ``.pth``/``.pt``/``.safetensors``/state_dict. ``classifier.*`` is
        ignored when this model has none. Errors as ``reidkern.models.weights.load_weights``."""
        import os

        if isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx"):
            if not self.folded:
                raise ValueError(
                    "weights: an ONNX export has BatchNorm folded into the convolutions; "
                    "build the model with folded=True to load it"
                )
            from .osnet_onnx import read_onnx_state_dict

            weights = read_onnx_state_dict(weights)
        ignore = ("classifier.",) if self.classifier is None else ()
        return load_weights(self, weights, strict=strict, ignore_prefixes=ignore)


def osnet_x0_25(weights: Optional[WeightsLike] = None, folded: Optional[bool] = None, strict: bool = True, num_classes: Optional[int] = None) -> OSNet:
    """Build OSNet x0.25, optionally loading local weights.

    Args:
        weights: None; a ``.onnx`` export (e.g. ``reid-mini/osnet_x0_25_msmt17.onnx``; needs the
            optional ``onnx`` package; BN folded); or a torchreid ``.pth``/``.pt``/
            ``.safetensors`` file or state_dict (with BN). Never downloads.
        folded: form of the model (see module docstring); default: True for ``.onnx`` weights,
            else False.
        strict: see ``reidkern.models.weights.load_weights``.
        num_classes: optional classifier head (torchreid's ``classifier``).

    Returns:
        ``OSNet`` in eval mode if weights were loaded, else in training mode.

    Raises:
        FileNotFoundError: missing file. ImportError: ``.onnx`` without ``onnx``. ValueError:
        unreadable file, an ONNX graph that is not this architecture, or mismatched keys
        (listed).
    """
    import os

    is_onnx = isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx")
    if folded is None:
        folded = is_onnx
    model = OSNet(folded=folded, num_classes=num_classes)
    if weights is not None:
        model.load_weights(weights, strict=strict)
        model.eval()
    return model
