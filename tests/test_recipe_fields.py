"""Every recipe field either takes effect or is refused: ``label_smoothing`` reaches the loss of
the recipes that smooth their cross-entropy (DPTI and LA-Transformer through the model, the
BNNeck/OSNet and LF2 recipes through their loss), and the fields a recipe's parts do not read
(LGUR's and CAL's plain CE, the plain-shuffle samplers' ``num_instances``, the task protocols'
re-ranking) raise ValueError naming the field instead of being dropped silently."""
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkern.engine import Recipe, fixed_fields, get_recipe, recipe_names

EPS = 0.25


def _smoothing_of(recipe):
    """The ε a recipe's parts will use, or None when no part reads it."""
    for part in (recipe.compute_loss, recipe.build_model):
        if hasattr(part, "with_label_smoothing"):
            return part.label_smoothing
    return None


@pytest.mark.parametrize("name", recipe_names())
def test_label_smoothing_takes_effect_or_is_refused(name):
    # the sweep over every registered recipe: a new recipe that drops the field fails here
    default = get_recipe(name)
    assert _smoothing_of(default) in (None, default.label_smoothing)
    try:
        recipe = get_recipe(name, label_smoothing=EPS)
    except ValueError as e:
        assert str(e).startswith("label_smoothing:") and _smoothing_of(default) is None
        assert get_recipe(name, label_smoothing=default.label_smoothing).label_smoothing == default.label_smoothing
        return
    assert _smoothing_of(recipe) == EPS
    assert _smoothing_of(get_recipe(name)) == default.label_smoothing  # the registered recipe is untouched


def test_paper_defaults_of_label_smoothing():
    # DPTI: the paper names no smoothing (the model's default 0); LA-Transformer: the official plain
    # CE; the strong baseline, OSNet fine-tuning and LF2 (both stages): the official ε = 0.1
    expected = {"dpti": 0.0, "la_transformer": 0.0, "la_transformer_improved": 0.0, "lgur": 0.0, "cal": 0.0,
                "baseline": 0.1, "osnet": 0.1, "osnet_full": 0.1, "lf2": 0.1, "lf2-source": 0.1}
    for name, eps in expected.items():
        r = get_recipe(name)
        assert r.label_smoothing == eps, name
        assert _smoothing_of(r) in (None, eps), name


def _dpti_kwargs():
    return dict(num_parts=2, dim=8, mid_stage="layer1", final_stage="layer1", part_heads=2)


@pytest.mark.parametrize("name,kwargs,size", [
    ("dpti", _dpti_kwargs(), (32, 16)),
    ("la_transformer", dict(img_size=(32, 16), patch_size=8, embed_dim=16, depth=1, num_heads=2), (32, 16)),
    ("la_transformer_improved", dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2), (16, 16)),
])
def test_label_smoothing_changes_the_models_loss(name, kwargs, size):
    # the recipe's ε reaches the model's CE: same weights and batch, the loss moves by exactly
    # weight · (CE_ε − CE_0) computed here from the logits
    torch.manual_seed(0)
    plain, smooth = get_recipe(name), get_recipe(name, label_smoothing=EPS)
    m0 = plain.build_model(5, **{**plain.model_kwargs, **kwargs})
    m1 = smooth.build_model(5, **{**smooth.model_kwargs, **kwargs})
    m1.load_state_dict(m0.state_dict())
    assert (m0.label_smoothing, m1.label_smoothing) == (0.0, EPS)
    batch = {"img": torch.randn(4, 3, *size), "pid": torch.tensor([0, 0, 1, 1])}
    with torch.no_grad():  # one train-mode forward, both losses on its outputs
        out = m0.train()(batch["img"]) if name == "dpti" else _la_train_outputs(m0, batch["img"])
        out = {**out, "logits": 20 * out["logits"]}  # away from the near-uniform logits of the init
        l0, logs0 = m0.loss(out, batch["pid"])
        l1, logs1 = m1.loss(out, batch["pid"])
    logits = out["logits"]
    if name == "dpti":
        weight = m0.alpha
        flat, target = logits, batch["pid"]
    else:
        P = logits.shape[1]
        weight, flat, target = P, logits.reshape(-1, logits.shape[-1]), batch["pid"].repeat_interleave(P)
        if m0.metric_loss:
            flat = flat - m0.classifiers.scale * m0.am_margin * F.one_hot(target, flat.shape[-1]).to(flat.dtype)
    expect = weight * (F.cross_entropy(flat, target, label_smoothing=EPS) - F.cross_entropy(flat, target))
    assert abs(float(expect)) > 1e-3
    torch.testing.assert_close(l1 - l0, expect, rtol=1e-4, atol=1e-5)


