"""The record every dataset reader returns: one image with its identity, camera and extras.

A ``Record`` unpacks like torchreid's ``(path, pid, camid)`` items through its first three
fields (``path, pid, camid = record[:3]``); the extras serve the other tasks: ``modality`` for
visible–infrared ReID (SYSU-MM01, RegDB), ``captions`` for text-to-image ReID (CUHK-PEDES,
ICFG-PEDES, RSTPReid).
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

__all__ = ["Record", "VISIBLE", "INFRARED"]

VISIBLE = 0
INFRARED = 1


class Record(NamedTuple):
    """One image of a ReID dataset.

    Fields:
        path: image file path (str).
        pid: person id (int; training splits relabelled to 0..N−1, test splits as in the files).
        camid: 0-based camera id (int; −1 where the dataset has no cameras).
        modality: ``VISIBLE`` (0) or ``INFRARED`` (1).
        captions: the image's text descriptions (tuple of str; empty for image-only datasets).
    """

    path: str
    pid: int
    camid: int
    modality: int = VISIBLE
    captions: Tuple[str, ...] = ()
