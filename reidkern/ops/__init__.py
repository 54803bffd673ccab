"""reidkern ops: one module per op, each a torch custom op in the ``reidkern`` namespace."""
from reidkern.ops.evaluate_rank import evaluate_rank_per_query

__all__ = ["evaluate_rank_per_query"]
