"""The dataset object every reader returns, and the helpers the readers share.

A dataset holds three lists of :class:`~reidkern.data.records.Record` — ``train`` (pids relabelled
to 0..N−1 in sorted order of the original ids, as torchreid's ``relabel=True``), ``query`` and
``gallery`` (original pids, so the test identities stay those of the release).
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence

from reidkern.data.records import Record

__all__ = ["ReIDDataset", "relabel", "require_dir", "require_file", "IMAGE_EXTS", "list_images"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def relabel(records: Iterable[Record]) -> List[Record]:
    """Records with pids mapped to 0..N−1 in sorted order of the original pids (camids and the
    other fields unchanged)."""
    records = list(records)
    mapping: Dict[int, int] = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=mapping[r.pid]) for r in records]


def require_dir(path: str, what: str) -> str:
    """``path`` if it is a directory, else FileNotFoundError naming it and its role."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: folder {path!r} not found")
    return path


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file, else FileNotFoundError naming it and its role."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file {path!r} not found")
    return path


def list_images(folder: str) -> List[str]:
    """Image file names (``IMAGE_EXTS``, any case) directly in ``folder``, sorted."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))


def _stats(records: Sequence[Record]):
    return len(records), len({r.pid for r in records}), len({r.camid for r in records})


class ReIDDataset:
    """Train / query / gallery lists of :class:`Record`.

    Args:
        train, query, gallery: records; ``train`` is relabelled here (pids 0..N−1) unless
            ``relabel_train=False``.
        name: short dataset name shown in the repr.
        root: folder it was read from (or None).
        relabel_train: relabel training pids (default True).

    Attributes:
        train, query, gallery: lists of Record.
        num_train_pids, num_train_cams, num_train_imgs (and the query/gallery counterparts).
        extra: dict of reader-specific extras (e.g. SYSU-MM01's trial splits).
    """

    def __init__(self, train: Sequence[Record], query: Sequence[Record], gallery: Sequence[Record],
                 name: str = "dataset", root: Optional[str] = None, relabel_train: bool = True):
        self.name = name
        self.root = root
        self.train = relabel(train) if relabel_train else list(train)
        self.query = list(query)
        self.gallery = list(gallery)
        self.extra: dict = {}

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    @property
    def num_query_pids(self) -> int:
        return len({r.pid for r in self.query})

    @property
    def num_gallery_pids(self) -> int:
        return len({r.pid for r in self.gallery})

    def __repr__(self) -> str:
        rows = []
        for split in ("train", "query", "gallery"):
            n, p, c = _stats(getattr(self, split))
            rows.append(f"  {split:<8}| {p:>6} ids | {n:>7} images | {c:>3} cameras")
        head = f"{type(self).__name__}(name={self.name!r}, root={self.root!r})"
        return "\n".join([head] + rows)
