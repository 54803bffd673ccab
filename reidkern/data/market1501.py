"""Market-1501 folder reader (and reader for any folder of Market-style file names).

Source: Zheng et al., "Scalable Person Re-identification: A Benchmark" (ICCV 2015); the
conventions follow torchreid's ``Market1501`` dataset: file names ``PPPP_cCsS_FFFFFF_NN.jpg``
(pid, camera C, sequence S, frame F, box index NN); junk images (pid −1) dropped; pid 0
(distractors) kept in the gallery; camid 0-based (``C − 1``); training pids relabelled
0..N−1.

Point it at your own copy; nothing is downloaded.
"""
from __future__ import annotations

import os
import re
from typing import List, NamedTuple, Tuple

__all__ = ["MarketName", "parse_market_name", "read_image_folder", "Market1501"]

_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")
_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class MarketName(NamedTuple):
    """Fields of a Market-style name; ``camid`` is 0-based (file's C − 1)."""

    pid: int
    camid: int
    seq: int
    frame: int
    index: int


def parse_market_name(name: str) -> MarketName:
    """``"0001_c1s1_001051_00.jpg"`` → MarketName(pid=1, camid=0, seq=1, frame=1051, index=0).

    Raises ValueError when the name does not follow ``PPPP_cCsS_FFFFFF_NN``.
    """
    m = _NAME.match(os.path.basename(name))
    if m is None:
        raise ValueError(f"name: {name!r} is not a Market-1501 style name PPPP_cCsS_FFFFFF_NN.jpg")
    pid, cam, seq, frame, idx = (int(g) for g in m.groups())
    if cam < 1:
        raise ValueError(f"name: {name!r} has camera {cam}; Market cameras start at 1")
    return MarketName(pid, cam - 1, seq, frame, idx)


def read_image_folder(folder: str, relabel: bool = False, drop_junk: bool = True) -> List[Tuple[str, int, int]]:
    """List ``(path, pid, camid)`` for every image with a Market-style name in ``folder``,
    sorted by file name.

    Args:
        folder: directory of images.
        relabel: map pids to 0..N−1 in sorted order (training sets).
        drop_junk: drop pid −1 (Market's junk boxes).

    Raises:
        FileNotFoundError: ``folder`` is not a directory. ValueError: an image file whose name
        is not Market-style.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder not found: {folder!r}")
    items = []
    for fname in sorted(os.listdir(folder)):
        if not fname.lower().endswith(_EXTS):
            continue
        n = parse_market_name(fname)
        if drop_junk and n.pid == -1:
            continue
        items.append((os.path.join(folder, fname), n.pid, n.camid))
    if relabel:
        mapping = {pid: i for i, pid in enumerate(sorted({p for _, p, _ in items}))}
        items = [(path, mapping[pid], cam) for path, pid, cam in items]
    return items


class Market1501:
    """A Market-1501 copy on disk: ``train``, ``query``, ``gallery`` lists of (path, pid, camid).

    Args:
        root: the dataset folder holding ``bounding_box_train``, ``query`` and
            ``bounding_box_test`` (``Market-1501-v15.09.15`` inside ``root`` is also found).

    Raises:
        FileNotFoundError: naming the first missing sub-folder.
    """

    SUBDIRS = ("bounding_box_train", "query", "bounding_box_test")

    def __init__(self, root: str):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a path, got {type(root).__name__}")
        root = os.fspath(root)
        nested = os.path.join(root, "Market-1501-v15.09.15")
        if not os.path.isdir(os.path.join(root, "query")) and os.path.isdir(nested):
            root = nested
        for sub in self.SUBDIRS:
            if not os.path.isdir(os.path.join(root, sub)):
                raise FileNotFoundError(f"root: {root!r} has no {sub!r} folder (expected {self.SUBDIRS})")
        self.root = root
        self.train = read_image_folder(os.path.join(root, "bounding_box_train"), relabel=True)
        self.query = read_image_folder(os.path.join(root, "query"))
        self.gallery = read_image_folder(os.path.join(root, "bounding_box_test"))

    @property
    def num_train_pids(self) -> int:
        return len({p for _, p, _ in self.train})

    def __repr__(self) -> str:
        return (
            f"Market1501(root={self.root!r}, train={len(self.train)} images / {self.num_train_pids} ids, "
            f"query={len(self.query)}, gallery={len(self.gallery)})"
        )

