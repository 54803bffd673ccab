"""Recipes of DPTI and LA-Transformer: registration, defaults from the papers/official code, and the
official blockwise unfreezing as an engine FreezeSchedule (trainable-parameter counts and learning
rates checked against the figures the official training notebook prints)."""
import types

import pytest
import torch

from reidkern.engine import get_recipe, recipe_names
from reidkern.engine.recipes.la_transformer import ShuffleSampler, blockwise_unfreezing
from reidkern.engine.schedule import build_optimizer, build_scheduler
from reidkern.models.la_transformer import LATransformer

HEAD_751 = 768 * 751 + 751  # timm's head: trainable in the official model, never called; reidkern has none


def test_recipes_registered_with_paper_defaults():
    assert {"dpti", "la_transformer", "la_transformer_improved"} <= set(recipe_names())
    la = get_recipe("la_transformer")
    assert (la.height, la.width, la.batch_size, la.lr, la.weight_decay, la.epochs, la.optimizer) == \
        (224, 224, 32, 3e-4, 5e-4, 30, "adam")
    assert la.train_sampler is ShuffleSampler and not la.flip_test
    imp = get_recipe("la_transformer_improved")
    assert imp.flip_test and imp.num_instances == 4 and imp.model_kwargs["y_pooling"]
    d = get_recipe("dpti", lr=1e-4)
    assert (d.height, d.width, d.batch_size, d.num_instances, d.lr) == (256, 128, 64, 4, 1e-4)
    model = d.build_model(5, num_parts=2, dim=8, mid_stage="layer1", final_stage="layer1", part_heads=2)
    batch = {"img": torch.randn(4, 3, 32, 16), "pid": torch.tensor([0, 0, 1, 1])}
    loss, logs = d.compute_loss(model.train(), batch)
    assert loss.dim() == 0 and set(logs) == {"loss_ce", "loss_triplet", "loss_diversity"}
    assert d.extract(model.eval(), batch).shape == (4, 3 * 8)


def test_official_blockwise_unfreezing_counts_and_lr():
    with torch.device("meta"):
        model = LATransformer(751)
    recipe = get_recipe("la_transformer")
    opt = build_optimizer(recipe, model)
    sched = build_scheduler(recipe, opt, total_steps=30 * 380)
    hook = recipe.hooks(model)[0]
    trainer = types.SimpleNamespace(model=model, optimizer=opt, scheduler=sched)
    hook.on_train_start(trainer)

    def trainable():
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    seen = {}
    for epoch in range(30):
        hook.on_epoch_start(trainer, epoch)
        seen[epoch] = (trainable(), opt.param_groups[0]["lr"])
    # the official notebook's printout: "Unfrozen Blocks: k, Current lr: …, Trainable Params: …"
    official = {0: (20_962_817, 2.4e-4), 2: (28_050_689, 1.92e-4), 12: (63_490_049, 6.291456e-05),
                20: (91_841_537, 2.5769803776e-05), 28: (91_841_537, 1.0555311626649608e-05)}
    for epoch, (count, lr) in official.items():
        assert seen[epoch][0] == count - HEAD_751, epoch
        assert seen[epoch][1] == pytest.approx(lr, rel=1e-9), epoch
    assert seen[1] == seen[0]  # nothing between the steps
    # resume: the released blocks come back from the hook's state
    state = hook.state_dict()
    with torch.device("meta"):
        fresh = LATransformer(751)
    hook2 = blockwise_unfreezing()
    hook2.load_state_dict(state)
    hook2.on_train_start(types.SimpleNamespace(model=fresh))
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == 91_841_537 - HEAD_751


def test_blockwise_unfreezing_arguments_and_shuffle_sampler():
    with pytest.raises(ValueError, match="every"):
        blockwise_unfreezing(every=0)
    s = blockwise_unfreezing(depth=4, epochs=8, every=2, first=1, per_step=2)
    assert s.unfreeze == {0: ["backbone.blocks.3"], 2: ["backbone.blocks.2", "backbone.blocks.1"],
                          4: ["backbone.blocks.0"], 6: []}
    sampler = ShuffleSampler(list(range(10)), seed=3)
    a = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == a and sorted(a) == list(range(10)) and list(sampler) != a


