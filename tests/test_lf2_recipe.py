"""LF2 stage 2 on the engine: pseudo-label epochs, mean teacher, and a resume that restores
teacher, student, pseudo-labels and the clustering RNG bit-exactly."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from reidkern.data import ImageDataset, Record, build_transforms
from reidkern.engine import Trainer, get_recipe, unwrap
from reidkern.engine.loader import TrainLoader
from reidkern.engine.recipes.lf2 import LF2PseudoLabelHook, LF2Sampler, LF2TeacherHook
from reidkern.models.lf2 import LF2, LF2Net
from reidkern.uda import PseudoLabelStep

from test_lf2 import TinyTrunk

H, W = 16, 8


@pytest.fixture(scope="module")
def target_records(tmp_path_factory):
    """24 small images of 4 'identities' (a colour each, with noise); pids are for reporting."""
    root = tmp_path_factory.mktemp("target")
    g = np.random.default_rng(0)
    colours = g.integers(0, 255, size=(4, 3))
    recs = []
    for i in range(24):
        pid = i % 4
        arr = np.clip(colours[pid] + g.normal(0, 20, size=(H, W, 3)), 0, 255).astype(np.uint8)
        path = root / f"{pid:04d}_c{1 + i % 2}s1_{i:06d}.png"
        Image.fromarray(arr).save(path)
        recs.append(Record(str(path), pid, i % 2))
    return recs


def make_run(records, out_dir, max_epochs=None, seed=0):
    torch.manual_seed(seed)
    model = LF2(LF2Net(TinyTrunk(16), 16, num_classes=4))
    recipe = get_recipe("lf2", batch_size=3 * 8, height=H, width=W)
    sampler = LF2Sampler(len(records), iters=2, pk_batch=8, num_instances=2, seed=seed)
    ds = ImageDataset(records, build_transforms(H, W, train=True))
    loader = TrainLoader(ds, sampler.epoch_indices, batch_size=24, seed=seed)
    step = PseudoLabelStep(num_clusters=4, seed=seed)
    hooks = [LF2PseudoLabelHook(records, sampler, step, height=H, width=W, batch_size=10,
                                report_quality=True, loader=loader),
             LF2TeacherHook()]
    trainer = Trainer(recipe, model, loader, total_steps=6, out_dir=str(out_dir), hooks=hooks,
                      max_epochs=max_epochs, progress=False, device="cpu")
    return trainer


def test_recipe_registered():
    r = get_recipe("lf2")
    assert r.task == "uda" and r.batch_size == 192 and r.lr == 3.5e-4 and r.weight_decay == 5e-4
    s = get_recipe("lf2-source")
    assert s.milestones == (40, 70) and s.warmup_epochs == 10


def test_stage2_trains_and_resumes_bit_exactly(target_records, tmp_path):
    straight = make_run(target_records, tmp_path / "a")
    straight.fit()
    model = unwrap(straight.model)
    # Three epochs of pseudo-labels were made and logged with their quality.
    hook = straight.hooks[0]
    assert hook.step.epoch == 3 and len(hook.quality) == 3
    assert {"global_nmi", "upper_ari", "lower_clusters"} <= set(hook.quality[0])
    assert model.pseudo_labels.shape == (3, 24)
    # The teacher moved away from the student (EMA, α > 0 after the first step).
    assert any(not torch.equal(a, b) for a, b in zip(model.teacher.parameters(), model.student.parameters()))

    first = make_run(target_records, tmp_path / "b", max_epochs=1)
    first.fit()
    resumed = make_run(target_records, tmp_path / "c", seed=0)
    # A different clustering seed in the fresh step: the checkpoint's RNG must win.
    resumed.hooks[0].step = PseudoLabelStep(num_clusters=4, seed=99)
    resumed.load(str(tmp_path / "b" / "last.pt"))
    assert resumed.step == 2 and resumed.hooks[0].step.epoch == 1
    resumed.fit()
    a, b = straight.state(), resumed.state()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ha, hb = a["hooks"][0]["step"], b["hooks"][0]["step"]
    assert ha["rng"] == hb["rng"] and ha["epoch"] == hb["epoch"] == 3
    for br in ("global", "upper", "lower"):
        assert torch.equal(ha["results"][br]["labels"], hb["results"][br]["labels"])
    assert torch.equal(unwrap(resumed.model).pseudo_labels, model.pseudo_labels)


def test_sampler_blocks_follow_their_labels():
    labels = {"global": np.repeat(np.arange(6), 4), "upper": np.tile(np.arange(6), 4),
              "lower": np.r_[np.repeat(np.arange(5), 4), [-1] * 4]}
    s = LF2Sampler(24, iters=3, pk_batch=8, num_instances=2, seed=1)
    assert list(iter(s)) == [0] * len(s)  # no labels yet: placeholders for counting
    s.set_labels(labels)
    idx = s.epoch_indices(0)
    assert len(idx) == len(s) == 3 * 3 * 8
    assert idx == s.epoch_indices(0)  # reproducible
    for it in range(3):
        for j, b in enumerate(("global", "upper", "lower")):
            block = idx[(it * 3 + j) * 8:(it * 3 + j + 1) * 8]
            lab = labels[b][block]
            assert (lab >= 0).all()  # outliers never drawn
            assert all((lab == v).sum() % 2 == 0 for v in np.unique(lab))  # P×K: pairs per label
    with pytest.raises(ValueError, match="fewer than P"):
        bad = LF2Sampler(24, iters=1, pk_batch=8, num_instances=1)
        bad.set_labels({b: np.zeros(24, dtype=np.int64) for b in labels})
        list(iter(bad))


def test_engine_train_runs_the_recipe(target_records, tmp_path):
    # reidkern.engine.train (the `reidkern train lf2` path): the recipe's sampler and hook share the
    # pseudo-labels; the target's labels are never used for training.
    from reidkern.data.datasets import ReIDDataset
    from reidkern.engine.recipes.lf2 import lf2_recipe
    from reidkern.engine.run import train

    recipe = lf2_recipe(iters=2, batch_size=3 * 8, num_instances=2, height=H, width=W,
                        model_kwargs={"backbone": "resnet50", "num_clusters": 4})
    recipe.build_model = lambda num_classes, **kw: LF2(LF2Net(TinyTrunk(16), 16, num_classes=4))
    query = [Record(r.path, r.pid, 5) for r in target_records[:4]]  # a camera of its own
    ds = ReIDDataset(target_records, query, target_records[4:], name="synthetic")
    out = train(recipe, ds, str(tmp_path), epochs=2, num_workers=0, progress=False, log=lambda s: None)
    assert out["after"] is not None and 0.0 <= out["after"]["mAP"] <= 1.0
    import json

    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert sum("global_clusters" in x for x in lines) == 2  # a pseudo-label epoch per epoch
    assert sum("loss" in x for x in lines) == 4


def test_param_groups_backbone_lr_and_frozen_stages():
    from reidkern.engine.recipes.lf2 import lf2_osnet_recipe, lf2_param_groups
    from reidkern.engine.schedule import build_optimizer

    model = LF2(LF2Net(TinyTrunk(16), 16, num_classes=4))
    # Official: one group at the recipe's lr.
    opt = build_optimizer(get_recipe("lf2"), model)
    assert [g["lr"] for g in opt.param_groups] == [3.5e-4]
    recipe = lf2_osnet_recipe(backbone_lr_mult=0.1, frozen=("student.backbone.conv1",))
    opt = build_optimizer(recipe, model)
    body, head = opt.param_groups
    assert body["lr"] == pytest.approx(3.5e-5) and head["lr"] == 3.5e-4
    assert {id(p) for p in body["params"]} == {id(p) for p in model.student.backbone.parameters()}
    assert not any(p is q for p in head["params"] for q in model.teacher.parameters())
    # The frozen stage is a FreezeSchedule hook of the recipe.
    hooks = recipe.hooks(model)
    assert hooks[-1].frozen == ["student.backbone.conv1"]
    with pytest.raises(ValueError, match="backbone_lr_mult"):
        lf2_param_groups(0.0)


def test_source_weights_skip_only_the_source_classifier(tmp_path):
    """Stage 2 from a stage-1 checkpoint (another number of classes than num_clusters): every
    tensor but the classifier is loaded and the classifier is reported; a checkpoint of another
    backbone raises naming source_weights (it used to load nothing, silently)."""
    from reidkern.engine.checkpoint import save_checkpoint
    from reidkern.engine.recipes.lf2 import build_lf2
    from reidkern.models.lf2 import lf2_osnet_x0_25

    torch.manual_seed(1)
    src = lf2_osnet_x0_25(num_classes=6)
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, recipe="lf2-source-osnet", model=src.state_dict())
    with pytest.warns(UserWarning, match=r"another number of identities[\s\S]*classifier\.weight', \(6, 128\), \(9, 128\)"):
        model = build_lf2(backbone="osnet_x0_25", num_clusters=9, source_weights=path)
    for name, v in model.student.state_dict().items():
        if name == "classifier.weight":
            assert v.shape == (9, 128)
        else:
            assert torch.equal(v, src.state_dict()[name]), name
    with pytest.raises(ValueError, match=r"source_weights: [\s\S]*weights do not match LF2Net"):
        build_lf2(backbone="osnet_x0_25", num_clusters=9, source_weights=LF2Net(TinyTrunk(), 16, 6).state_dict())
