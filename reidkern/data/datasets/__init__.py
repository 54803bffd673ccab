"""Dataset readers by name: ``build_dataset("market1501", root)`` and friends.

Each reader reads a dataset's official release layout from a local folder (nothing is downloaded)
and returns a :class:`ReIDDataset` of :class:`~reidkern.data.records.Record` lists.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from reidkern.data.datasets.base import ReIDDataset, relabel
from reidkern.data.datasets.market1501 import (
    CUHK03NP,
    ConReID,
    DukeMTMCreID,
    ImageFolderDataset,
    Market1501,
    MarketName,
    parse_market_name,
    parse_pid_cam,
    read_image_folder,
)
from reidkern.data.datasets.msmt17 import MSMT17
from reidkern.data.datasets.regdb import RegDB
from reidkern.data.datasets.sysu_mm01 import SYSUMM01
from reidkern.data.datasets.text_json import CUHKPEDES, ICFGPEDES, MiniMarketCaptions, RSTPReid, TextImageDataset

__all__ = [
    "ReIDDataset", "relabel", "ImageFolderDataset", "Market1501", "DukeMTMCreID", "ConReID", "CUHK03NP",
    "MSMT17", "SYSUMM01", "RegDB", "TextImageDataset", "CUHKPEDES", "ICFGPEDES", "RSTPReid",
    "MiniMarketCaptions",
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
    """Registered dataset names and aliases (sorted)."""
    return sorted(_REGISTRY)


def build_dataset(name: str, root: str, **kwargs) -> ReIDDataset:
    """Read dataset ``name`` from folder ``root``.

    Names: ``market1501``, ``dukemtmcreid`` (``duke``), ``con-reid`` (``conreid``), ``folder``
    (any Market-layout folder; ``cameras=False`` for camera-free names), ``cuhk03_np``
    (``variant="labeled"|"detected"``), ``msmt17`` (v1/v2), ``sysu_mm01`` (``mode``, ``shots``,
    ``trial``, ``gallery_split``), ``regdb`` (``trial``, ``mode``), ``cuhk_pedes``, ``icfg_pedes``,
    ``rstpreid``, ``mini_market1501`` (``split``); :func:`dataset_names` lists them all.
    ``kwargs`` go to the reader.

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
register_dataset("cuhk03_np", "cuhk03np")(CUHK03NP)
register_dataset("msmt17", "msmt")(MSMT17)
register_dataset("sysu_mm01", "sysu", "sysumm01")(SYSUMM01)
register_dataset("regdb")(RegDB)
register_dataset("cuhk_pedes", "cuhkpedes")(CUHKPEDES)
register_dataset("icfg_pedes", "icfgpedes")(ICFGPEDES)
register_dataset("rstpreid", "rstp_reid")(RSTPReid)
register_dataset("mini_market1501", "mini_market")(MiniMarketCaptions)
