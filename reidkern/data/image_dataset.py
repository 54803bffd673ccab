"""A torch ``Dataset`` over records: each item is the dict the engine's batch is collated from.

Items: ``img`` float32 [3, H, W], ``pid``, ``camid``, ``modality``, ``index`` (Python ints), and with
a ``tokenizer`` also ``text_ids`` / ``text_mask`` (int64 [L], one caption of the record).
``torch.utils.data.default_collate`` turns a list of items into the batch dict
{img [B, 3, H, W], pid/camid/modality/index int64 [B], text_ids/text_mask int64 [B, L]}.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from PIL import Image, UnidentifiedImageError

from reidkern.data.records import Record

__all__ = ["ImageDataset", "read_image"]


def read_image(path: str) -> Image.Image:
    """Open an image file as RGB.

    Raises:
        FileNotFoundError: the file does not exist (naming it).
        ValueError: the file exists but cannot be decoded as an image (naming it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} not found")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"image file {path!r} cannot be read as an image: {exc}") from exc


class ImageDataset(torch.utils.data.Dataset):
    """Records → items for the engine.

    Args:
        records: sequence of :class:`Record` (or ``(path, pid, camid[, modality[, captions]])``
            tuples).
        transform: callable PIL image → float tensor [3, H, W] (e.g. ``build_transforms``), or a
            mapping {modality: callable} for per-modality pipelines (VI-ReID channel augmentation).
        tokenizer: optional :class:`~reidkern.data.text.CaptionTokenizer`; items then carry
            ``text_ids``/``text_mask`` of one caption (``caption_index`` picks which: an int, or
            None to take ``index % len(captions)``-th caption).

    Raises:
        TypeError: ``transform`` not callable (nor a mapping of callables).
        ValueError: a record that is not (path, pid, camid, ...), an unreadable image (naming it),
            a text item for a record without captions.
    """

    def __init__(self, records: Sequence[Record], transform: Union[Callable, Mapping[int, Callable]],
                 tokenizer=None, caption_index: Optional[int] = None):
        recs = []
        for i, r in enumerate(records):
            if not isinstance(r, Record):
                if not isinstance(r, (tuple, list)) or not 3 <= len(r) <= 5:
                    raise ValueError(f"records[{i}]: expected a Record or (path, pid, camid, ...), got {r!r}")
                r = Record(*r)
            recs.append(r)
        self.records = recs
        if isinstance(transform, Mapping):
            if not all(callable(t) for t in transform.values()):
                raise TypeError("transform: every value of the modality → transform mapping must be callable")
        elif not callable(transform):
            raise TypeError(f"transform: expected a callable or a {{modality: callable}} mapping, got "
                            f"{type(transform).__name__}")
        self.transform = transform
        self.tokenizer = tokenizer
        self.caption_index = caption_index

    def __len__(self) -> int:
        return len(self.records)

    def _transform_for(self, modality: int):
        if isinstance(self.transform, Mapping):
            if modality not in self.transform:
                raise ValueError(f"transform: no pipeline for modality {modality} "
                                 f"(mapping has {sorted(self.transform)})")
            return self.transform[modality]
        return self.transform

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        img = self._transform_for(r.modality)(read_image(r.path))
        item = {"img": img, "pid": int(r.pid), "camid": int(r.camid), "modality": int(r.modality),
                "index": int(index)}
        if self.tokenizer is not None:
            if not r.captions:
                raise ValueError(f"record {index} ({r.path!r}) has no captions for the tokenizer")
            c = self.caption_index if self.caption_index is not None else index
            ids, mask = self.tokenizer(r.captions[c % len(r.captions)])
            item["text_ids"], item["text_mask"] = ids, mask
        return item

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} records, transform={self.transform!r})"
