"""Attention layers of the part-aware ReID models, over reidkern.ops.template_attention and
reidkern.ops.topk_token_aggregate."""
from reidkern.nn.attention.cal import TargetAwareAttention, TopKTokenAggregation
from reidkern.nn.attention.cross import TemplateCrossAttention
from reidkern.nn.attention.dpti import PartTemplateInit
from reidkern.nn.attention.lgur import DictionaryCrossAttention, PrototypeUnification

__all__ = ["TemplateCrossAttention", "PartTemplateInit", "DictionaryCrossAttention",
           "PrototypeUnification", "TopKTokenAggregation", "TargetAwareAttention"]
