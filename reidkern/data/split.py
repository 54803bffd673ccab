"""A validation split carved out of the training identities, so the best checkpoint is chosen
without looking at the test set.

``num_val_pids`` training identities are drawn (seeded) — only identities seen by at least two
cameras when the data has cameras and enough of them, so every validation query has a
cross-camera positive under the Market protocol. Each drawn identity gives one query image per
camera (the first image of that camera in a seeded shuffle) and its other images to the gallery.
When the training set has a single camera (or none, camid −1), each drawn identity gives one query
image and the val records get camid −1, which the protocols read as "no camera" (same-id gallery
images are kept). The other identities stay for training, relabelled 0..N−1.
"""
from __future__ import annotations

from collections import defaultdict
from typing import List, Sequence, Tuple

import numpy as np

from reidkern.data.datasets.base import relabel
from reidkern.data.records import Record

__all__ = ["carve_validation"]


def carve_validation(train_records: Sequence[Record], num_val_pids: int, seed: int = 0
                     ) -> Tuple[List[Record], List[Record], List[Record]]:
    """Split training records into (train, val_query, val_gallery) with disjoint identities.

    Args:
        train_records: training records (pids any ints).
        num_val_pids: identities moved to validation (>= 1, fewer than the identities usable).
        seed: seed of the identity draw and of the query choice.

    Returns:
        ``train`` (pids relabelled 0..N−1), ``val_query`` (one image per camera of each held-out
        id, one fewer when that would take all its images), ``val_gallery`` (the rest: every
        held-out id keeps at least one gallery image; pids as given; the order of
        ``train_records`` kept within each list).

    Raises:
        ValueError: ``num_val_pids`` not a positive int, or not fewer than the identities with at
            least two images (naming both counts).
    """
    if isinstance(num_val_pids, bool) or not isinstance(num_val_pids, int) or num_val_pids < 1:
        raise ValueError(f"num_val_pids: expected a positive int, got {num_val_pids!r}")
    records = [r if isinstance(r, Record) else Record(*r) for r in train_records]
    by_pid = defaultdict(list)
    for i, r in enumerate(records):
        by_pid[r.pid].append(i)
    cams = {r.camid for r in records}
    no_cams = len(cams) <= 1 or cams == {-1}
    usable = sorted(p for p, idx in by_pid.items() if len(idx) >= 2)
    multi = [p for p in usable if len({records[i].camid for i in by_pid[p]}) >= 2]
    pool = usable if no_cams or len(multi) < num_val_pids + 1 else multi
    if num_val_pids >= len(pool):
        raise ValueError(f"num_val_pids: {num_val_pids} is not fewer than the {len(pool)} training identities "
                         f"usable for validation (>= 2 images{'' if pool is usable else ', >= 2 cameras'})")
    rng = np.random.default_rng(seed)
    val_pids = {pool[i] for i in rng.choice(len(pool), size=num_val_pids, replace=False)}
    query_idx = set()
    for pid in sorted(val_pids):
        idx = [by_pid[pid][i] for i in rng.permutation(len(by_pid[pid]))]
        seen, picked = set(), []
        for i in idx:
            cam = records[i].camid
            if cam not in seen:
                seen.add(cam)
                picked.append(i)
                if no_cams:
                    break
        if len(picked) == len(idx):  # one image per camera: keep one in the gallery, else the
            picked.pop()             # identity's queries have nothing to find (evaluation refuses)
        query_idx.update(picked)
    train, query, gallery = [], [], []
    for i, r in enumerate(records):
        if r.pid not in val_pids:
            train.append(r)
            continue
        if no_cams:
            r = r._replace(camid=-1)
        (query if i in query_idx else gallery).append(r)
    return relabel(train), query, gallery
