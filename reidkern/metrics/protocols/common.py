"""Pieces every protocol shares: id checks, the "no camera" convention, and trial summaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch

from reidkern.metrics.rank import evaluate_features
from reidkern.ops import _validate as V


__all__ = ["TrialsResult", "check_query_ids", "camera_free", "evaluate_whole_gallery", "MISSING_CHOICES"]

MISSING_CHOICES = ("raise", "skip")


def check_query_ids(q_pids: torch.Tensor, g_pids: torch.Tensor, missing: str = "raise") -> None:
    """Raise ValueError naming the query ids that never occur in the gallery (``missing="raise"``);
    with ``"skip"`` such queries are left to be skipped and counted by the evaluation."""
    if missing not in MISSING_CHOICES:
        raise ValueError(f"missing: expected one of {MISSING_CHOICES}, got {missing!r}")
    if missing == "skip":
        return
    absent = ~torch.isin(q_pids, g_pids)
    if bool(absent.any()):
        ids = torch.unique(q_pids[absent]).tolist()
        shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise ValueError(f"q_pids: {len(ids)} query identities do not appear in the gallery ({shown}; "
                         f"{int(absent.sum())} queries); pass missing='skip' to skip those queries")


def camera_free(q_camids: torch.Tensor, g_camids: torch.Tensor):
    """Camid −1 means "no camera": such a query keeps same-id gallery images of every camera and
    such a gallery image counts for same-id queries of every camera. Mapped to camids that never
    collide: queries −1 stay −1, gallery −1 becomes −2 (Market-protocol kernels then drop
    nothing for them)."""
    if bool((g_camids == -1).any()):
        g_camids = torch.where(g_camids == -1, torch.full_like(g_camids, -2), g_camids)
    return q_camids, g_camids


def evaluate_whole_gallery(qf, gf, q_pids, g_pids, metric: str, max_rank: int, missing: str,
                           names=("qf", "gf", "q_pids", "g_pids"), counts=("num_query", "num_gallery"),
                           **kwargs):
    """Every query ranked against the whole gallery, nothing removed: query and gallery come from
    different cameras or modalities (RegDB, text-to-image). Checks the ids (errors name the
    caller's arguments, ``names``, and their lengths, ``counts``), then
    :func:`reidkern.metrics.evaluate_features` with camera ids that never match.

    Returns:
        :class:`reidkern.metrics.RankResult`.
    """
    qf = V.as_tensor(qf, names[0])
    gf = V.as_tensor(gf, names[1])
    dev = qf.device
    q_pids = V.check_ids(q_pids, qf.shape[0], names[2], counts[0], dev)
    g_pids = V.check_ids(g_pids, gf.shape[0], names[3], counts[1], dev)
    check_query_ids(q_pids, g_pids, missing)
    return evaluate_features(qf, gf, q_pids, g_pids, torch.full_like(q_pids, -1),
                             torch.full_like(g_pids, -2), metric=metric, max_rank=max_rank, **kwargs)



@dataclass
class TrialsResult:
    """Mean ± std over repeated trials (SYSU-MM01 galleries, RegDB splits).

    Attributes:
        trials: per-trial results (each with ``cmc``, ``mAP``, ``mINP``).
        mean, std: {"R1", "R5", "R10", "R20", "mAP", "mINP"} → float in [0, 1]; std is the
            population standard deviation over trials (numpy ``std``, ddof 0).
    """

    trials: List = field(default_factory=list)
    mean: Dict[str, float] = field(default_factory=dict)
    std: Dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_trials(cls, trials: Sequence, ranks=(1, 5, 10, 20)) -> "TrialsResult":
        if not trials:
            raise ValueError("trials: expected at least one trial result")
        rows = {}
        for k in ranks:
            if all(len(t.cmc) >= k for t in trials):
                rows[f"R{k}"] = [float(t.cmc[k - 1]) for t in trials]
        rows["mAP"] = [float(t.mAP) for t in trials]
        rows["mINP"] = [float(t.mINP) for t in trials]
        return cls(list(trials), {k: float(np.mean(v)) for k, v in rows.items()},
                   {k: float(np.std(v)) for k, v in rows.items()})

    def summary(self) -> str:
        return ", ".join(f"{k} {100 * self.mean[k]:.2f} ± {100 * self.std[k]:.2f}" for k in self.mean) + \
            f" ({len(self.trials)} trials)"
