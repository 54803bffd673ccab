"""Pieces every protocol shares: id checks, the "no camera" convention, and trial summaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch


__all__ = ["TrialsResult", "check_query_ids", "camera_free", "MISSING_CHOICES"]

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
