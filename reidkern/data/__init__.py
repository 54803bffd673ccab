"""reidkern.data: ReID image preprocessing (PIL + torch) and dataset folder readers."""
from .market1501 import Market1501, MarketName, parse_market_name, read_image_folder
from .paths import reid_mini_dir
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomHorizontalFlip,
    hflip,
    load_image,
    normalize,
    preprocess,
    preprocess_batch,
    resize,
    to_tensor,
)

__all__ = [
    "Market1501",
    "MarketName",
    "parse_market_name",
    "read_image_folder",
    "reid_mini_dir",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomHorizontalFlip",
    "hflip",
    "load_image",
    "normalize",
    "preprocess",
    "preprocess_batch",
    "resize",
    "to_tensor",
]
