"""SYSU-MM01 reader (Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017).

Release layout::

    <root>/cam1 … cam6/<pid:04d>/<n:04d>.jpg   visible cameras 1, 2, 4, 5; infrared cameras 3, 6
    <root>/exp/train_id.txt, val_id.txt, test_id.txt   one line of comma-separated ids
    <root>/exp/rand_perm_cam.mat                        optional: the official gallery draws

Training uses the train and val ids (395 identities, as AGW / DDAG / CAJ do), every camera,
relabelled 0..N−1. The test queries are all infrared images (cameras 3 and 6) of the test ids.
The gallery is drawn per trial from the visible cameras (all-search 1/2/4/5, indoor-search 1/2):
``shots`` image(s) per identity and camera. Draws follow AGW's ``process_gallery_sysu`` (Python
``random.seed(trial)``, ``random.choice`` over the sorted files of each id/camera folder, ids
sorted, cameras in order) so trial ``t`` is AGW's trial ``t``; multi-shot draws ``random.sample``
of ``shots`` files the same way. With ``gallery_split="official"`` (or ``"auto"`` when
``exp/rand_perm_cam.mat`` is present) the draws come from the official permutations instead:
the first ``shots`` entries of ``rand_perm_cam{cam}{pid}`` for the trial (1-based image numbers).

``gallery`` is trial ``trial``'s gallery; ``gallery_pool`` all visible test images (extract their
features once) and ``gallery_trials(n)`` the per-trial indices into the pool, for
:func:`reidkern.metrics.protocols.evaluate_sysu_mm01`. Camids are 0-based (camera k → k − 1).
"""
from __future__ import annotations

import os
import random
from typing import List, Sequence

from reidkern.data.datasets.base import ReIDDataset, list_images, require_dir, require_file
from reidkern.data.records import INFRARED, VISIBLE, Record

__all__ = ["SYSUMM01", "read_id_file"]

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}


def read_id_file(path: str) -> List[int]:
    """Ids of an ``exp/*_id.txt`` file (comma-separated on the first line).

    Raises FileNotFoundError (naming the file) or ValueError for content that is not ids."""
    require_file(path, "SYSU-MM01 id list")
    with open(path) as f:
        text = f.read().strip()
    try:
        return [int(x) for x in text.replace("\n", ",").split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"file {path!r}: expected comma-separated person ids ({exc})") from None


