"""ReID evaluation: CMC, mAP and mINP under the Market-1501 protocol."""
from reidkern.metrics.distance import pairwise_distance
from reidkern.metrics.rank import RankResult, evaluate_features, evaluate_rank

__all__ = ["RankResult", "evaluate_rank", "evaluate_features", "pairwise_distance"]
