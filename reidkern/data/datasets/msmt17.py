"""MSMT17 reader (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person
Re-Identification", CVPR 2018), v1 and v2 releases, read from their list files as torchreid and
fast-reid read them.

Release layouts::

    <root>/MSMT17_V1/train/, test/, list_train.txt, list_val.txt, list_query.txt, list_gallery.txt
    <root>/MSMT17_V2/mask_train_v2/, mask_test_v2/, (the same four list files)

List lines are ``<pid dir>/<pid>_<n>_<cam>_<date><time>_<...>.jpg <pid>``; the camera is the third
``_`` field (1..15, read 0-based). Training is ``list_train`` + ``list_val`` (32,621 images of
1,041 ids, the split the field reports; ``use_val=False`` keeps ``list_train`` only), relabelled.
Query 11,659, gallery 82,161 images.
"""
from __future__ import annotations

import os
from typing import List

from reidkern.data.datasets.base import ReIDDataset, require_dir, require_file
from reidkern.data.records import Record

__all__ = ["MSMT17", "read_msmt_list"]

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


def read_msmt_list(list_path: str, image_dir: str) -> List[Record]:
    """Records of one MSMT17 list file (``<relative path> <pid>`` lines) under ``image_dir``.

    Raises FileNotFoundError naming the list, ValueError naming a malformed line."""
    require_file(list_path, "MSMT17 list")
    out = []
    with open(list_path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                rel, pid = parts[0], int(parts[1])
                cam = int(os.path.basename(rel).split("_")[2])
            except (IndexError, ValueError):
                raise ValueError(f"file {list_path!r} line {n}: expected '<pid>/<pid>_<n>_<cam>_....jpg <pid>', "
                                 f"got {line.strip()!r}") from None
            out.append(Record(os.path.join(image_dir, rel), pid, cam - 1))
    if not out:
        raise ValueError(f"file {list_path!r} lists no images")
    return out


class MSMT17(ReIDDataset):
    """MSMT17 v1 or v2 (whichever ``root`` holds; ``root`` may also be the version folder itself or
    hold ``msmt17/``).

    Args:
        root: dataset folder. use_val: add ``list_val`` to training (default, as the field).

    Raises:
        FileNotFoundError: no ``MSMT17_V1``/``MSMT17_V2`` folder, or a missing image folder or list
        file (naming it).
    """

    NAME = "msmt17"

    def __init__(self, root: str, use_val: bool = True):
        root = os.fspath(root)
        require_dir(root, "msmt17 root")
        main = None
        for cand in (root, os.path.join(root, "msmt17"), os.path.join(root, "MSMT17")):
            for version, (train_dir, test_dir) in VERSIONS.items():
                if os.path.basename(os.path.normpath(cand)) == version and os.path.isdir(cand):
                    main = (cand, train_dir, test_dir)
                elif os.path.isdir(os.path.join(cand, version)):
                    main = (os.path.join(cand, version), train_dir, test_dir)
                if main:
                    break
            if main:
                break
        if main is None:
            raise FileNotFoundError(f"root: {root!r} holds neither MSMT17_V1/ nor MSMT17_V2/")
        main_dir, train_dir, test_dir = main
        train_dir = require_dir(os.path.join(main_dir, train_dir), "msmt17 training images")
        test_dir = require_dir(os.path.join(main_dir, test_dir), "msmt17 test images")
        train = read_msmt_list(os.path.join(main_dir, "list_train.txt"), train_dir)
        if use_val:
            train += read_msmt_list(os.path.join(main_dir, "list_val.txt"), train_dir)
        query = read_msmt_list(os.path.join(main_dir, "list_query.txt"), test_dir)
        gallery = read_msmt_list(os.path.join(main_dir, "list_gallery.txt"), test_dir)
        super().__init__(train, query, gallery, name=self.NAME, root=main_dir)
