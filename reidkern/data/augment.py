"""The field's training and test pipelines, on PIL + torch (no torchvision).

Training (reid-strong-baseline, torchreid, fast-reid, AGW): resize to H×W → random horizontal flip
→ zero-pad ``pad`` pixels each side + random H×W crop → [0, 1] tensor → ImageNet normalisation →
random erasing (Zhong et al., AAAI 2020: area 2–40 %, aspect 0.3–3.33, filled with ``erase_value``).
Visible–infrared training may add channel augmentation (Ye et al., "Channel Augmented Joint
Learning", ICCV 2021, official CAJ code): visible images get :class:`ChannelExchange` (every
channel replaced by one random R/G/B channel), infrared images :class:`ChannelAdapGray`.
Test: resize → tensor → normalise.

Randomness comes from ``torch``'s global generator (or the ``generator`` given), which the
DataLoader seeds per worker, so runs are reproducible under ``torch.manual_seed``.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch

from reidkern.data.records import INFRARED, VISIBLE
from reidkern.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ImageLike, check_interpolation, load_image,
                                      normalize, resize, to_tensor)

__all__ = [
    "Compose", "Resize", "RandomHorizontalFlipImage", "PadCrop", "RandomErasing", "ChannelExchange",
    "ChannelAdapGray", "build_transforms",
]


def _uniform(lo: float, hi: float, g) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(lo: int, hi: int, g) -> int:
    """Uniform int in [lo, hi] (inclusive, like ``random.randint``)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class Compose:
    """Apply callables in order; the repr lists them."""

    def __init__(self, steps: Sequence[Callable]):
        self.steps: List[Callable] = list(steps)

    def __call__(self, x):
        for s in self.steps:
            x = s(x)
        return x

    def __repr__(self) -> str:
        inner = "\n".join(f"  {s!r}" for s in self.steps)
        return f"Compose(\n{inner}\n)"


class Resize:
    """Path/PIL image → RGB PIL image resized to (height, width), bilinear or bicubic."""

    def __init__(self, height: int, width: int, interpolation: str = "bilinear"):
        self.size, self.interpolation = (height, width), interpolation

    def __call__(self, image: ImageLike):
        return resize(load_image(image), self.size, self.interpolation)

    def __repr__(self):
        return f"Resize{self.size}" + ("" if self.interpolation == "bilinear" else f"({self.interpolation})")


class ToTensor:
    """PIL → float32 [3, H, W] in [0, 1]."""

    def __call__(self, image):
        return to_tensor(image)

    def __repr__(self):
        return "ToTensor()"


