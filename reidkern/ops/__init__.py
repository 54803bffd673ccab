"""reidkern ops: one module per op, each a torch custom op in the ``reidkern`` namespace."""
from reidkern.ops.batch_hard_mining import BatchHardResult, batch_hard_mining
from reidkern.ops.evaluate_rank import PerQueryRankResult, evaluate_rank_per_query
from reidkern.ops.knn import KnnResult, knn
from reidkern.ops.template_attention import TemplateAttentionResult, template_attention
from reidkern.ops.topk_token_aggregate import TopKAggregateResult, topk_token_aggregate

__all__ = ["evaluate_rank_per_query", "PerQueryRankResult", "batch_hard_mining", "BatchHardResult", "knn", "KnnResult",
           "template_attention", "TemplateAttentionResult",
           "topk_token_aggregate", "TopKAggregateResult"]