def _la_train_outputs(model, img):
    # train-mode outputs of LA-Transformer with its ClassBlock dropout off (deterministic)
    model.train()
    for mod in model.modules():
        if isinstance(mod, nn.Dropout):
            mod.eval()
    return model(img)


def test_la_transformer_eager_twin_smooths_like_the_model():
    from reidkern.models.la_transformer import LATransformer
    from reidkern.models.la_transformer_eager import LATransformerEager

    torch.manual_seed(0)
    model = LATransformer(5, img_size=(32, 16), patch_size=8, embed_dim=16, depth=1, num_heads=2,
                          label_smoothing=EPS).double()
    twin = LATransformerEager(model)
    x, pids = torch.randn(4, 3, 32, 16, dtype=torch.float64), torch.tensor([0, 0, 1, 1])
    out = _la_train_outputs(model, x)
    torch.testing.assert_close(model.loss(out, pids)[0], twin.loss(out, pids)[0])
    with pytest.raises(ValueError, match="label_smoothing"):
        LATransformer(5, img_size=(32, 16), patch_size=8, embed_dim=16, depth=1, num_heads=2, label_smoothing=-0.1)


class _BNNeckStub(nn.Module):
    """(global_feat, logits) like the BNNeck models, from a linear map."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return x, self.fc(x)

    def source_forward(self, x):
        return self.forward(x)


@pytest.mark.parametrize("name", ["baseline", "osnet", "lf2-source"])
def test_label_smoothing_changes_the_recipe_loss(name):
    torch.manual_seed(0)
    model = _BNNeckStub()
    batch = {"img": torch.randn(8, 6), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    default = get_recipe(name)
    l_default, logs = default.compute_loss(model, batch)
    l_zero, _ = get_recipe(name, label_smoothing=0.0).compute_loss(model, batch)
    logits = model.fc(batch["img"])
    expect = F.cross_entropy(logits, batch["pid"], label_smoothing=0.1) - F.cross_entropy(logits, batch["pid"])
    torch.testing.assert_close(l_default - l_zero, expect.detach(), rtol=1e-4, atol=1e-6)
    assert abs(float(expect)) > 1e-3


def test_lf2_recipe_loss_reads_label_smoothing():
    assert get_recipe("lf2").compute_loss.loss_fn.label_smoothing == 0.1
    assert get_recipe("lf2", label_smoothing=0.0).compute_loss.loss_fn.label_smoothing == 0.0
    assert get_recipe("lf2-osnet", label_smoothing=0.2).compute_loss.loss_fn.label_smoothing == 0.2


@pytest.mark.parametrize("name,field,value", [
    ("lgur", "label_smoothing", 0.1),
    ("cal", "label_smoothing", 0.1),
    ("la_transformer", "num_instances", 4),
    ("lgur", "num_instances", 4),
    ("lgur", "flip_test", True),
    ("lgur", "rerank", True),
    ("lgur", "onnx_eval", True),
    ("cal", "rerank", True),
    ("cal", "onnx_eval", True),
])
def test_fields_a_recipe_does_not_read_are_refused(name, field, value):
    with pytest.raises(ValueError, match=f"^{field}: the '{name}' recipe does not read it"):
        get_recipe(name, **{field: value})
    get_recipe(name, **{field: getattr(get_recipe(name), field)})  # its own value passes


def test_refusal_follows_the_part_in_use():
    # P×K batches for LA-Transformer: num_instances is read once the plain shuffle is replaced
    r = get_recipe("la_transformer", train_sampler=None, num_instances=4)
    assert r.num_instances == 4 and get_recipe("la_transformer_improved").num_instances == 4
    # and a custom part declares what it does not read
    @fixed_fields(metric=("cosine", "features are compared by cosine only"))
    def evaluate(model, recipe, query, gallery, **kw):
        return {"mAP": 0.0}

    base = get_recipe("baseline")
    with pytest.raises(ValueError, match="^metric: the 'baseline' recipe does not read it"):
        Recipe(**{**base.__dict__, "evaluate": evaluate, "metric": "euclidean"})


def _smoothing_takers():
    """Every constructor that takes ``label_smoothing``: ``make(ε) -> object with .label_smoothing``."""
    from reidkern.engine.recipes._self_loss import SmoothedBuilder
    from reidkern.engine.recipes.baseline import ce_triplet_loss
    from reidkern.engine.recipes.lf2 import LF2StepLoss, _SourceLoss
    from reidkern.models.dpti import DPTI
    from reidkern.models.la_transformer import LATransformer
    from reidkern.models.lf2 import LF2Loss
    from reidkern.models.lf2_eager import EagerLF2Loss
    from reidkern.nn.losses import AMSoftmaxLoss

    return {
        "recipe": lambda e: get_recipe("baseline", label_smoothing=e),
        "recipe-direct": lambda e: Recipe(name="r", task="image", build_model=nn.Linear, compute_loss=None,
                                          extract=None, label_smoothing=e),
        "DPTI": lambda e: DPTI(5, label_smoothing=e, **_dpti_kwargs()),
        "LATransformer": lambda e: LATransformer(5, img_size=(32, 16), patch_size=8, embed_dim=16, depth=1,
                                                 num_heads=2, label_smoothing=e),
        "LF2Loss": lambda e: LF2Loss(label_smoothing=e),
        "EagerLF2Loss": lambda e: EagerLF2Loss(label_smoothing=e),
        "AMSoftmaxLoss": lambda e: AMSoftmaxLoss(4, 3, label_smoothing=e),
        "CETripletLoss": lambda e: ce_triplet_loss(label_smoothing=e),
        "LF2StepLoss": lambda e: LF2StepLoss(e),
        "lf2 _SourceLoss": lambda e: _SourceLoss(e),
        "SmoothedBuilder": lambda e: SmoothedBuilder(DPTI, e),
    }


@pytest.mark.parametrize("taker", ["recipe", "recipe-direct", "DPTI", "LATransformer", "LF2Loss", "EagerLF2Loss",
                                   "AMSoftmaxLoss", "CETripletLoss", "LF2StepLoss", "lf2 _SourceLoss",
                                   "SmoothedBuilder"])
def test_label_smoothing_has_one_range_everywhere(taker):
    # [0, 1): ε = 1 makes the target uniform (nothing learnt), so the recipe, the models and the
    # losses all refuse it with the same message; just below 1 is accepted
    make = _smoothing_takers()[taker]
    for value in (1.0, 1, -0.1, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match="^label_smoothing: expected a number in \\[0, 1\\) "):
            make(value)
    assert make(0.999).label_smoothing == 0.999
    assert make(0).label_smoothing == 0.0


def test_model_kwargs_cannot_contradict_the_recipe_field():
    r = get_recipe("dpti", label_smoothing=0.1)
    with pytest.raises(ValueError, match="^label_smoothing: model_kwargs gives 0.2"):
        r.build_model(5, label_smoothing=0.2, **_dpti_kwargs())
    assert r.build_model(5, label_smoothing=0.1, **_dpti_kwargs()).label_smoothing == 0.1


def test_recipe_factories_apply_their_keywords_through_the_checks():
    from reidkern.engine.recipes.cal import cal_recipe
    from reidkern.engine.recipes.dpti import dpti_recipe
    from reidkern.engine.recipes.lf2 import lf2_source_recipe

    assert dpti_recipe(label_smoothing=0.2).build_model.label_smoothing == 0.2
    assert lf2_source_recipe(label_smoothing=0.0).compute_loss.label_smoothing == 0.0
    with pytest.raises(ValueError, match="^label_smoothing"):
        cal_recipe(label_smoothing=0.1)


def test_lf2_pseudo_label_clustering_follows_the_recipe_seed():
    # the recipe's hooks seed the clustering from trainer.recipe.seed (an override of seed used to
    # reach sampling and initialisation but not the clustering)
    recipe = get_recipe("lf2", seed=7)
    model = types.SimpleNamespace(student=types.SimpleNamespace(num_classes=4))
    hook = recipe.hooks(model)[0]
    hook.on_train_start(types.SimpleNamespace(recipe=recipe))
    expect = np.random.Generator(np.random.PCG64(7)).integers(0, 2**31 - 1, size=3)
    assert hook.step.rng.integers(0, 2**31 - 1, size=3).tolist() == expect.tolist()


# --- settings the engine reads only under another setting (momentum, milestones, gamma,
# warmup_factor, rerank_grid): refused under the setting that ignores them, applied otherwise

GRID = ((10, 6, 0.3),)


@pytest.mark.parametrize("name,overrides,field", [
    ("baseline", dict(momentum=0.5), "momentum"),  # adam
    ("baseline", dict(optimizer="adamw", momentum=0.5), "momentum"),
    ("osnet", dict(milestones=(1, 2)), "milestones"),  # cosine
    ("osnet", dict(gamma=0.5), "gamma"),
    ("baseline", dict(scheduler="cosine", gamma=0.5), "gamma"),
    ("lf2", dict(gamma=0.5), "gamma"),  # step with no milestones
    ("baseline", dict(milestones=(), gamma=0.5), "gamma"),
    ("la_transformer", dict(warmup_factor=0.1), "warmup_factor"),  # warmup_epochs=0
    ("baseline", dict(warmup_epochs=0, warmup_factor=0.1), "warmup_factor"),
    ("baseline", dict(rerank_grid=GRID), "rerank_grid"),  # rerank=False
    ("osnet", dict(val_ids=0, rerank_grid=GRID), "rerank_grid"),  # no validation split
])
def test_settings_without_effect_are_refused(name, overrides, field):
    with pytest.raises(ValueError, match=f"^{field}: .* has no effect with "):
        get_recipe(name, **overrides)
    own = {**overrides, field: getattr(get_recipe(name), field)}
    get_recipe(name, **own)  # the recipe's own value passes under any setting


def test_refusal_message_names_field_value_and_reason():
    with pytest.raises(ValueError, match=r"^momentum: 0.5 has no effect with optimizer 'adam' \(SGD only\)"):
        get_recipe("baseline", momentum=0.5)
    # a later replace that switches the setting off refuses the value set before
    import dataclasses
    sgd = get_recipe("baseline", optimizer="sgd", momentum=0.5)
    with pytest.raises(ValueError, match="^momentum: 0.5 has no effect with optimizer 'adam'"):
        dataclasses.replace(sgd, optimizer="adam")
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("baseline", _defaults={})


def _lrs(recipe, steps):
    from reidkern.engine.schedule import build_optimizer, build_scheduler

    opt = build_optimizer(recipe, nn.Linear(2, 2))
    sched = build_scheduler(recipe, opt, steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, out


def test_momentum_reaches_sgd():
    from reidkern.engine.schedule import build_optimizer

    opt = build_optimizer(get_recipe("baseline", optimizer="sgd", momentum=0.5), nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    assert build_optimizer(get_recipe("baseline", optimizer="sgd"), nn.Linear(2, 2)).param_groups[0]["momentum"] == 0.9


def test_milestones_and_gamma_reach_the_step_schedule():
    # osnet is cosine; switched to step, its milestones/gamma are read: lr × 0.5 from recipe epoch 2 of 4
    r = get_recipe("osnet", scheduler="step", milestones=(2,), gamma=0.5, warmup_epochs=0)
    _, lrs = _lrs(r, 8)
    assert lrs == pytest.approx([1e-4] * 4 + [5e-5] * 4)
    _, lrs = _lrs(get_recipe("lf2", milestones=(40,), gamma=0.5, epochs=80), 8)  # lf2: no milestones by default
    assert lrs == pytest.approx([3.5e-4] * 4 + [1.75e-4] * 4)


def test_warmup_factor_reaches_the_warmup():
    # la_transformer has no warm-up; with one, warmup_factor sets the first step's lr
    r = get_recipe("la_transformer", warmup_epochs=3, warmup_factor=0.1)
    _, lrs = _lrs(r, 30)
    assert lrs[0] == pytest.approx(0.1 * 3e-4) and lrs[3] == pytest.approx(3e-4)
    _, lrs = _lrs(get_recipe("baseline", warmup_factor=0.1), 120)
    assert lrs[0] == pytest.approx(3.5e-5)


def test_rerank_grid_accepted_where_train_chooses_with_it():
    r = get_recipe("baseline", rerank=True, rerank_grid=GRID)
    assert r.rerank_grid == GRID and r.val_ids > 0


@pytest.mark.parametrize("name", ["cal", "lgur"])
def test_task_protocols_refuse_rerank_params(name):
    with pytest.raises(ValueError, match=f"^rerank_params: the '{name}' recipe does not read it"):
        get_recipe(name, rerank_params=(10, 6, 0.3))


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_builds_with_its_own_mode_settings_under_any_mode(name):
    # the recipe's own values pass whatever the other settings, so defaults never break a recipe
    r = get_recipe(name)
    for over in (dict(optimizer="sgd"), dict(optimizer="adam"), dict(scheduler="cosine"), dict(scheduler="step"),
                 dict(warmup_epochs=0), dict(rerank=False), dict(val_ids=0)):
        try:
            get_recipe(name, **over)
        except ValueError as e:  # only a part's own fixed field may refuse (e.g. cal's rerank)
            assert "does not read it" in str(e), (name, over, e)
    assert r._defaults == {f: getattr(r, f) for f in ("momentum", "milestones", "gamma", "warmup_factor", "rerank_grid")}


# --- a direct construction: its values become the recipe's own, so they must not contradict each
# other (compared with the field defaults); later overrides are compared with them

def _direct(**kw):
    return Recipe(name="mine", task="image", build_model=nn.Linear, compute_loss=None, extract=None, **kw)


@pytest.mark.parametrize("kw,field,default", [
    (dict(optimizer="adam", momentum=0.5), "momentum", 0.9),
    (dict(scheduler="cosine", milestones=(10,)), "milestones", (40, 70)),
    (dict(scheduler="cosine", gamma=0.5), "gamma", 0.1),
    (dict(milestones=[], gamma=0.5), "gamma", 0.1),
    (dict(warmup_epochs=0, warmup_factor=0.1), "warmup_factor", 0.01),
    (dict(rerank_grid=GRID), "rerank_grid", None),
    (dict(rerank=True, val_ids=0, rerank_grid=GRID), "rerank_grid", None),
])
def test_contradictory_direct_construction_is_refused(kw, field, default):
    with pytest.raises(ValueError, match=f"^{field}: .* has no effect with .*; the field's default "
                                         f"{re.escape(repr(default))} is the only one accepted there"):
        _direct(**kw)
    _direct(**{**kw, field: default})  # the default passes


def test_direct_construction_declares_the_recipes_own_values():
    import dataclasses

    r = _direct(optimizer="sgd", momentum=0.5, scheduler="cosine", warmup_epochs=2, warmup_factor=0.1)
    assert r._defaults["momentum"] == 0.5 and r._defaults["warmup_factor"] == 0.1
    adam = dataclasses.replace(r, optimizer="adam", warmup_epochs=0)  # its own values pass in any mode
    assert (adam.momentum, adam.warmup_factor) == (0.5, 0.1)
    with pytest.raises(ValueError, match="^momentum: 0.7 has no effect with optimizer 'adam'.*'mine' recipe's own value 0.5"):
        dataclasses.replace(adam, momentum=0.7)
    with pytest.raises(ValueError, match="^scheduler: expected 'step' or 'cosine', got 'linear'"):
        _direct(scheduler="linear")
    with pytest.raises(ValueError, match="^optimizer: expected 'adam', 'adamw' or 'sgd', got 'lbfgs'"):
        _direct(optimizer="lbfgs")


def test_la_transformer_schedule_is_constant():
    # the official notebook never steps its scheduler: the recipe's step schedule has no milestones,
    # so its gamma (now the field default, once 1.0) is never applied
    for name in ("la_transformer", "la_transformer_improved"):
        r = get_recipe(name)
        assert r.milestones == () and r.warmup_epochs == 0
        _, lrs = _lrs(r, 20)
        assert lrs == pytest.approx([3e-4] * 20)


# --- settings whose effect vanishes only at run time: warned (schedule) or refused (validation)

def _scheduler_warnings(recipe, steps):
    import warnings

    from reidkern.engine.schedule import build_optimizer, build_scheduler

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_scheduler(recipe, build_optimizer(recipe, nn.Linear(2, 2)), steps)
    return [str(w.message) for w in caught]


def test_schedule_settings_that_vanish_in_a_short_run_are_warned():
    base = get_recipe("baseline")  # 120 epochs, warm-up 10, milestones 40, 70
    assert _scheduler_warnings(base, 1200) == []  # the full run: every setting takes effect
    assert _scheduler_warnings(get_recipe("la_transformer"), 3) == []  # nothing asked, nothing lost
    msgs = _scheduler_warnings(base, 1)
    assert msgs == [
        "warmup_epochs: 10 of the recipe's 120 epochs rounds to 0 of this run's 1 steps: no warm-up, the run "
        "starts at the full lr",
        "milestones: 40 of the recipe's 120 epochs maps to step 0 of this run, where the step schedule drops it, "
        "so the lr is never multiplied by gamma=0.1 there",
        "milestones: 70 of the recipe's 120 epochs maps to step 1, but this run's last step is 0, so the lr is "
        "never multiplied by gamma=0.1 there"]
    msgs = _scheduler_warnings(base, 2)  # both milestones at step 1: one decay, not two
    assert msgs[1].startswith("milestones: [40, 70] of the recipe's 120 epochs all map to step 1")
    _, lrs = _lrs(base, 2)
    assert lrs == pytest.approx([3.5e-4, 3.5e-5])  # what the warning says: ×0.1 once
    msgs = _scheduler_warnings(get_recipe("baseline", warmup_epochs=50), 12)  # warm-up: 5 steps
    assert msgs == ["milestones: 40 of the recipe's 120 epochs maps to step 4 within this run's 5-step warm-up, "
                    "where the step schedule drops it, so the lr is never multiplied by gamma=0.1 there"]
    _, lrs = _lrs(get_recipe("baseline", warmup_epochs=50), 12)
    assert lrs[5:] == pytest.approx([3.5e-4] * 2 + [3.5e-5] * 5)  # 40 dropped, 70 (step 7) applied once
    # a cosine schedule reads no milestones: only its warm-up can vanish
    assert _scheduler_warnings(get_recipe("osnet"), 3) == [
        "warmup_epochs: 0.2 of the recipe's 4 epochs rounds to 0 of this run's 3 steps: no warm-up, the run "
        "starts at the full lr"]
    # a warm-up as long as the run is cut to leave the schedule one step
    assert _scheduler_warnings(get_recipe("osnet", warmup_epochs=4), 10) == [
        "warmup_epochs: 4 of the recipe's 4 epochs is longer than this run's 10 steps: the warm-up is cut to 9 "
        "steps and the schedule after it has 1 step"]
    assert _scheduler_warnings(get_recipe("osnet", warmup_epochs=3.6), 10) == []  # 9 steps: fits


def _records(cams_of_pid):
    from reidkern.data import Record

    return [Record(f"{pid}_{i}.jpg", pid, cam) for pid, cams in enumerate(cams_of_pid) for i, cam in enumerate(cams)]


def test_validation_split_that_cannot_choose_is_refused(tmp_path):
    from reidkern.engine.run import check_validation_split, train

    # every identity seen by one camera only: a held-out id's query has no other-camera gallery image
    data = types.SimpleNamespace(train=_records([[i % 2, i % 2, i % 2] for i in range(6)]), query=[], gallery=[])
    with pytest.raises(ValueError, match="^val_ids: no query of the 2 held-out ids has a gallery image of its id "
                                         "from another camera .* set val_ids=0 to test the last checkpoint"):
        train(get_recipe("baseline", val_ids=2), data, str(tmp_path))
    recipe = get_recipe("baseline", val_ids=2)
    with pytest.raises(ValueError, match="^val_ids: the 2 held-out ids leave 1 validation query and 0 gallery"):
        check_validation_split(recipe, _records([[0]]), [])
    check_validation_split(recipe, _records([[0]]), _records([[1]]))  # another camera: a match
    check_validation_split(recipe, _records([[0]]), _records([[-1]]))  # no camera: a match
    with pytest.raises(ValueError, match="^val_ids: no query"):
        check_validation_split(recipe, _records([[0], [1]]), _records([[0], [1]]))  # each id: its query's camera
    # a task protocol has its own matching rules: only emptiness is refused there
    check_validation_split(get_recipe("lgur", val_ids=2), _records([[0]]), _records([[0]]))
