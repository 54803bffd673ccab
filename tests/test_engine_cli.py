"""The engine's CLI and recipes: train / test / extract / show-ranks / export on real crops, and
clear one-line errors (exit code 2) for bad input, with nothing half-written."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkern.cli import main
from reidkern.engine import get_recipe, recipe_names

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MINI = SHARED / "mini-market1501"
ONNX = SHARED / "reid-mini" / "osnet_x0_25_msmt17.onnx"


def needs_data():
    if not (MINI.is_dir() and ONNX.is_file()):
        pytest.skip("../shared/data (mini-market1501, reid-mini) not present")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recipes_registered():
    names = recipe_names()
    assert {"baseline", "resnet50_bnneck", "osnet", "osnet_full"} <= set(names)
    full, frozen = get_recipe("osnet_full"), get_recipe("osnet")
    assert full.hooks == [] and callable(frozen.hooks) and full.name == "osnet_full"
    def plain(r):  # fields other than name/hooks, callables by what they are
        return {f.name: repr(getattr(r, f.name)).split(" at 0x")[0] for f in dataclasses.fields(r)
                if f.name not in ("name", "hooks")}
    assert plain(full) == plain(frozen)
    r = get_recipe("baseline")
    assert (r.lr, r.batch_size, r.num_instances, r.milestones, r.warmup_epochs) == (3.5e-4, 64, 4, (40, 70), 10)


def test_baseline_recipe_step_is_finite():
    """reid-strong-baseline on a tiny random batch: BNNeck shapes, CE-LS + triplet, a step moves
    the classifier, eval gives the BNNeck feature."""
    r = get_recipe("baseline")
    torch.manual_seed(0)
    model = r.build_model(4)
    assert not model.bottleneck.bias.requires_grad
    batch = {"img": torch.randn(8, 3, 64, 32), "pid": torch.arange(4).repeat_interleave(2)}
    loss, logs = r.compute_loss(model.train(), batch)
    assert torch.isfinite(loss) and set(logs) == {"ce", "tri", "acc"}
    assert abs(float(logs["ce"]) - np.log(4)) < 0.1  # classifier starts at N(0, 0.001)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    feats = model.eval()(batch["img"])
    assert feats.shape == (8, 2048)


@pytest.mark.parametrize("argv, message", [
    (["train", "osnet", "--dataset", "con-reid", "--data", "DATA", "--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["train", "osnet", "--dataset", "con-reid", "--data", "DATA", "--epochs", "-2"], "--epochs: expected a positive integer"),
    (["train", "nope", "--dataset", "con-reid", "--data", "DATA"], "unknown recipe 'nope'"),
    (["train", "osnet", "--dataset", "nope", "--data", "DATA"], "unknown dataset 'nope'"),
    (["train", "osnet", "--dataset", "con-reid", "--data", "DATA/missing"], "missing"),
    (["train", "osnet", "--dataset", "con-reid", "--data", "DATA", "--out", "FILE"], "exists and is a file"),
    (["test", "osnet", "--dataset", "con-reid", "--data", "DATA", "--checkpoint", "DATA/none.pt"], "none.pt"),
    (["test", "osnet", "--dataset", "con-reid", "--data", "DATA", "--checkpoint", "TRUNC"], "trunc.pt"),
    (["show-ranks", "--query", "DATA/q.npz", "--gallery", "DATA/g.npz"], "q.npz"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 truncated")
    subst = {"DATA": str(tmp_path), "FILE": str(tmp_path / "file"), "TRUNC": str(tmp_path / "trunc.pt")}
    argv = [subst.get(a, a.replace("DATA", str(tmp_path))) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reidkern {argv[0]}: "), err
    assert message in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "trunc.pt"]  # nothing written


def test_train_test_extract_ranks_export_on_real_crops(tmp_path, capsys, monkeypatch):
    """One OSNet fine-tuning step on real Market crops (mini-market1501), then every command on
    its output; a checkpoint of another recipe and a dataset/model mismatch are refused."""
    needs_data()
    monkeypatch.setenv("REIDKERN_DATA", str(SHARED / "reid-mini"))
    out = tmp_path / "run"
    code, so, se = run(capsys, "train", "osnet", "--dataset", "market1501", "--data", MINI, "--steps", 1,
                       "--batch-size", 8, "--val-ids", 0, "--out", out, "--workers", 0)
    assert code == 0, se
    for name in ("last.pt", "metrics.jsonl", "results.json", "curves.png", "query.npz", "gallery.npz", "config.json"):
        assert (out / name).is_file(), name
    written = [line for line in so.splitlines() if "written to" in line]
    assert written and "last.pt" in written[0], so
    assert not (out / "best.pt").exists() and "best.pt" not in written[0]  # no validation split: no best.pt
    res = json.loads((out / "results.json").read_text())
    assert 0 < res["after"]["mAP"] <= 1 and "rr_mAP" in res["after"]
    code, so, se = run(capsys, "test", "osnet", "--dataset", "market1501", "--data", MINI,
                       "--checkpoint", out / "last.pt", "--workers", 0)
    assert code == 0 and "mAP" in so, se
    # train's final features equal a fresh extraction from the same checkpoint
    code, so, se = run(capsys, "extract", "osnet", "--dataset", "market1501", "--data", MINI,
                       "--checkpoint", out / "last.pt", "--out", tmp_path / "feats", "--workers", 0)
    assert code == 0, se
    a, b = np.load(out / "query.npz"), np.load(tmp_path / "feats" / "query.npz")
    np.testing.assert_allclose(a["feats"], b["feats"], rtol=1e-5, atol=1e-5)
    assert list(a["paths"]) == list(b["paths"])
    code, so, se = run(capsys, "eval", "--query", tmp_path / "feats" / "query.npz", "--gallery",
                       tmp_path / "feats" / "gallery.npz", "--metric", "cosine")
    assert code == 0 and "mAP" in so, se
    png = tmp_path / "ranks.png"
    code, so, se = run(capsys, "show-ranks", "--query", out / "query.npz", "--gallery", out / "gallery.npz",
                       "--out", png, "--num", 3, "--topk", 4)
    assert code == 0 and png.stat().st_size > 1000, se
    code, so, se = run(capsys, "export", "osnet", "--checkpoint", out / "last.pt", "--out", tmp_path / "m.onnx")
    assert code == 0 and "onnxruntime max |diff|" in so, se
    # a checkpoint of another recipe
    code, so, se = run(capsys, "test", "baseline", "--dataset", "market1501", "--data", MINI,
                       "--checkpoint", out / "last.pt")
    assert code == 2 and "trained with recipe 'osnet', not 'baseline'" in se


def test_dataset_of_another_task_is_refused():
    needs_data()
    from reidkern.engine.run import load_dataset

    r = get_recipe("baseline", task="text-image")
    with pytest.raises(ValueError, match="'market1501' has no captions; recipe 'baseline' is a text-image model"):
        load_dataset(r, "market1501", str(MINI))
    r = get_recipe("baseline", task="visible-infrared")
    with pytest.raises(ValueError, match="single modality"):
        load_dataset(r, "market1501", str(MINI))


def test_train_under_torchrun_two_gloo_processes(tmp_path):
    """`reidkern train` launched by torchrun (2 CPU processes, gloo): one run, rank 0 writes the
    outputs, every step logged once, test scores after training."""
    import subprocess
    import sys

    needs_data()
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path / "ddp"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", REIDKERN_DATA=str(SHARED / "reid-mini"),
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "reidkern", "train", "osnet", "--dataset", "market1501", "--data", str(MINI),
                           "--steps", "2", "--batch-size", "16", "--val-ids", "0", "--out", str(out),
                           "--workers", "0", "--threads", "1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2]
    res = json.loads((out / "results.json").read_text())
    assert 0 < res["after"]["mAP"] <= 1
