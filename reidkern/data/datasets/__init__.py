"""Dataset readers by name: ``build_dataset("market1501", root)`` and friends.

Each reader reads a dataset's official release layout from a local folder (nothing is downloaded)
and returns a :class:`ReIDDataset` of :class:`~reidkern.data.records.Record` lists.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from reidkern.data.datasets.base import ReIDDataset, relabel
from reidkern.data.datasets.market1501 import (
    ConReID,
    DukeMTMCreID,
    ImageFolderDataset,
    Market1501,
    MarketName,
    parse_market_name,
    parse_pid_cam,
    read_image_folder,
)

__all__ = [
    "ReIDDataset", "relabel", "ImageFolderDataset", "Market1501", "DukeMTMCreID", "ConReID",
    "MarketName", "parse_market_name", "parse_pid_cam", "read_image_folder",
    "build_dataset", "register_dataset", "dataset_names",
]

_REGISTRY: Dict[str, Callable[..., ReIDDataset]] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_")


def register_dataset(*names: str):
    """Decorator registering a reader (class or function ``(root, **kwargs) -> ReIDDataset``)
    under one or more names (case, ``-`` and ``_`` do not matter)."""
    def deco(fn):
        for n in names:
            _REGISTRY[_key(n)] = fn
        return fn
    return deco


def dataset_names() -> List[str]:
    """Registered dataset names (canonical spellings, sorted)."""
    return sorted(_REGISTRY)


def build_dataset(name: str, root: str, **kwargs) -> ReIDDataset:
    """Read dataset ``name`` from folder ``root``.

    Names: ``market1501``, ``dukemtmcreid`` (``duke``), ``con-reid`` (``conreid``), ``folder``
    (any Market-layout folder; ``cameras=False`` for camera-free names), and the others listed by
    :func:`dataset_names`. ``kwargs`` go to the reader.

    Raises:
        ValueError: an unknown name (listing the known ones); the reader's own errors
        (FileNotFoundError naming a missing folder or file, ValueError for unreadable content).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), got {type(name).__name__}")
    fn = _REGISTRY.get(_key(name))
    if fn is None:
        raise ValueError(f"name: unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return fn(root, **kwargs)


register_dataset("market1501", "market")(Market1501)
register_dataset("dukemtmcreid", "duke", "dukemtmc")(DukeMTMCreID)
register_dataset("con-reid", "conreid")(ConReID)
register_dataset("folder", "image_folder")(ImageFolderDataset)
