"""Drop-in ``nn.Module`` layers and losses over reidkern's ops."""
# Metric-learning / classification losses and miners (reidkern/nn/losses).
from reidkern.nn.losses import (AMSoftmaxLoss, BatchHardMiner, CrossModalRankingLoss,  # noqa: F401
                                PartDiversityLoss, SoftTripletLoss, TripletLoss, cosface_logits)
