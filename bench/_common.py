"""Shared helpers for the benchmark scripts: quiet imports, interleaved timing, medians."""

from __future__ import annotations

import os
import statistics
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def quiet_torch():
    """torch with transformers' logging quiet; the thread count is left to the user (OMP_NUM_THREADS)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    return torch


def interleaved_medians(fns: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per function, alternating them so both see the same machine load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
