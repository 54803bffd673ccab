"""Evaluation protocols of each ReID task, on reidkern's ``evaluate_rank`` kernels.

- :func:`evaluate_image_reid` — single-query image ReID (Market-1501, DukeMTMC-reID, MSMT17,
  CUHK03-NP, Con-ReID; camid −1 = no camera).
- :func:`evaluate_sysu_mm01` — SYSU-MM01 all/indoor search, single/multi-shot, over trials.
- :func:`evaluate_regdb` / :func:`evaluate_regdb_trials` — RegDB visible↔thermal over 10 trials.
- :func:`evaluate_text_to_image` — CUHK-PEDES / ICFG-PEDES / RSTPReid R@1/5/10, mAP, mINP.
"""
from reidkern.metrics.protocols.common import TrialsResult, check_query_ids
from reidkern.metrics.protocols.image_reid import evaluate_image_reid, evaluate_image_reid_distmat
from reidkern.metrics.protocols.regdb import evaluate_regdb, evaluate_regdb_trials
from reidkern.metrics.protocols.sysu_mm01 import evaluate_sysu_mm01, evaluate_sysu_mm01_distmat
from reidkern.metrics.protocols.text_to_image import evaluate_text_to_image

__all__ = [
    "TrialsResult", "check_query_ids", "evaluate_image_reid", "evaluate_image_reid_distmat",
    "evaluate_sysu_mm01", "evaluate_sysu_mm01_distmat", "evaluate_regdb", "evaluate_regdb_trials",
    "evaluate_text_to_image",
]
