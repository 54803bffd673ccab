"""Metric-learning and classification losses for ReID, over reidkern's fused mining op."""
from reidkern.nn.losses.am_softmax import AMSoftmaxLoss, cosface_logits
from reidkern.nn.losses.cross_modal import CrossModalRankingLoss
from reidkern.nn.losses.diversity import PartDiversityLoss
from reidkern.nn.losses.part_aligned_center import PartAlignedCenterLoss
from reidkern.nn.losses.triplet import (BatchHardMiner, SoftTripletLoss, TripletLoss,
                                        weighted_example_mining)

__all__ = ["AMSoftmaxLoss", "BatchHardMiner", "CrossModalRankingLoss", "PartAlignedCenterLoss", "PartDiversityLoss",
           "SoftTripletLoss", "TripletLoss", "cosface_logits", "weighted_example_mining"]
