"""Shared pieces of the metric-learning losses: mining (local or across processes) and the mean
over valid anchors (global when mining across processes)."""
import torch

from reidkern.distributed import (all_gather_no_grad, all_gather_with_grad, all_reduce_sum_no_grad,
                                  is_distributed)
from reidkern.ops.batch_hard_mining import _validate, batch_hard_mining


def gather_candidates(embeddings, labels, gather):
    """``(ref_embeddings, ref_labels, self_offset)`` for mining: the batch gathered from every
    process when ``gather`` and a process group are active, else ``(None, None, None)`` (the batch
    mines itself)."""
    if not (gather and is_distributed()):
        return None, None, None
    ref, offset = all_gather_with_grad(embeddings)
    ref_labels = all_gather_no_grad(labels)
    return ref, ref_labels, offset


def mine(embeddings, labels, metric, gather, backend):
    """Validated batch-hard mining of the local anchors against the local or gathered batch.
    Returns ``(result, embeddings, labels, ref_embeddings, ref_labels)`` (validated tensors;
    ref_* are the batch itself without gathering)."""
    embeddings, labels, _, _ = _validate(embeddings, labels, None, None, metric, None)
    ref, ref_labels, offset = gather_candidates(embeddings, labels, gather)
    res = batch_hard_mining(embeddings, labels, metric, ref_embeddings=ref, ref_labels=ref_labels,
                            self_offset=offset, backend=backend, validate=False)
    if ref is None:
        ref, ref_labels = embeddings, labels
    return res, embeddings, labels, ref, ref_labels


def masked_mean(per_anchor, valid, gather=False):
    """Mean of ``per_anchor`` over ``valid`` anchors (0 when there are none, never NaN).

    With ``gather`` and a process group: the mean over the valid anchors of *all* processes. The
    value returned is that global mean on every process; its gradient is this process's share, so
    that the gathered candidates' gradients (summed over processes in the backward) add up to the
    gradient of the global mean.
    """
    per = torch.where(valid, per_anchor, per_anchor.new_zeros(()))
    total = per.sum()
    count = valid.sum()
    if gather and is_distributed():
        count = all_reduce_sum_no_grad(count)
        local = total / count.clamp(min=1)
        return local + (all_reduce_sum_no_grad(local) - local.detach())
    return total / count.clamp(min=1)
