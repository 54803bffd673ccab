"""Image preprocessing the ReID field uses, with PIL and torch only (no torchvision).

The usual test-time pipeline (torchreid, fast-reid, TransReID): resize to H×W (bilinear),
scale to [0, 1], normalise with the ImageNet mean/std; at training time also a random
horizontal flip; flip test-time augmentation averages the features of an image and its
mirror.
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_image",
    "resize",
    "to_tensor",
    "normalize",
    "hflip",
    "preprocess",
    "preprocess_batch",
    "RandomHorizontalFlip",
]

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageLike = Union[str, "os.PathLike[str]", Image.Image]


def _size(size) -> Tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"size: expected (height, width) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def load_image(image: ImageLike) -> Image.Image:
    """Open an image file (or take a PIL image) as RGB.

    Raises FileNotFoundError for a missing path, TypeError for another type.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image: expected a path or a PIL.Image, got {type(image).__name__}")
    if not os.path.isfile(image):
        raise FileNotFoundError(f"image not found: {os.fspath(image)!r}")
    with Image.open(image) as im:
        return im.convert("RGB")


_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def check_interpolation(interpolation: str) -> str:
    """``interpolation`` if it is a resize mode of :func:`resize`; else ValueError naming it."""
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation: expected one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
    return interpolation


def resize(image: Image.Image, size: Sequence[int], interpolation: str = "bilinear") -> Image.Image:
    """Resize a PIL image to ``size`` = (height, width) pixels, ``interpolation`` "bilinear" (the
    field's default) or "bicubic" (torchvision's ``interpolation=3``, e.g. LA-Transformer's official
    code); PIL antialiases when shrinking, as torchvision's ``Resize`` on PIL images does.
    Raises ValueError for another interpolation."""
    h, w = _size(size)
    return image.resize((w, h), _INTERPOLATION[check_interpolation(interpolation)])


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image → float32 tensor [3, H, W] in [0, 1] (pixel / 255)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(x − mean) / std per channel, for x of shape [3, H, W] or [B, 3, H, W] (float)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x: expected a floating-point torch.Tensor")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"x: expected shape [3, H, W] or [B, 3, H, W], got {list(x.shape)}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(3, 1, 1)
    return (x - m) / s


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror images left–right: flips the last (width) dimension of [..., H, W]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise TypeError("x: expected a torch.Tensor [..., H, W]")
    return x.flip(-1)


def preprocess(image: ImageLike, size: Sequence[int] = (256, 128), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Path or PIL image → normalised float32 tensor [3, H, W] (resize, /255, mean/std)."""
    return normalize(to_tensor(resize(load_image(image), size)), mean, std)


def preprocess_batch(images: Sequence[ImageLike], size: Sequence[int] = (256, 128), mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """A list of paths/PIL images → float32 tensor [B, 3, H, W]. Raises ValueError if empty."""
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    return torch.stack([preprocess(im, size, mean, std) for im in images])


class RandomHorizontalFlip:
    """Training augmentation: mirror a [3, H, W] / [B, 3, H, W] tensor with probability ``p``
    (one draw per call, from ``generator`` if given)."""

    def __init__(self, p: float = 0.5, generator: "torch.Generator | None" = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = p
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip(x)
        return x
