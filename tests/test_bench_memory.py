"""The benchmark suite's CPU peak-memory measurement (benchmarks/_common.py): exact for torch
tensors, and not hidden by memory an earlier call left resident."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from _common import peak_memory, torch_cpu_peak  # noqa: E402

MiB = 1 << 20


def _alloc_pattern():
    a = torch.ones(4 * MiB // 4)  # 4 MiB
    b = torch.ones(8 * MiB // 4)  # + 8 MiB: the peak, 12 MiB
    del a
    c = torch.ones(2 * MiB // 4)  # 8 + 2 MiB live: below the peak
    return b.sum() + c.sum()


def test_torch_cpu_peak_is_the_largest_live_sum():
    out, peak = torch_cpu_peak(_alloc_pattern)
    assert out.item() == 2.5 * MiB
    # the three buffers exactly, plus the few bytes of the two sums and their scalar result
    assert 12 * MiB <= peak < 12 * MiB + 4096


def test_peak_memory_sees_temporaries_after_a_large_run():
    # a large run first: with glibc's default thresholds its freed pages stay resident and a
    # later call's temporaries can be served from them without any growth of the resident set
    for _ in range(3):
        big = [torch.ones(16 * MiB // 4) for _ in range(8)]
        del big

    def temporaries():
        x = torch.ones(32 * MiB // 4)
        y = x * 2
        return (x + y).sum()

    _, peak = peak_memory(temporaries)
    assert peak >= 96 * MiB  # x, y and x + y live at once
