"""Readers for folders of Market-style names: Market-1501, DukeMTMC-reID, Con-ReID and any folder
laid out like them.

Release layout (Market-1501-v15.09.15, DukeMTMC-reID, Con-ReID)::

    <root>/bounding_box_train/  0002_c1s1_000451_03.jpg ...   training
    <root>/query/               0001_c1s1_001051_00.jpg ...   queries
    <root>/bounding_box_test/   0001_c6s1_009601_00.jpg ...   gallery (pid 0 = distractor, -1 = junk)

Names are read as torchreid reads them, by searching the file name for ``PID_cCAM`` (torchreid's
pattern ``([-\\d]+)_c(\\d)``, here with a multi-digit camera): ``0001_c1s1_000002.jpg`` (Con-ReID, no
box index) and ``0001_c1s1_000002_1.jpg`` load, as do Market's full ``PPPP_cCsS_FFFFFF_NN`` names.
Camera ids become 0-based (``C − 1``); junk images (pid −1) are dropped. With ``cameras=False`` only
the leading pid is read and every camid is −1 ("no camera": the protocols then keep same-id gallery
images of any camera instead of dropping them).

Source: Zheng et al., ICCV 2015 (Market-1501); Ristani et al. 2016 / Zheng et al. ICCV 2017
(DukeMTMC-reID); torchreid ``Market1501`` / ``DukeMTMCreID`` (pattern, junk and camid handling).
Point the readers at your own copy; nothing is downloaded.
"""
from __future__ import annotations

import os
import re
from typing import List, NamedTuple, Optional, Tuple

from reidkern.data.datasets.base import IMAGE_EXTS, ReIDDataset, list_images, require_dir
from reidkern.data.records import Record

__all__ = [
    "MarketName", "parse_market_name", "parse_pid_cam", "read_image_folder",
    "ImageFolderDataset", "Market1501", "DukeMTMCreID", "ConReID", "CUHK03NP",
]

_STRICT = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")
_LENIENT = re.compile(r"(-?\d+)_c(\d+)")
_PID_ONLY = re.compile(r"^(-?\d+)")


class MarketName(NamedTuple):
    """Fields of a full Market-1501 name; ``camid`` is 0-based (file's C − 1)."""

    pid: int
    camid: int
    seq: int
    frame: int
    index: int


def parse_market_name(name: str) -> MarketName:
    """``"0001_c1s1_001051_00.jpg"`` → MarketName(pid=1, camid=0, seq=1, frame=1051, index=0).

    Strict: needs all of ``PPPP_cCsS_FFFFFF_NN``. Readers use the lenient :func:`parse_pid_cam`.
    Raises ValueError when the name does not follow it.
    """
    m = _STRICT.match(os.path.basename(name))
    if m is None:
        raise ValueError(f"name: {name!r} is not a Market-1501 style name PPPP_cCsS_FFFFFF_NN.jpg")
    pid, cam, seq, frame, idx = (int(g) for g in m.groups())
    if cam < 1:
        raise ValueError(f"name: {name!r} has camera {cam}; Market cameras start at 1")
    return MarketName(pid, cam - 1, seq, frame, idx)


def parse_pid_cam(name: str, cameras: bool = True) -> Tuple[int, int]:
    """(pid, 0-based camid) of a Market-style file name, read leniently (torchreid's pattern).

    ``cameras=False``: only the leading pid is read and camid is −1.
    Raises ValueError naming the file when no pid (and camera) can be read, or the camera is 0.
    """
    base = os.path.basename(name)
    if not cameras:
        m = _PID_ONLY.match(base)
        if m is None:
            raise ValueError(f"file {name!r}: expected a name starting with the person id (e.g. 0001_x.jpg)")
        return int(m.group(1)), -1
    m = _LENIENT.search(base)
    if m is None:
        raise ValueError(f"file {name!r}: expected a Market-style name PID_cCAM... (e.g. 0001_c1s1_000002.jpg); "
                         "use cameras=False for names without a camera")
    pid, cam = int(m.group(1)), int(m.group(2))
    if cam < 1:
        raise ValueError(f"file {name!r}: camera {cam}; Market-style cameras start at 1")
    return pid, cam - 1


def read_image_folder(folder: str, relabel: bool = False, drop_junk: bool = True,
                      cameras: bool = True) -> List[Record]:
    """Records (path, pid, camid) for every image with a Market-style name in ``folder``, sorted by
    file name (non-image files are ignored).

    Args:
        folder: directory of images.
        relabel: map pids to 0..N−1 in sorted order (training sets).
        drop_junk: drop pid −1 (Market's junk boxes).
        cameras: read the camera from the name; False → camid −1 (camera-free folders).

    Raises:
        FileNotFoundError: ``folder`` is not a directory. ValueError: an image whose name cannot
        be read (naming it).
    """
    require_dir(folder, "folder")
    items = []
    for fname in list_images(folder):
        pid, cam = parse_pid_cam(os.path.join(folder, fname), cameras)
        if drop_junk and pid == -1:
            continue
        items.append(Record(os.path.join(folder, fname), pid, cam))
    if relabel:
        from reidkern.data.datasets.base import relabel as _relabel
        items = _relabel(items)
    return items


