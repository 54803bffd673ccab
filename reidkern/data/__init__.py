"""reidkern.data: dataset readers, the image dataset, identity samplers, transforms and splits."""
from .augment import build_transforms
from .datasets import (
    CUHK03NP,
    CUHKPEDES,
    ConReID,
    ICFGPEDES,
    MSMT17,
    MiniMarketCaptions,
    RSTPReid,
    RegDB,
    SYSUMM01,
    DukeMTMCreID,
    ImageFolderDataset,
    Market1501,
    MarketName,
    ReIDDataset,
    build_dataset,
    dataset_names,
    parse_market_name,
    parse_pid_cam,
    read_image_folder,
    register_dataset,
)
from .image_dataset import ImageDataset, read_image
from .paths import reid_mini_dir, shared_data_dir
from .records import INFRARED, VISIBLE, Record
from .samplers import DistributedRandomIdentitySampler, RandomIdentitySampler, VisibleInfraredSampler
from .split import carve_validation
from .text import CaptionDataset, CaptionTokenizer
from .datasets.text_json import expand_captions
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
    "Record", "VISIBLE", "INFRARED",
    "ReIDDataset", "ImageFolderDataset", "Market1501", "DukeMTMCreID", "ConReID", "CUHK03NP", "MSMT17",
    "SYSUMM01", "RegDB", "CUHKPEDES", "ICFGPEDES", "RSTPReid", "MiniMarketCaptions",
    "MarketName", "parse_market_name", "parse_pid_cam", "read_image_folder",
    "build_dataset", "register_dataset", "dataset_names",
    "ImageDataset", "read_image", "build_transforms",
    "RandomIdentitySampler", "DistributedRandomIdentitySampler", "VisibleInfraredSampler",
    "carve_validation", "CaptionTokenizer", "CaptionDataset", "expand_captions", "reid_mini_dir", "shared_data_dir",
    "IMAGENET_MEAN", "IMAGENET_STD", "RandomHorizontalFlip", "hflip", "load_image", "normalize",
    "preprocess", "preprocess_batch", "resize", "to_tensor",
]