class SYSUMM01(ReIDDataset):
    """SYSU-MM01 train / IR query / visible gallery of one trial.

    Args:
        root: the ``SYSU-MM01`` folder (``root/SYSU-MM01`` is also looked into).
        mode: "all" (gallery cameras 1, 2, 4, 5) or "indoor" (1, 2).
        shots: gallery images per identity and camera: 1 (single-shot) or 10 (multi-shot).
        trial: which trial's gallery is ``gallery`` (0-based).
        gallery_split: "agw" (seeded draws as AGW), "official" (``exp/rand_perm_cam.mat``, needs
            SciPy) or "auto" (official when the file exists).

    Raises:
        FileNotFoundError: root, ``exp/*_id.txt`` or a camera folder missing (naming it).
        ValueError: bad mode/shots/gallery_split, an id list naming no images.
    """

    NAME = "sysu_mm01"

    def __init__(self, root: str, mode: str = "all", shots: int = 1, trial: int = 0,
                 gallery_split: str = "auto"):
        root = os.fspath(root)
        require_dir(root, "sysu_mm01 root")
        if not os.path.isdir(os.path.join(root, "exp")) and os.path.isdir(os.path.join(root, "SYSU-MM01")):
            root = os.path.join(root, "SYSU-MM01")
        if mode not in GALLERY_CAMS:
            raise ValueError(f"mode: expected 'all' or 'indoor', got {mode!r}")
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots: expected a positive int (1 single-shot, 10 multi-shot), got {shots!r}")
        if gallery_split not in ("agw", "official", "auto"):
            raise ValueError(f"gallery_split: expected 'agw', 'official' or 'auto', got {gallery_split!r}")
        for cam in VISIBLE_CAMS + INFRARED_CAMS:
            require_dir(os.path.join(root, f"cam{cam}"), "sysu_mm01 camera folder")
        perm_path = os.path.join(root, "exp", "rand_perm_cam.mat")
        if gallery_split == "official":
            require_file(perm_path, "sysu_mm01 official gallery split")
        self.official = gallery_split == "official" or (gallery_split == "auto" and os.path.isfile(perm_path))
        self.mode, self.shots = mode, shots
        self._perm = None
        train_ids = read_id_file(os.path.join(root, "exp", "train_id.txt"))
        train_ids += read_id_file(os.path.join(root, "exp", "val_id.txt"))
        self.test_ids = sorted(read_id_file(os.path.join(root, "exp", "test_id.txt")))
        self.root = root
        train = self._collect(sorted(set(train_ids)), VISIBLE_CAMS + INFRARED_CAMS, "train_id.txt/val_id.txt")
        query = self._collect(self.test_ids, INFRARED_CAMS, "test_id.txt")
        self._files = {(pid, cam): self._files_of(pid, cam) for pid in self.test_ids for cam in GALLERY_CAMS[mode]}
        self.gallery_pool: List[Record] = [
            Record(os.path.join(root, f"cam{cam}", f"{pid:04d}", f), pid, cam - 1, VISIBLE)
            for pid in self.test_ids for cam in GALLERY_CAMS[mode] for f in self._files[(pid, cam)]]
        if not self.gallery_pool:
            raise ValueError(f"root: {root!r} holds no visible images of the test ids (exp/test_id.txt)")
        self._pool_index = {r.path: i for i, r in enumerate(self.gallery_pool)}
        gallery = [self.gallery_pool[i] for i in self.trial_indices(trial)]
        super().__init__(train, query, gallery, name=self.NAME, root=root)

    def _files_of(self, pid: int, cam: int) -> List[str]:
        d = os.path.join(self.root, f"cam{cam}", f"{pid:04d}")
        return list_images(d) if os.path.isdir(d) else []

    def _collect(self, ids: Sequence[int], cams: Sequence[int], source: str) -> List[Record]:
        out = []
        for pid in ids:
            for cam in cams:
                mod = INFRARED if cam in INFRARED_CAMS else VISIBLE
                d = os.path.join(self.root, f"cam{cam}", f"{pid:04d}")
                out += [Record(os.path.join(d, f), pid, cam - 1, mod) for f in self._files_of(pid, cam)]
        if not out:
            raise ValueError(f"{source}: the ids listed have no images under {self.root!r}/cam*/<id>")
        return out

    def _official_perm(self):
        if self._perm is None:
            from scipy.io import loadmat
            path = os.path.join(self.root, "exp", "rand_perm_cam.mat")
            try:
                self._perm = loadmat(path)["rand_perm_cam"]
            except (KeyError, ValueError, OSError) as exc:
                raise ValueError(f"file {path!r}: expected a MATLAB file with 'rand_perm_cam' ({exc})") from exc
        return self._perm

    def trial_indices(self, trial: int) -> List[int]:
        """Indices into ``gallery_pool`` of trial ``trial``'s gallery (see the module docstring)."""
        if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
            raise ValueError(f"trial: expected a non-negative int, got {trial!r}")
        picks: List[str] = []
        if self.official:
            perm = self._official_perm()
            for pid in self.test_ids:
                for cam in GALLERY_CAMS[self.mode]:
                    cam_perm = perm[cam - 1][0].squeeze()
                    if not self._files[(pid, cam)]:
                        continue
                    nums = cam_perm[pid - 1][trial][: self.shots]
                    for n in list(nums.ravel()):
                        picks.append(os.path.join(self.root, f"cam{cam}", f"{pid:04d}", f"{int(n):04d}.jpg"))
        else:
            rng = random.Random(trial)
            for pid in self.test_ids:
                for cam in GALLERY_CAMS[self.mode]:
                    files = self._files[(pid, cam)]
                    if not files:
                        continue
                    chosen = [rng.choice(files)] if self.shots == 1 else rng.sample(files, min(self.shots, len(files)))
                    picks += [os.path.join(self.root, f"cam{cam}", f"{pid:04d}", f) for f in chosen]
        try:
            return [self._pool_index[p] for p in picks]
        except KeyError as exc:
            raise ValueError(f"rand_perm_cam.mat names an image that is not on disk: {exc.args[0]!r}") from None

    def gallery_trials(self, num_trials: int = 10) -> List[List[int]]:
        """Per-trial gallery indices into ``gallery_pool`` for trials 0..num_trials−1 (AGW: 10)."""
        return [self.trial_indices(t) for t in range(num_trials)]
