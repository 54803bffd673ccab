"""One training step of each paper model (forward + backward, optimizer excluded): reidkern's model
against its eager twin — the same parameters run through the field's standard blocks
(reidkern/models/<paper>_eager.py; checked equal in float64 by tests/test_<paper>.py).

Two measurements per model, time and peak memory, in one run:
  step  the whole model: backbone, head and loss, forward + backward (gradients of every parameter)
  head  everything after the backbone: the backbone's outputs are computed once (same for both
        providers) and the head + loss run forward + backward (gradients of the head's parameters
        and of the backbone outputs)
Providers: "eager" (the twin), "reidkern" (the model), and "eager-compile" (torch.compile of the
twin; on a GPU, or on CPU with REIDKERN_BENCH_COMPILE=1).

Each paper's cases live in benchmarks/model_cases/<paper>.py (batch and image size of the paper)
and are registered by one line below. REIDKERN_BENCH_STEP_BATCH=N measures the whole steps at
batch N instead (a small CPU), the heads staying at the paper's batch. Smoke mode (REIDKERN_BENCH_SMOKE=1, CI): tiny models and
images, one call each.

Run:  cd benchmarks && PYTHONPATH=.. python -m pytest bench_models.py --benchmark-json=out.json
      (or: reidkern bench -k bench_models --out DIR); -k "dpti and head" picks one measurement.
"""
import os

import pytest
import torch

from _common import record, run_device, smoke
from model_cases import cal, dpti, la_transformer, lf2, lgur

# One line per paper model.
CASES = {case.name: case for case in [
    *dpti.CASES,
    *la_transformer.CASES,
    *lgur.CASES,
    *lf2.CASES,
    *cal.CASES,
]}
# Whole paper models at their papers' batch and image sizes take tens of minutes on a small CPU:
# they run with `reidkern bench --full` (or -k bench_models), not in the default representative set.
REPRESENTATIVE = set()

DEVICE = run_device()
PROVIDERS = ("eager", "reidkern", "eager-compile")
_state = {}  # the case built last: (name, model, twin, batch); one full-size model alive at a time


def _setup(case):
    if _state.get("name") != case.name:
        _state.clear()
        torch.manual_seed(0)
        model, twin = case.build(smoke())
        model = model.to(DEVICE).train()
        twin = twin.to(DEVICE).train()  # a twin may hold its own modules (e.g. per-part blocks)
        _state.update(name=case.name, model=model, twin=twin, batches={}, compiled={})
    key = case.shape(smoke())
    if key not in _state["batches"]:
        _state["batches"][key] = case.make_batch(case, smoke(), DEVICE)
    return _state["model"], _state["twin"], _state["batches"][key], _state["compiled"]


def _params():
    # case-major order, so that each model is built once
    return [pytest.param(name, part, provider, id=f"{name}-{part}-{provider}")
            for name, case in CASES.items() for part in ("step", "head") if part in case.parts
            for provider in PROVIDERS]


@pytest.mark.parametrize("name,part,provider", _params())
def test_model_train_step(benchmark, name, part, provider):
    case = CASES[name].for_part(part)
    if provider == "eager-compile" and DEVICE == "cpu" and os.environ.get("REIDKERN_BENCH_COMPILE") != "1":
        pytest.skip("torch.compile of a whole model on CPU: set REIDKERN_BENCH_COMPILE=1")
    model, twin, batch, compiled = _setup(case)
    impl = model if provider == "reidkern" else twin
    # the parameters this provider trains (a twin may hold its own leaves, e.g. per-part blocks)
    params = [p for p in impl.parameters() if p.requires_grad]

    if part == "step":
        def loss_fn():
            return case.head_loss(impl, case.backbone(impl, batch), batch)
        inputs = []
    else:
        with torch.no_grad():
            feats = case.backbone(model, batch)
        feats = tuple(f.detach().requires_grad_() for f in feats)
        inputs = list(feats)

        def loss_fn():
            return case.head_loss(impl, feats, batch)

    if provider == "eager-compile":
        key = (part, case.shape(smoke()))
        if key not in compiled:
            compiled[key] = torch.compile(loss_fn)
        loss_fn = compiled[key]

    def fn():
        loss = loss_fn()
        return loss, torch.autograd.grad(loss, params + inputs, allow_unused=True)

    loss, _ = record(benchmark, f"model_{part}", provider, case.label(smoke()), fn, DEVICE,
                     part=part, model=case.name, note=case.note,
                     passes="forward+backward")
    assert torch.isfinite(loss).item()
