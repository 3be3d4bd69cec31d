"""MLLMEraser toolkit: test-time unlearning for multimodal LLMs by activation steering, on nnsight.

The data path, in order: samples -> activations (:mod:`~toolkit.tracing`, :mod:`~toolkit.pipeline`) ->
direction -> null space -> eraser -> steering -> evaluation. The names a user needs are here::

    from toolkit import load_model, Sample, EraserFitter, add_samples, FitConfig, FixedRatio
    model = load_model("default")

    from toolkit import erase, SHIPPED          # the whole job, with the shipped preset
    result = erase(model, "forget.jsonl", "retain.csv", out="results/mine")

Names load on first use, so ``import toolkit`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that holds it (one place each; docs/api.md lists the modules).
_PUBLIC = {
    # loading and samples
    "load_model": "models.loading", "LoadedModel": "models.loading", "Sample": "models.loading",
    "tracing": None,
    # the benchmark and hand-written lists
    "MLLMUBench": "data.mllmu", "default_benchmark": "data.synthetic", "read_request": "data.request",
    # the fitter, its feed, and the eraser
    "EraserFitter": "fitter", "add_samples": "pipeline", "fit_from_samples": "pipeline", "Eraser": "eraser",
    # null-space policies
    "FixedRatio": "nullspace", "EnergyBudget": "nullspace", "RelativeTolerance": "nullspace",
    # the configuration, the fit on a benchmark, and the job
    "FitConfig": "config", "SelectConfig": "config", "EraseConfig": "config", "SHIPPED": "config",
    "fit_eraser": "benchmark_fit", "erase": "job", "EraseResult": "job",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    module = importlib.import_module(f".{_PUBLIC[name] or name}", __name__)
    value = module if _PUBLIC[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
