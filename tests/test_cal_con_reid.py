"""CAL through the engine on real crops: Con-ReID with its c3/c6 crops as greyscale "infrared"
stand-ins (reidkern.models.cal_demo). A few steps on one visible–infrared batch must lower the loss;
the SYSU-MM01 protocol runs before and after over two gallery trials. Checks the pipeline, not
cross-spectral accuracy. Skips without ../shared."""
import math

import pytest

from reidkern.data.paths import shared_data_dir

ROOT = shared_data_dir("con-reid")
pytestmark = pytest.mark.skipif(ROOT is None, reason="../shared/data/con-reid not found")


def test_con_reid_visible_infrared_split():
    from reidkern.data.records import INFRARED, VISIBLE
    from reidkern.models.cal_demo import con_reid_visible_infrared

    data = con_reid_visible_infrared(ROOT, num_trials=3, max_query_per_cam=1, max_test_ids=6)
    assert {r.modality for r in data.train} == {VISIBLE, INFRARED}
    assert all((r.modality == INFRARED) == (r.camid in (2, 5)) for r in data.train)
    assert sorted({r.pid for r in data.train}) == list(range(data.num_train_pids))
    assert all(r.modality == INFRARED for r in data.query) and all(r.modality == VISIBLE for r in data.gallery_pool)
    assert {r.pid for r in data.query} == {r.pid for r in data.gallery_pool}
    for trial in data.trials:  # single-shot: one image per identity and visible camera
        keys = [(data.gallery_pool[i].pid, data.gallery_pool[i].camid) for i in trial]
        assert len(keys) == len(set(keys))


def test_cal_trains_and_evaluates_on_con_reid():
    from reidkern.models.cal_demo import run

    res = run(ROOT, steps=5, batch_size=8, height=112, width=80, num_trials=2, max_query_per_cam=1,
              max_test_ids=4, fixed_batch=True)
    losses = res["losses"]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    for key in ("before", "after"):
        assert res[key]["trials"] == 2
        assert 0.0 <= res[key]["mean"]["mAP"] <= 1.0 and 0.0 <= res[key]["mean"]["R1"] <= 1.0
    assert sorted(res["frozen_matching"]) == list(range(6)) and res["matching_counts"] >= 1