@pytest.mark.parametrize("name,kwargs,size", [
    ("dpti", dict(num_parts=2, dim=8, mid_stage="layer1", final_stage="layer2", part_heads=2), (32, 16)),
    ("la_transformer_improved", dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2), (32, 32)),
])
def test_engine_export_of_the_recipes_inference_path(name, kwargs, size, tmp_path):
    # what `reidkern export dpti|la_transformer...` and recipe.onnx_eval run: the fused ops have no
    # ONNX form, so their layers export the eager path; onnxruntime checked against the model
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from reidkern.engine.export import export_onnx

    torch.manual_seed(0)
    recipe = get_recipe(name, height=size[0], width=size[1])
    model = recipe.build_model(5, **{**recipe.model_kwargs, **kwargs})
    check = export_onnx(model, recipe, str(tmp_path / "m.onnx"), batch=3)
    assert check["max_abs_diff"] <= 1e-4 * max(check["max_abs"], 1.0)
    x = torch.randn(2, 3, *size)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), recipe.extract(model.eval(), {"img": x}),
                                   rtol=1e-4, atol=1e-5)


def test_cli_export_without_checkpoint(tmp_path, monkeypatch, capsys):
    # `reidkern export dpti --out m.onnx` (docs/engine.md: --checkpoint is optional) builds the
    # recipe's initial model; with no checkpoint and no dataset it used 1 identity, which the paper
    # models refuse (num_classes >= 2), so the documented command failed
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import reidkern.engine as engine
    from reidkern.cli import main

    small = dict(num_parts=2, dim=8, mid_stage="layer1", final_stage="layer2", part_heads=2)
    real = engine.get_recipe
    monkeypatch.setattr(engine, "get_recipe", lambda name, **kw: real(name, height=32, width=16,
                                                                      model_kwargs=small, **kw))
    out = tmp_path / "dpti.onnx"
    assert main(["export", "dpti", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file() and "onnxruntime max |diff|" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["la_transformer", "la_transformer_improved"])
def test_la_transformer_transforms_resize_bicubic(name):
    # the official transforms: Resize((224, 224), interpolation=3) (bicubic), ToTensor, ImageNet
    # Normalize, RandomHorizontalFlip at training time only
    import numpy as np
    from PIL import Image

    from reidkern.data.transforms import normalize, to_tensor

    recipe = get_recipe(name)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8))
    got = recipe.build_transforms(recipe.height, recipe.width, train=False)(img)
    expected = normalize(to_tensor(img.resize((224, 224), Image.BICUBIC)))
    assert torch.equal(got, expected)
    bilinear = normalize(to_tensor(img.resize((224, 224), Image.BILINEAR)))
    assert not torch.allclose(got, bilinear, atol=1e-3)
    train = recipe.build_transforms(recipe.height, recipe.width, train=True)
    torch.manual_seed(0)
    outs = [train(img) for _ in range(8)]
    assert all(torch.equal(o, expected) or torch.equal(o, expected.flip(-1)) for o in outs)
    with pytest.raises(ValueError, match="interpolation"):
        from reidkern.data import build_transforms
        build_transforms(32, 16, train=False, interpolation="nearest")


def test_precise_bn_statistics_are_kept_in_the_tested_checkpoint(tmp_path):
    # dpti re-estimates BatchNorm statistics before the final test (precise_bn): `reidkern test` /
    # `extract` of the checkpoint must give train's figures and query.npz, not those of the
    # training-time running statistics (they differed: mAP 19.3 vs 18.9, features by up to 4.6)
    import numpy as np

    from reidkern.data import build_dataset
    from reidkern.data.paths import shared_data_dir
    from reidkern.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
    from reidkern.engine.evaluate import features_of
    from reidkern.engine.run import build_model_for, test, train

    root = shared_data_dir("mini-market1501")
    if root is None:
        pytest.skip("../shared/data/mini-market1501 not found")
    ds = build_dataset("market1501", root)
    small = dict(num_parts=2, dim=8, mid_stage="layer1", final_stage="layer2", part_heads=2)
    recipe = get_recipe("dpti", height=32, width=16, batch_size=8, val_ids=0, model_kwargs=small, lr=1e-2,
                        precise_bn=2)
    out = train(recipe, ds, str(tmp_path), steps=2, num_workers=0, progress=False, device="cpu",
                log=lambda s: None)
    last = str(tmp_path / "last.pt")
    scores = test(recipe, last, ds, device="cpu", num_workers=0, progress=False)
    assert scores["mAP"] == pytest.approx(out["after"]["mAP"], abs=1e-6)
    model = build_model_for(recipe, load_checkpoint(last)["num_classes"])
    model_state_from_checkpoint(model, load_checkpoint(last), last)
    feats = features_of(model, recipe, ds.query, device="cpu", progress=False).feats.numpy()
    np.testing.assert_allclose(feats, np.load(tmp_path / "query.npz")["feats"], rtol=1e-5, atol=1e-5)
