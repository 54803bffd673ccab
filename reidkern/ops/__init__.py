"""reidkern ops: one module per op, each a torch custom op in the ``reidkern`` namespace."""
from reidkern.ops.evaluate_rank import evaluate_rank_per_query
from reidkern.ops.knn import knn

__all__ = ["evaluate_rank_per_query"]
