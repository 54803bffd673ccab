"""Identity samplers: P identities × K instances per batch (the sampler batch-hard triplet losses
need), its distributed form, and the visible–infrared form.

Semantics of :class:`RandomIdentitySampler` follow torchreid's ``RandomIdentitySampler`` (from
Hermans et al., "In Defense of the Triplet Loss", 2017): each epoch, every identity's images are
shuffled and cut into chunks of K (an identity with fewer than K images is sampled K times with
replacement; a last chunk shorter than K is dropped); then, while at least P identities have chunks
left, P of them are drawn at random without replacement and one chunk of each is emitted. Each run
of ``batch_size = P·K`` indices is one batch (use ``drop_last=True`` or ``batch_sampler``-free
``DataLoader(sampler=..., batch_size=P*K)``). ``len()`` is torchreid's estimate — the sum over
identities of ``max(n, K) − max(n, K) mod K`` — an upper bound: the draw stops when fewer than P
identities have chunks left, so an epoch can be a little shorter.

Randomness: a ``numpy`` generator seeded from ``(seed, epoch)``; ``set_epoch(e)`` makes epoch ``e``
reproducible, and each ``iter()`` moves on to the next epoch by itself.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterator, List, Sequence

import numpy as np
import torch

from reidkern.data.records import INFRARED

__all__ = ["RandomIdentitySampler", "DistributedRandomIdentitySampler", "VisibleInfraredSampler"]


def _check_int(v, name, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def _pid_of(r):
    return int(r[1]) if isinstance(r, (tuple, list)) else int(r)


def _index_by_pid(records) -> Dict[int, List[int]]:
    index = defaultdict(list)
    for i, r in enumerate(records):
        index[_pid_of(r)].append(i)
    return dict(index)


def _check_pk(batch_size, num_instances):
    batch_size = _check_int(batch_size, "batch_size")
    num_instances = _check_int(num_instances, "num_instances")
    if batch_size % num_instances != 0:
        raise ValueError(f"batch_size: {batch_size} is not divisible by num_instances={num_instances} "
                         "(a batch is P identities × K instances)")
    return batch_size, num_instances


class _EpochSeeded(torch.utils.data.Sampler):
    def __init__(self, seed: int):
        self.seed = _check_int(seed, "seed", lo=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` draw epoch ``epoch`` (reproducible for a given seed)."""
        self.epoch = _check_int(epoch, "epoch", lo=0)

    def _rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return rng


def _chunks(idxs: List[int], k: int, rng) -> List[List[int]]:
    if len(idxs) < k:
        idxs = list(rng.choice(idxs, size=k, replace=True))
    else:
        idxs = list(rng.permutation(idxs))
    return [[int(i) for i in idxs[s:s + k]] for s in range(0, len(idxs) - k + 1, k)]


def _pk_batches(index_by_pid: Dict[int, List[int]], p: int, k: int, rng) -> List[List[int]]:
    """One epoch of P×K batches (lists of indices), torchreid's draw."""
    pids = sorted(index_by_pid)
    chunks = {pid: _chunks(index_by_pid[pid], k, rng) for pid in pids}
    avail = [pid for pid in pids if chunks[pid]]
    batches = []
    while len(avail) >= p:
        sel = rng.choice(len(avail), size=p, replace=False)
        chosen = [avail[i] for i in sel]
        batch = []
        for pid in chosen:
            batch.extend(chunks[pid].pop(0))
        avail = [pid for pid in avail if chunks[pid]]
        batches.append(batch)
    return batches


def _estimate(index_by_pid, k):
    n = 0
    for idxs in index_by_pid.values():
        m = max(len(idxs), k)
        n += m - m % k
    return n


class RandomIdentitySampler(_EpochSeeded):
    """P×K identity sampler (torchreid semantics; see the module docstring).

    Args:
        records: the training records (anything whose item ``[1]`` is the pid) or a list of pids.
        batch_size: P·K images per batch.
        num_instances: K images per identity.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.

    Raises:
        ValueError: ``batch_size`` not divisible by ``num_instances`` (naming both), non-positive
            sizes, fewer identities than P = batch_size / num_instances.
    """

    def __init__(self, records: Sequence, batch_size: int, num_instances: int, seed: int = 0):
        super().__init__(seed)
        self.batch_size, self.num_instances = _check_pk(batch_size, num_instances)
        self.num_pids_per_batch = self.batch_size // self.num_instances
        self.index_by_pid = _index_by_pid(records)
        if len(self.index_by_pid) < self.num_pids_per_batch:
            raise ValueError(f"records: {len(self.index_by_pid)} identities, fewer than P = batch_size / "
                             f"num_instances = {self.num_pids_per_batch}")
        self.length = _estimate(self.index_by_pid, self.num_instances)

    def batches(self) -> List[List[int]]:
        """The next epoch's batches (advances the epoch like ``iter``)."""
        return _pk_batches(self.index_by_pid, self.num_pids_per_batch, self.num_instances, self._rng())

    def __iter__(self) -> Iterator[int]:
        for b in self.batches():
            yield from b

    def __len__(self) -> int:
        return self.length