class Normalize:
    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, x):
        return normalize(x, self.mean, self.std)

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomHorizontalFlipImage:
    """Mirror a [3, H, W] tensor with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = p, generator

    def __call__(self, x):
        return x.flip(-1) if float(torch.rand((), generator=self.generator)) < self.p else x

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class PadCrop:
    """Zero-pad ``pad`` pixels on every side of a [3, H, W] tensor in [0, 1] (black, as
    torchvision's ``Pad(pad)`` on a PIL image) and crop a random H×W window back out."""

    def __init__(self, pad: int = 10, generator: Optional[torch.Generator] = None):
        self.pad, self.generator = pad, generator

    def __call__(self, x):
        if self.pad <= 0:
            return x
        h, w = x.shape[-2:]
        xp = torch.nn.functional.pad(x, (self.pad,) * 4)
        top = _randint(0, 2 * self.pad, self.generator)
        left = _randint(0, 2 * self.pad, self.generator)
        return xp[..., top:top + h, left:left + w].contiguous()

    def __repr__(self):
        return f"PadCrop(pad={self.pad})"


class RandomErasing:
    """Random erasing (Zhong et al., AAAI 2020), as reid-strong-baseline / CAJ run it on the
    normalised tensor: with probability ``p`` try up to 100 rectangles of area ``sl``–``sh`` of the
    image and aspect ``r1``–1/``r1``; the first that fits is filled with ``value`` per channel."""

    def __init__(self, p: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                 value: Sequence[float] = IMAGENET_MEAN, generator: Optional[torch.Generator] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random_erasing: expected a probability in [0, 1], got {p!r}")
        self.p, self.sl, self.sh, self.r1 = p, sl, sh, r1
        self.value = tuple(value)
        self.generator = generator

    def __call__(self, x):
        g = self.generator
        if self.p == 0 or float(torch.rand((), generator=g)) >= self.p:
            return x
        _, H, W = x.shape
        for _ in range(100):
            target = _uniform(self.sl, self.sh, g) * H * W
            aspect = _uniform(self.r1, 1.0 / self.r1, g)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < W and h < H:
                top, left = _randint(0, H - h, g), _randint(0, W - w, g)
                x = x.clone()
                x[:, top:top + h, left:left + w] = torch.tensor(self.value, dtype=x.dtype).view(3, 1, 1)
                return x
        return x

    def __repr__(self):
        return f"RandomErasing(p={self.p}, sl={self.sl}, sh={self.sh}, r1={self.r1})"


_GRAY = (0.2989, 0.5870, 0.1140)


def _gray(x):
    return (_GRAY[0] * x[0] + _GRAY[1] * x[1] + _GRAY[2] * x[2]).expand(3, *x.shape[1:]).clone()


class ChannelExchange:
    """CAJ's visible augmentation: draw ``idx`` uniformly in 0..``gray``; idx 0/1/2 copies channel
    R/G/B into all three, a larger idx turns the image grey (0.2989 R + 0.587 G + 0.114 B). CAJ uses
    ``gray=2``, i.e. never grey."""

    def __init__(self, gray: int = 2, generator: Optional[torch.Generator] = None):
        self.gray, self.generator = gray, generator

    def __call__(self, x):
        idx = _randint(0, self.gray, self.generator)
        if idx < 3:
            return x[idx:idx + 1].expand_as(x).clone()
        return _gray(x)

    def __repr__(self):
        return f"ChannelExchange(gray={self.gray})"


class ChannelAdapGray:
    """CAJ's infrared augmentation: idx uniform in 0..3; 0/1/2 copy one channel into all three;
    3 turns the image grey with probability ``p`` (else leaves it)."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = p, generator

    def __call__(self, x):
        idx = _randint(0, 3, self.generator)
        if idx < 3:
            return x[idx:idx + 1].expand_as(x).clone()
        if float(torch.rand((), generator=self.generator)) <= self.p:
            return _gray(x)
        return x

    def __repr__(self):
        return f"ChannelAdapGray(p={self.p})"


def build_transforms(height: int, width: int, train: bool, *, flip_p: float = 0.5, pad: int = 10,
                     random_erasing: float = 0.5, channel_aug: bool = False, modality: int = VISIBLE,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     erase_value: Optional[Sequence[float]] = None,
                     generator: Optional[torch.Generator] = None, interpolation: str = "bilinear") -> Compose:
    """The field's image pipeline: path/PIL image → normalised float32 tensor [3, height, width].

    Args:
        height, width: output size in pixels (e.g. 256×128, 384×128, 288×144 for VI-ReID).
        train: training pipeline (flip, pad + crop, erasing, channel aug) or test pipeline.
        flip_p: horizontal flip probability (0 disables).
        pad: zero padding before the random crop, pixels (0 disables).
        random_erasing: erasing probability (0 disables).
        channel_aug: add CAJ channel augmentation (after erasing, as CAJ): ChannelExchange(gray=2)
            for ``modality=VISIBLE``, ChannelAdapGray(0.5) for ``INFRARED``.
        modality: the images' modality (only used by ``channel_aug``).
        mean, std: normalisation (ImageNet by default).
        erase_value: erasing fill per channel (default ``mean``, as reid-strong-baseline passes it).
        generator: torch.Generator for every random draw (default: torch's global one).
        interpolation: of the resize, "bilinear" (default) or "bicubic".

    Raises:
        ValueError: non-positive size, probabilities outside [0, 1], negative pad, unknown modality
            or interpolation.
    """
    for arg, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    for arg, v in (("flip_p", flip_p), ("random_erasing", random_erasing)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{arg}: expected a probability in [0, 1], got {v!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad: expected a non-negative int, got {pad!r}")
    if modality not in (VISIBLE, INFRARED):
        raise ValueError(f"modality: expected VISIBLE (0) or INFRARED (1), got {modality!r}")
    steps: List[Callable] = [Resize(height, width, check_interpolation(interpolation)), ToTensor()]
    if train:
        if flip_p > 0:
            steps.append(RandomHorizontalFlipImage(flip_p, generator))
        if pad > 0:
            steps.append(PadCrop(pad, generator))
    steps.append(Normalize(mean, std))
    if train:
        if random_erasing > 0:
            steps.append(RandomErasing(random_erasing, value=erase_value or mean, generator=generator))
        if channel_aug:
            steps.append(ChannelExchange(2, generator) if modality == VISIBLE else ChannelAdapGray(0.5, generator))
    return Compose(steps)
