"""reidkern.nn: drop-in PyTorch layers and losses over reidkern's fused ops."""
# Attention layers (template / dictionary / prototype cross-attention, top-k token aggregation).
from reidkern.nn.attention import (  # noqa: F401
    DictionaryCrossAttention,
    PartTemplateInit,
    PrototypeUnification,
    TargetAwareAttention,
    TemplateCrossAttention,
    TopKTokenAggregation,
)
# Metric-learning / classification losses and miners (reidkern/nn/losses).
from reidkern.nn.losses import (AMSoftmaxLoss, BatchHardMiner, CrossModalRankingLoss,  # noqa: F401
                                PartDiversityLoss, SoftTripletLoss, TripletLoss, cosface_logits)
