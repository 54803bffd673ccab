"""reidkern.nn: drop-in PyTorch layers and losses over reidkern's fused ops."""
# Attention layers (template / dictionary / prototype cross-attention, top-k token aggregation).
from reidkern.nn.attention import (
    DictionaryCrossAttention,
    PartTemplateInit,
    PrototypeUnification,
    TargetAwareAttention,
    TemplateCrossAttention,
    TopKTokenAggregation,
)
# Metric-learning / classification losses and miners (reidkern/nn/losses).
from reidkern.nn.losses import (AMSoftmaxLoss, BatchHardMiner, CrossModalRankingLoss,
                                PartDiversityLoss, SoftTripletLoss, TripletLoss, cosface_logits)

__all__ = [
    "TemplateCrossAttention", "PartTemplateInit", "DictionaryCrossAttention",
    "PrototypeUnification", "TopKTokenAggregation", "TargetAwareAttention",
    "TripletLoss", "SoftTripletLoss", "CrossModalRankingLoss", "AMSoftmaxLoss", "cosface_logits",
    "PartDiversityLoss", "BatchHardMiner",
]
