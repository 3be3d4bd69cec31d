"""The memory probe measures what a step adds even after a larger step ran in the same process."""

import sys

import pytest
import torch

from toolkit.memory import PeakMemory, release_free_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc/self/statm")
def test_an_allocation_made_after_a_larger_one_is_seen():
    keep = []

    def larger():  # 320 blocks of 1 MB, freed below a block that stays: glibc keeps their pages for reuse
        blocks = [torch.ones(250_000) for _ in range(320)]
        keep.append(torch.ones(1000))
        del blocks

    def step():  # 80 MB, alive together
        blocks = [torch.ones(250_000) for _ in range(80)]
        return sum(float(b[0]) for b in blocks)

    larger(), larger()  # twice: the first raises malloc's mmap threshold, the second fills the heap
    assert release_free_memory()
    larger()
    with PeakMemory() as meter:
        step()
    assert 60 <= meter.added_mb <= 140, meter.added_mb