class ImageFolderDataset(ReIDDataset):
    """A dataset laid out as Market-1501: three folders of Market-style names.

    Args:
        root: dataset folder (a single sub-folder named in ``NESTED`` is also looked into).
        cameras: read cameras from names (default); False for camera-free data (camid −1).
        train_dir, query_dir, gallery_dir: the three sub-folder names.

    Raises:
        FileNotFoundError: ``root`` or one of the three folders is missing (naming it).
        ValueError: an image whose name cannot be read, or an empty split.
    """

    NAME = "folder"
    NESTED: Tuple[str, ...] = ()
    MAX_CAM: Optional[int] = None

    def __init__(self, root: str, cameras: bool = True, train_dir: str = "bounding_box_train",
                 query_dir: str = "query", gallery_dir: str = "bounding_box_test"):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a path, got {type(root).__name__}")
        root = os.fspath(root)
        require_dir(root, f"{self.NAME} root")
        for nested in self.NESTED:
            cand = os.path.join(root, nested)
            if not os.path.isdir(os.path.join(root, query_dir)) and os.path.isdir(cand):
                root = cand
                break
        splits = {}
        for split, sub in (("train", train_dir), ("query", query_dir), ("gallery", gallery_dir)):
            path = os.path.join(root, sub)
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"root: {root!r} has no {sub!r} folder ({split} split; expected "
                    f"{train_dir!r}, {query_dir!r}, {gallery_dir!r})")
            recs = read_image_folder(path, cameras=cameras)
            if not recs:
                raise ValueError(f"{split} split: folder {path!r} holds no images ({', '.join(IMAGE_EXTS)})")
            if self.MAX_CAM is not None and cameras:
                bad = [r for r in recs if not 0 <= r.camid < self.MAX_CAM]
                if bad:
                    raise ValueError(f"file {bad[0].path!r}: camera {bad[0].camid + 1} outside "
                                     f"1..{self.MAX_CAM} of {self.NAME}")
            splits[split] = recs
        super().__init__(splits["train"], splits["query"], splits["gallery"], name=self.NAME, root=root)


class Market1501(ImageFolderDataset):
    """Market-1501 (750 train ids / 12,936 images; 3,368 queries; 15,913 gallery incl. distractors
    pid 0), six cameras. ``root`` may hold ``Market-1501-v15.09.15``."""

    NAME = "market1501"
    NESTED = ("Market-1501-v15.09.15", "market1501")
    MAX_CAM = 6

    def __init__(self, root: str):
        super().__init__(root)


class DukeMTMCreID(ImageFolderDataset):
    """DukeMTMC-reID (702 train ids / 16,522 images; 2,228 queries; 17,661 gallery), eight cameras.
    ``root`` may hold ``DukeMTMC-reID``."""

    NAME = "dukemtmcreid"
    NESTED = ("DukeMTMC-reID",)
    MAX_CAM = 8

    def __init__(self, root: str):
        super().__init__(root)


class ConReID(ImageFolderDataset):
    """Con-ReID (construction sites; 71 train ids / 7,711 images; 212 queries; 5,207 gallery), six
    cameras, Market layout with names lacking the box index. ``root`` may hold ``con-reid``."""

    NAME = "con-reid"
    NESTED = ("con-reid",)
    MAX_CAM = 6

    def __init__(self, root: str):
        super().__init__(root)


class CUHK03NP(ImageFolderDataset):
    """CUHK03-NP (the new protocol of Zhong et al., CVPR 2017: 767 train / 700 test ids), two
    cameras, Market layout under ``labeled/`` or ``detected/``; names ``0001_c1_1.png``.

    Args:
        root: the ``cuhk03-np`` folder (or a folder holding it, or the variant folder itself).
        variant: "labeled" or "detected".
    """

    NAME = "cuhk03_np"
    MAX_CAM = 2

    def __init__(self, root: str, variant: str = "labeled"):
        if variant not in ("labeled", "detected"):
            raise ValueError(f"variant: expected 'labeled' or 'detected', got {variant!r}")
        root = os.fspath(root)
        for cand in (os.path.join(root, variant), os.path.join(root, "cuhk03-np", variant),
                     os.path.join(root, "CUHK03-NP", variant)):
            if os.path.isdir(cand):
                root = cand
                break
        else:
            if not os.path.isdir(os.path.join(root, "query")):
                raise FileNotFoundError(f"root: {root!r} holds no {variant!r} folder (CUHK03-NP layout "
                                        f"cuhk03-np/{variant}/bounding_box_train, query, bounding_box_test)")
        self.variant = variant
        super().__init__(root)
