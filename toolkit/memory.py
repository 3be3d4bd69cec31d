"""Peak resident memory of a block of code, sampled (Linux: /proc/self/statm; elsewhere ru_maxrss).

A process that freed a large allocation keeps much of it: glibc's malloc holds freed pages for reuse, so a later,
smaller step reuses them and the resident set does not grow; a sampler would read that step as adding nothing.
:class:`PeakMemory` therefore hands freed memory back to the system first (:func:`release_free_memory`), so that
what a block adds is measured even after a larger one ran in the same process (``tests/test_memory.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import resource
import threading
import time


__all__ = ["rss_mb", "release_free_memory", "PeakMemory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is none (looked up once: ``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Collect garbage and return the allocator's free pages to the system (glibc ``malloc_trim``); False where
    there is no glibc (then the resident set may hide memory reused from an earlier, larger step)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.peak_mb`` (absolute) and ``pm.added_mb`` (over the start).

    ``release=True`` (default): free memory is handed back first (:func:`release_free_memory`), so the start is the
    live memory and reuse of an earlier step's freed pages counts as added."""

    def __init__(self, interval: float = 0.02, release: bool = True) -> None:
        self.interval = interval
        self.release = release
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.release:
            release_free_memory()
        self.start_mb = self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def added_mb(self) -> float:
        return self.peak_mb - self.start_mb
