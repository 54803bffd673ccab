"""Text-to-image person retrieval readers: CUHK-PEDES, ICFG-PEDES, RSTPReid (the layouts IRRA
reads), and the shared mini-Market caption file.

Release layouts::

    <root>/CUHK-PEDES/imgs/…, reid_raw.json        splits "train" / "val" / "test", key "file_path"
    <root>/ICFG-PEDES/imgs/…, ICFG-PEDES.json      splits "train" / "test", key "file_path"
    <root>/RSTPReid/imgs/…,   data_captions.json   splits "train" / "val" / "test", key "img_path"

Each json entry: ``{"id", "split", "captions": [...], "file_path" | "img_path", ...}``.
Records: ``train`` one per image with its captions (pids relabelled 0..N−1; IRRA subtracts 1
from CUHK-PEDES ids, the same order); ``gallery`` the test images; ``query`` one record per test
caption (``captions=(caption,)``, ``path`` its image's). Camids are −1 (no cameras).
``split="val"`` evaluates on the val split instead of test (ICFG-PEDES has none).
"""
from __future__ import annotations

import json
import os
from typing import List, Tuple

from reidkern.data.datasets.base import ReIDDataset, require_dir, require_file
from reidkern.data.records import Record

__all__ = ["TextImageDataset", "CUHKPEDES", "ICFGPEDES", "RSTPReid", "MiniMarketCaptions",
           "read_caption_json", "expand_captions"]


def read_caption_json(path: str, image_dir: str, path_key: str) -> List[Tuple[str, Record]]:
    """(split, Record with captions) for each entry of a caption json file.

    Raises FileNotFoundError naming the file, ValueError naming the entry that lacks a field."""
    require_file(path, "caption annotations")
    try:
        with open(path) as f:
            annos = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"file {path!r} is not valid json: {exc}") from None
    if not isinstance(annos, list):
        raise ValueError(f"file {path!r}: expected a list of annotation entries")
    out = []
    for n, a in enumerate(annos):
        try:
            caps = a["captions"]
            rec = Record(os.path.join(image_dir, a[path_key]), int(a["id"]), -1,
                         captions=tuple(caps if isinstance(caps, list) else [caps]))
            out.append((a["split"], rec))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"file {path!r} entry {n}: expected keys 'id', 'split', 'captions', "
                             f"{path_key!r} ({exc!r})") from None
    return out


def expand_captions(images: List[Record]) -> List[Record]:
    """One record per caption of each image (``captions=(caption,)``): the text queries of the test
    split, or the (image, caption) training pairs IRRA iterates over."""
    return [r._replace(captions=(c,)) for r in images for c in r.captions]


class TextImageDataset(ReIDDataset):
    """Base of the caption-json readers (see the module docstring).

    Args:
        root: folder holding ``DIR`` (or ``DIR`` itself).
        split: "test" (default) or "val": which split becomes query/gallery.

    Raises:
        FileNotFoundError: the images folder or the json file missing (naming it).
        ValueError: malformed entries, an empty split.
    """

    DIR = ""
    JSON = ""
    PATH_KEY = "file_path"
    IMG_DIR = "imgs"
    SPLITS = {"train": ("train",), "val": ("val",), "test": ("test",)}

    def __init__(self, root: str, split: str = "test"):
        root = os.fspath(root)
        require_dir(root, f"{self.NAME} root")
        if self.DIR and not os.path.isfile(os.path.join(root, self.JSON)) and os.path.isdir(os.path.join(root, self.DIR)):
            root = os.path.join(root, self.DIR)
        if split not in ("test", "val"):
            raise ValueError(f"split: expected 'test' or 'val', got {split!r}")
        img_dir = require_dir(os.path.join(root, self.IMG_DIR) if self.IMG_DIR else root, f"{self.NAME} images")
        entries = read_caption_json(os.path.join(root, self.JSON), img_dir, self.PATH_KEY)
        train = [r for s, r in entries if s in self.SPLITS["train"]]
        test = [r for s, r in entries if s in self.SPLITS[split]]
        for name, recs in (("train", train), (split, test)):
            if not recs:
                raise ValueError(f"file {os.path.join(root, self.JSON)!r}: no entries with split {name!r}")
        super().__init__(train, expand_captions(test), test, name=self.NAME, root=root)


class CUHKPEDES(TextImageDataset):
    """CUHK-PEDES (Li et al., CVPR 2017): 34,054 train / 3,074 test images, two captions each."""
    NAME, DIR, JSON = "cuhk_pedes", "CUHK-PEDES", "reid_raw.json"


class ICFGPEDES(TextImageDataset):
    """ICFG-PEDES (Ding et al., 2021): 34,674 train / 19,848 test images; no val split."""
    NAME, DIR, JSON = "icfg_pedes", "ICFG-PEDES", "ICFG-PEDES.json"


class RSTPReid(TextImageDataset):
    """RSTPReid (Zhu et al., ACM MM 2021): 3,701 / 200 / 200 ids train / val / test, five images per
    id, two captions per image."""
    NAME, DIR, JSON, PATH_KEY = "rstpreid", "RSTPReid", "data_captions.json", "img_path"


class MiniMarketCaptions(TextImageDataset):
    """The shared ``mini-market1501`` folder: ``captions.json`` with splits train / query / gallery
    and Market-layout images; its query and gallery images together form the test set (all
    their captions query all of them, CUHK-PEDES style)."""
    NAME, DIR, JSON, IMG_DIR = "mini_market1501", "mini-market1501", "captions.json", ""
    SPLITS = {"train": ("train",), "test": ("query", "gallery"), "val": ("query", "gallery")}
