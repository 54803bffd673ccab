"""The engine's own cost: the baseline recipe's training steps through the whole loop (JPEG files →
DataLoader workers → P×K batches → Trainer.fit with logging) against the same steps on a batch
already in memory (``Trainer.train_step`` alone).

Run:   PYTHONPATH=. python -m pytest benchmarks/bench_engine.py
Smoke: REIDKERN_BENCH_SMOKE=1 (64×32 images, batch 4, two steps)
Batch: REIDKERN_BENCH_ENGINE_BATCH=N (default 16: a ResNet-50 step at 256×128 and batch 64 takes
over a minute on a 2-core CPU), REIDKERN_BENCH_ENGINE_STEPS=N steps per call (default 4).

Each call runs STEPS steps; ``engine_loop`` continues one Trainer (workers persist, as within an
epoch), ``model_step`` repeats ``train_step`` on one collated batch. Checkpoints (epoch ends only in a real
run) are not part of either. The loop's overhead is
``1 − model_step / engine_loop`` (extra_info ``overhead`` of the engine_loop row); data loading is
overlapped with compute by the 2 DataLoader workers.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _common import record, smoke
from reidkern.data import ImageDataset, RandomIdentitySampler, Record, build_transforms
from reidkern.engine import Trainer, get_recipe
from reidkern.engine.loader import TrainLoader

BATCH = 4 if smoke() else int(os.environ.get("REIDKERN_BENCH_ENGINE_BATCH", "16"))
STEPS = 2 if smoke() else int(os.environ.get("REIDKERN_BENCH_ENGINE_STEPS", "4"))
HW = (64, 32) if smoke() else (256, 128)
K = 4
_times = {}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Real JPEG files (64×128 crops like Con-ReID's), Market-style names, K·4 per identity."""
    folder = tmp_path_factory.mktemp("engine_jpegs")
    rng = np.random.default_rng(0)
    ids = max(BATCH // K, 2) * 2
    recs = []
    for pid in range(ids):
        for j in range(K * 4):
            path = folder / f"{pid:04d}_c{j % 3 + 1}s1_{j:06d}.jpg"
            Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(path, quality=90)
            recs.append(Record(str(path), pid, j % 3))
    return recs


def _indices(records):
    """The P×K sampler's index order of each epoch."""
    def indices(epoch):
        s = RandomIdentitySampler(records, BATCH, K, seed=0)
        s.set_epoch(epoch)
        return list(s)
    return indices


def _trainer(records, loader_workers):
    recipe = get_recipe("baseline", batch_size=BATCH, height=HW[0], width=HW[1], val_ids=0)
    num_ids = len({r.pid for r in records})
    torch.manual_seed(0)
    model = recipe.build_model(num_ids)
    data = ImageDataset(records, build_transforms(*HW, train=True))

    loader = TrainLoader(data, _indices(records), BATCH, num_workers=loader_workers, rank=0, world_size=1)
    return Trainer(recipe, model, loader, total_steps=10_000, device="cpu", progress=False), data


@pytest.mark.parametrize("provider", ["model_step", "engine_loop"])
def test_engine_overhead(benchmark, records, provider):
    size = f"resnet50_bnneck_b{BATCH}_{HW[0]}x{HW[1]}"
    if provider == "model_step":
        tr, data = _trainer(records, 0)
        # The loop's own first P×K batches, decoded and collated beforehand: the same identities
        # per batch as the loop trains on (one batch of a single identity would give the triplet
        # loss no negatives and the comparison a different workload).
        order = _indices(records)(0)
        batches = [torch.utils.data.default_collate([data[i] for i in order[j * BATCH:(j + 1) * BATCH]])
                   for j in range(STEPS)]
        tr.train_step(batches[0])  # warm-up

        def fn():
            for batch in batches:
                tr.train_step(batch)
    else:
        tr, _ = _trainer(records, 2)
        tr.total_steps = 1
        tr.fit()  # warm-up: workers started, first step done

        def fn():
            tr.total_steps = tr.step + STEPS
            tr.fit()
    record(benchmark, "engine_step", provider, size, fn, steps=STEPS, batch=BATCH)
    _times[provider] = benchmark.stats.stats.median if benchmark.stats else None
    if provider == "engine_loop" and _times.get("model_step") and _times.get("engine_loop"):
        overhead = 1.0 - _times["model_step"] / _times["engine_loop"]
        benchmark.extra_info["overhead"] = overhead
        print(f"\nengine loop overhead over the model's own step: {100 * overhead:.1f} % "
              f"({_times['engine_loop'] / STEPS:.3f} s vs {_times['model_step'] / STEPS:.3f} s per step)")
