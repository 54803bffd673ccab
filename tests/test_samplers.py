"""Identity samplers: torchreid's P×K semantics, the distributed split and the VI sampler."""
from collections import Counter

import pytest

from reidkern.data import (INFRARED, VISIBLE, DistributedRandomIdentitySampler, RandomIdentitySampler,
                           Record, VisibleInfraredSampler)


def _records(counts):
    """Records with counts[pid] images each."""
    return [Record(f"{pid}_{i}.jpg", pid, i % 3) for pid, n in enumerate(counts) for i in range(n)]


def test_pk_batches_and_semantics():
    counts = [2, 4, 5, 9, 1, 8, 4]
    recs = _records(counts)
    s = RandomIdentitySampler(recs, batch_size=8, num_instances=4, seed=3)
    # torchreid's length: sum of max(n, K) rounded down to a multiple of K
    assert len(s) == sum(max(n, 4) - max(n, 4) % 4 for n in counts)
    idx = list(s)
    assert len(idx) % 8 == 0 and len(idx) <= len(s)
    for b in range(0, len(idx), 8):
        pids = [recs[i].pid for i in idx[b:b + 8]]
        assert [pids[0]] * 4 == pids[:4] and [pids[4]] * 4 == pids[4:]
        assert pids[0] != pids[4]
    # an id with >= K images never repeats an image within its chunk in an epoch
    for pid in (1, 2, 3, 5, 6):
        used = Counter(i for i in idx if recs[i].pid == pid)
        assert max(used.values()) == 1
    # ids with fewer than K images are sampled with replacement (K draws)
    assert all(recs[i].pid in range(len(counts)) for i in idx)


def test_pk_reproducible_and_epochs_differ():
    recs = _records([6] * 10)
    a = RandomIdentitySampler(recs, 12, 3, seed=1)
    b = RandomIdentitySampler(recs, 12, 3, seed=1)
    e0 = list(a)
    e1 = list(a)  # next epoch by itself
    assert e0 == list(b) and e0 != e1
    b.set_epoch(1)
    assert list(b) == e1
    assert list(RandomIdentitySampler(recs, 12, 3, seed=2)) != e0


def test_pk_bad_arguments():
    recs = _records([4] * 5)
    with pytest.raises(ValueError, match="batch_size: 10 is not divisible by num_instances=4"):
        RandomIdentitySampler(recs, 10, 4)
    with pytest.raises(ValueError, match="num_instances"):
        RandomIdentitySampler(recs, 8, 0)
    with pytest.raises(ValueError, match="fewer than P"):
        RandomIdentitySampler(recs, 24, 4)


def test_distributed_disjoint_batches():
    recs = _records([5, 7, 4, 8, 6, 9, 4, 4, 5, 6])
    full = RandomIdentitySampler(recs, 8, 4, seed=5)
    full.set_epoch(2)
    every = full.batches()
    world = 3
    per_rank = []
    for rank in range(world):
        s = DistributedRandomIdentitySampler(recs, 8, 4, seed=5, num_replicas=world, rank=rank)
        s.set_epoch(2)
        per_rank.append(s.batches())
    n = len(every) // world
    assert all(len(b) == n for b in per_rank)
    got = sorted(tuple(b) for bs in per_rank for b in bs)
    assert len(set(got)) == len(got)  # no batch twice
    assert set(got) <= {tuple(b) for b in every}
    with pytest.raises(ValueError, match="rank"):
        DistributedRandomIdentitySampler(recs, 8, 4, num_replicas=2, rank=2)


def test_visible_infrared_sampler():
    recs = []
    for pid in range(6):
        recs += [Record(f"v{pid}_{i}", pid, 0, VISIBLE) for i in range(3 + pid)]
        recs += [Record(f"t{pid}_{i}", pid, 2, INFRARED) for i in range(2)]
    s = VisibleInfraredSampler(recs, batch_size=16, num_instances=4, seed=0)
    idx = list(s)
    assert len(idx) == len(s)
    for b in range(0, len(idx), 16):
        batch = [recs[i] for i in idx[b:b + 16]]
        assert all(r.modality == VISIBLE for r in batch[:8]) and all(r.modality == INFRARED for r in batch[8:])
        assert [r.pid for r in batch[:8]] == [r.pid for r in batch[8:]]
    # AGW's epoch: int(max(#visible, #infrared) / (P·K)) + 1 batches
    assert len(s) == (sum(3 + p for p in range(6)) // 8 + 1) * 16
    strict = VisibleInfraredSampler(recs, batch_size=4, num_instances=2, seed=0, replace=False)
    for b in strict.batches():
        assert len(set(b)) == 4  # 2 ids x (2 visible + 2 infrared), no image twice
    with pytest.raises(ValueError, match="2 × num_instances"):
        VisibleInfraredSampler(recs, 12, 4)
    with pytest.raises(ValueError, match=r"identities \[6\]"):
        VisibleInfraredSampler(recs + [Record("x", 6, 0, VISIBLE)], 16, 4)
