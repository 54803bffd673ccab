"""RegDB visible–thermal protocol (Nguyen et al., Sensors 2017), as AGW's ``eval_regdb`` runs it.

Ten trials, each with its own train/test identity split (``idx/train_*_{t}.txt`` /
``idx/test_*_{t}.txt``; a model is trained per trial). Visible→thermal: visible test images query
the thermal test images; thermal→visible the other way round. Nothing is removed from the gallery
(the two modalities are different cameras). Standard CMC, mAP and mINP from reidkern's
``evaluate_rank`` kernels; trials reported as mean ± std.
"""
from __future__ import annotations

from typing import Sequence

from reidkern.metrics.protocols.common import TrialsResult, evaluate_whole_gallery
from reidkern.metrics.rank import RankResult

__all__ = ["evaluate_regdb", "evaluate_regdb_trials"]


def evaluate_regdb(qf, gf, q_pids, g_pids, metric: str = "euclidean", max_rank: int = 20,
                   missing: str = "raise", **kwargs) -> RankResult:
    """One RegDB trial in one direction (query features of one modality, gallery of the other).

    Args:
        qf: [Q, D]; gf: [G, D] features. q_pids: [Q]; g_pids: [G] int ids.
        metric, max_rank: as ``evaluate_features`` (AGW: max_rank 20). missing: "raise" or "skip".

    Raises:
        ValueError: query ids absent from the gallery (``missing="raise"``), bad shapes.
    """
    return evaluate_whole_gallery(qf, gf, q_pids, g_pids, metric, max_rank, missing, **kwargs)


def evaluate_regdb_trials(trials: Sequence, metric: str = "euclidean", max_rank: int = 20,
                          missing: str = "raise", **kwargs) -> TrialsResult:
    """RegDB over trials: ``trials`` is a sequence of ``(qf, gf, q_pids, g_pids)``, one per trial
    (features from the model of that trial). Returns mean ± std (:class:`TrialsResult`)."""
    if len(trials) == 0:
        raise ValueError("trials: expected at least one (qf, gf, q_pids, g_pids) tuple")
    return TrialsResult.from_trials([evaluate_regdb(*t, metric=metric, max_rank=max_rank, missing=missing,
                                                    **kwargs) for t in trials])
