"""The engine's data loading: epochs of batches that are a pure function of (seed, epoch).

Bit-exact resume and the DDP equivalence both need the data of a step to depend on nothing but
the run's seed, the epoch and the position in it — not on how many DataLoader workers there are,
on which worker loads which batch, or on where a run was resumed. So:

* each epoch's index order comes from a fresh sampler built with seed ``seed + epoch`` (the P×K
  sampler by default); it is cut into *global* batches of ``batch_size × world_size``, and
  process ``r`` of ``W`` takes rows ``[r·B, (r+1)·B)`` of each — so W processes together see
  exactly the batches one process would see with the global batch size;
* every sample is loaded under its own RNG seed (``SeedSequence([seed, epoch, position])``),
  applied to torch, NumPy and Python's ``random`` around the dataset's ``__getitem__``
  (random flips, crops and erasing are then reproducible in any worker);
* the DataLoader gets its own ``torch.Generator``, so creating an iterator never draws from the
  global RNG the model uses (dropout), and a resumed epoch simply skips its first batches
  without loading them.

Workers are persistent across epochs (the batch list is swapped in the main process).
"""
from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SeededSamples", "TrainLoader", "sample_seed", "eval_loader"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The 32-bit RNG seed of the sample at ``position`` of ``epoch`` in a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Wraps a dataset so that ``self[(index, seed)]`` is ``dataset[index]`` loaded with the torch,
    NumPy and ``random`` RNGs seeded by ``seed``; the caller's RNG states are restored after."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        t, n, p = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(t)
            np.random.set_state(n)
            random.setstate(p)


class _Batches(Sampler):
    """A batch sampler whose list of batches the loader swaps each epoch."""

    def __init__(self):
        self.batches: List[List[Tuple[int, int]]] = []

    def __iter__(self):
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class TrainLoader:
    """Epochs of this process's training batches (see the module docstring).

    Args:
        dataset: map-style dataset yielding batch-dict items (``reidkern.data.ImageDataset``).
        epoch_indices: ``epoch_indices(epoch) -> sequence of dataset indices`` for one epoch, in
            order (e.g. a P×K sampler built with seed ``seed + epoch``); cut into global batches,
            the incomplete last batch dropped.
        batch_size: this process's batch size B (the global batch is B × world_size).
        seed: run seed of the per-sample augmentation seeds.
        num_workers: DataLoader workers (0: load in this process).
        rank, world_size: this process and the process count (defaults: torch.distributed's).

    Raises:
        ValueError: batch_size < 1, num_workers < 0, or an epoch too short for one global batch.
    """

    def __init__(self, dataset: Dataset, epoch_indices: Callable[[int], Sequence[int]], batch_size: int, *,
                 seed: int = 0, num_workers: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, collate_fn=None, pin_memory: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: expected an int >= 0, got {num_workers!r}")
        if rank is None or world_size is None:
            import torch.distributed as dist
            ok = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if ok else 0
            world_size = dist.get_world_size() if ok else 1
        self.dataset, self.epoch_indices = dataset, epoch_indices
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._sampler = _Batches()
        self._cache: Tuple[int, List] = (-1, [])
        self._loader = DataLoader(SeededSamples(dataset), batch_sampler=self._sampler,
                                  num_workers=num_workers, collate_fn=collate_fn,
                                  pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                  generator=torch.Generator().manual_seed(seed))
        self.steps_per_epoch = self.steps_in(0)
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size: an epoch of {len(list(epoch_indices(0)))} samples holds no "
                             f"global batch of {batch_size} x {world_size} processes")

    def _batches(self, epoch: int) -> List[List[Tuple[int, int]]]:
        if self._cache[0] != epoch:
            idx = [int(i) for i in self.epoch_indices(epoch)]
            g, b, r = self.batch_size * self.world_size, self.batch_size, self.rank
            out = []
            for start in range(0, len(idx) - g + 1, g):
                lo = start + r * b
                out.append([(idx[lo + j], sample_seed(self.seed, epoch, lo + j)) for j in range(b)])
            self._cache = (epoch, out)
        return self._cache[1]

    def refresh(self) -> None:
        """Forget the cached batch list, so that the next ``epoch``/``steps_in`` call asks
        ``epoch_indices`` again (for index orders that a hook changes, e.g. pseudo-labels made at
        the start of an epoch)."""
        self._cache = (-1, [])

    def steps_in(self, epoch: int) -> int:
        """Number of batches (optimiser steps) in ``epoch``."""
        return len(self._batches(epoch))

    def epoch(self, epoch: int, skip: int = 0):
        """Iterator over the batches of ``epoch`` after the first ``skip`` (not loaded)."""
        self._sampler.batches = self._batches(epoch)[skip:]
        if not self._sampler.batches:
            return iter(())
        return iter(self._loader)


def eval_loader(dataset: Dataset, batch_size: int = 128, num_workers: int = 0, collate_fn=None) -> DataLoader:
    """Sequential loader for extraction (no shuffling, nothing dropped, own generator)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn, generator=torch.Generator().manual_seed(0))
