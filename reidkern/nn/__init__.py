"""reidkern.nn: drop-in PyTorch layers over reidkern's fused ops."""
# Attention layers (template / dictionary / prototype cross-attention, top-k token aggregation).
from reidkern.nn.attention import (  # noqa: F401
    DictionaryCrossAttention,
    PartTemplateInit,
    PrototypeUnification,
    TargetAwareAttention,
    TemplateCrossAttention,
    TopKTokenAggregation,
)
