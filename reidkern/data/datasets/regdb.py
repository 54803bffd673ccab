"""RegDB reader (Nguyen et al., "Person Recognition System Based on a Combination of Body Images
from Visible Light and Thermal Cameras", Sensors 2017), with the 10 trial splits of the VI-ReID
field (Ye et al.; files shipped with AGW / DDAG).

Release layout::

    <root>/Visible/…/*.bmp, <root>/Thermal/…/*.bmp        412 ids × 10 images per modality
    <root>/idx/train_visible_{t}.txt, train_thermal_{t}.txt   t = 1..10, lines "<relative path> <label>"
    <root>/idx/test_visible_{t}.txt,  test_thermal_{t}.txt

Each trial splits the 412 ids in half. Training: both modalities of the trial's train lists,
relabelled 0..205. Test, ``mode="visible_to_thermal"``: visible test images query the thermal test
images; ``"thermal_to_visible"`` the reverse. Camids: visible 0, thermal 1.
"""
from __future__ import annotations

import os
from typing import List

from reidkern.data.datasets.base import ReIDDataset, require_dir, require_file
from reidkern.data.records import INFRARED, VISIBLE, Record

__all__ = ["RegDB", "read_index_file"]

MODES = ("visible_to_thermal", "thermal_to_visible")


def read_index_file(root: str, name: str, modality: int) -> List[Record]:
    """Records of ``root/idx/<name>`` ("<relative path> <label>" lines).

    Raises FileNotFoundError naming the index file, ValueError naming a bad line."""
    path = require_file(os.path.join(root, "idx", name), "RegDB trial index")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"file {path!r} line {n}: expected '<image path> <label>', got {line.strip()!r}")
            try:
                pid = int(parts[1])
            except ValueError:
                raise ValueError(f"file {path!r} line {n}: label {parts[1]!r} is not an int") from None
            out.append(Record(os.path.join(root, parts[0]), pid, 0 if modality == VISIBLE else 1, modality))
    if not out:
        raise ValueError(f"file {path!r} lists no images")
    return out


class RegDB(ReIDDataset):
    """RegDB, one trial and one search direction.

    Args:
        root: the RegDB folder (holding ``idx/``; ``root/RegDB`` is also looked into).
        trial: 1..10.
        mode: "visible_to_thermal" or "thermal_to_visible".

    Raises:
        FileNotFoundError: root or one of the trial's four index files missing (naming it).
        ValueError: bad trial/mode, malformed index lines.
    """

    NAME = "regdb"

    def __init__(self, root: str, trial: int = 1, mode: str = "visible_to_thermal"):
        root = os.fspath(root)
        require_dir(root, "regdb root")
        if not os.path.isdir(os.path.join(root, "idx")) and os.path.isdir(os.path.join(root, "RegDB")):
            root = os.path.join(root, "RegDB")
        if isinstance(trial, bool) or not isinstance(trial, int) or not 1 <= trial <= 10:
            raise ValueError(f"trial: expected an int in 1..10, got {trial!r}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.trial, self.mode = trial, mode
        train = (read_index_file(root, f"train_visible_{trial}.txt", VISIBLE)
                 + read_index_file(root, f"train_thermal_{trial}.txt", INFRARED))
        vis = read_index_file(root, f"test_visible_{trial}.txt", VISIBLE)
        thermal = read_index_file(root, f"test_thermal_{trial}.txt", INFRARED)
        query, gallery = (vis, thermal) if mode == "visible_to_thermal" else (thermal, vis)
        super().__init__(train, query, gallery, name=self.NAME, root=root)
