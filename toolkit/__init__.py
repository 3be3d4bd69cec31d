"""MLLMEraser toolkit: test-time unlearning for multimodal LLMs by activation steering, on nnsight.

The data path, in order: data -> activations (tracing) -> direction -> null space
-> eraser -> steering -> evaluation. Quick start::

    from toolkit import load_model, tracing
    model = load_model("default")
"""

__version__ = "0.1.0"

from .models.loading import LoadedModel, Sample, load_model  # noqa: E402

__all__ = ["__version__", "load_model", "LoadedModel", "Sample"]