class DistributedRandomIdentitySampler(RandomIdentitySampler):
    """P×K sampler for data-parallel training: every rank draws the same epoch (same seed and
    epoch) and keeps batches ``rank, rank + world_size, …``, so ranks get disjoint batches and no
    batch is duplicated. Each rank gets ``floor(num_batches / world_size)`` batches (the remainder
    is dropped so ranks stay in step); ``batch_size`` is the per-rank batch.

    Args:
        records, batch_size, num_instances, seed: as :class:`RandomIdentitySampler`.
        num_replicas, rank: world size and this rank (default: from ``torch.distributed``, else 1/0).

    Raises:
        ValueError: as the parent; ``rank`` outside [0, num_replicas).
    """

    def __init__(self, records: Sequence, batch_size: int, num_instances: int, seed: int = 0,
                 num_replicas: int = None, rank: int = None):
        super().__init__(records, batch_size, num_instances, seed)
        dist = torch.distributed
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.num_replicas = _check_int(num_replicas, "num_replicas")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.num_replicas:
            raise ValueError(f"rank: expected an int in [0, {self.num_replicas}), got {rank!r}")
        self.rank = rank
        per_rank_batches = (self.length // self.batch_size) // self.num_replicas
        self.length = per_rank_batches * self.batch_size

    def batches(self) -> List[List[int]]:
        every = super().batches()
        n = len(every) // self.num_replicas
        return every[self.rank: n * self.num_replicas: self.num_replicas]


class VisibleInfraredSampler(_EpochSeeded):
    """Visible–infrared identity sampler: each batch draws P identities and K visible + K infrared
    images of each, laid out as ``[P·K visible | P·K infrared]`` (AGW / CAJ ``IdentitySampler``:
    the first half of a batch is visible, the second half infrared, aligned by identity).

    Every identity must have images of both modalities. An epoch covers ``num_batches`` batches
    (default AGW's ``int(N / (P·K)) + 1`` with N = max(#visible, #infrared)). Identities are drawn
    without replacement within a batch; each identity's K images per modality are drawn with
    replacement, as AGW's ``np.random.choice(pos, K)`` does (``replace=False`` draws without
    replacement when an identity has at least K images).

    Args:
        records: training records with ``pid`` and ``modality`` (VISIBLE / INFRARED).
        batch_size: 2·P·K images (both modalities).
        num_instances: K per modality.
        seed: base seed. num_batches: batches per epoch (default as above).
        replace: draw the K images of an identity with replacement (AGW; default).

    Raises:
        ValueError: ``batch_size`` not divisible by 2·``num_instances``, an identity lacking one
            modality (naming it), fewer identities than P.
    """

    def __init__(self, records: Sequence, batch_size: int, num_instances: int, seed: int = 0,
                 num_batches: int = None, replace: bool = True):
        super().__init__(seed)
        self.replace = bool(replace)
        batch_size = _check_int(batch_size, "batch_size")
        k = _check_int(num_instances, "num_instances")
        if batch_size % (2 * k) != 0:
            raise ValueError(f"batch_size: {batch_size} is not divisible by 2 × num_instances = {2 * k} "
                             "(a batch is P identities × K visible + K infrared)")
        self.batch_size, self.num_instances = batch_size, k
        self.num_pids_per_batch = batch_size // (2 * k)
        vis, ir = defaultdict(list), defaultdict(list)
        for i, r in enumerate(records):
            (ir if int(r[3]) == INFRARED else vis)[int(r[1])].append(i)
        missing = sorted(set(vis) ^ set(ir))
        if missing:
            raise ValueError(f"records: identities {missing[:10]} lack visible or infrared images")
        self.vis, self.ir = dict(vis), dict(ir)
        self.pids = sorted(vis)
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"records: {len(self.pids)} identities, fewer than P = {self.num_pids_per_batch}")
        if num_batches is None:
            n = max(sum(map(len, vis.values())), sum(map(len, ir.values())))
            num_batches = n // (self.num_pids_per_batch * k) + 1
        self.num_batches = _check_int(num_batches, "num_batches")

    def _take(self, idxs, rng):
        replace = self.replace or len(idxs) < self.num_instances
        return [int(i) for i in rng.choice(idxs, size=self.num_instances, replace=replace)]

    def batches(self) -> List[List[int]]:
        rng = self._rng()
        out = []
        for _ in range(self.num_batches):
            chosen = [self.pids[i] for i in rng.choice(len(self.pids), self.num_pids_per_batch, replace=False)]
            v = [i for pid in chosen for i in self._take(self.vis[pid], rng)]
            t = [i for pid in chosen for i in self._take(self.ir[pid], rng)]
            out.append(v + t)
        return out

    def __iter__(self) -> Iterator[int]:
        for b in self.batches():
            yield from b

    def __len__(self) -> int:
        return self.num_batches * self.batch_size
