"""The contract every public op keeps (docs/adding_an_op.md): one result type whatever the flags,
and one ``validate=True`` argument with one meaning."""
import inspect
import math

import pytest
import torch

import reidkern.ops as ops

PUBLIC_OPS = [ops.batch_hard_mining, ops.evaluate_rank_per_query, ops.knn, ops.template_attention,
              ops.topk_token_aggregate]


@pytest.mark.parametrize("op", PUBLIC_OPS, ids=lambda f: f.__name__)
def test_validate_is_the_last_argument_and_defaults_to_true(op):
    last = list(inspect.signature(op).parameters.values())[-1]
    assert last.name == "validate" and last.default is True
    assert "validate: True (default) checks every argument first" in op.__doc__


def _nan_inputs():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 3, 4, generator=g), torch.randn(2, 1, 5, 4, generator=g)
    q[0, 0, 0, 0] = math.nan
    scores = torch.rand(2, 5, 3, generator=g)
    tokens = torch.randn(2, 5, 4, generator=g)
    tokens[1, 2, 0] = math.nan
    emb = torch.randn(6, 4, generator=g)
    emb[2, 1] = math.nan
    return [
        (lambda v: ops.template_attention(q, k, k, backend="reference", validate=v), "q contains NaN"),
        (lambda v: ops.topk_token_aggregate(scores, tokens, k=2, backend="reference", validate=v),
         "tokens contains NaN"),
        (lambda v: ops.batch_hard_mining(emb, torch.tensor([0, 0, 1, 1, 2, 2]), backend="reference",
                                         validate=v), "embeddings contains NaN"),
        (lambda v: ops.knn(emb, emb, 2, backend="reference", validate=v), "x contains NaN"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_validate_false_skips_the_checks(case):
    call, message = _nan_inputs()[case]
    with pytest.raises(ValueError, match=message):
        call(True)
    call(False)  # the caller vouches for its arguments: no check, no error


def test_one_result_type_whatever_the_flags():
    q, k = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 5, 4)
    for rw in (False, True):
        for rm in (False, True):
            res = ops.template_attention(q, k, k, return_weights=rw, return_mean_logit=rm)
            assert isinstance(res, ops.TemplateAttentionResult)
            assert (res.weights is not None) == rw and (res.mean_logit is not None) == rm
    d = torch.rand(3, 4, dtype=torch.float64)
    res = ops.evaluate_rank_per_query(d, [0, 1, 2], [0, 1, 2, 0], [0, 0, 0], [1, 1, 1, 1])
    assert isinstance(res, ops.PerQueryRankResult) and res.first_hit.dtype == torch.int64
