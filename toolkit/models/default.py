"""The embedded defaults: small models trained here on the synthetic benchmark.

``default``: a LLaVA (``toolkit/assets/default``); ``default-qwen``: a Qwen2.5-VL,
the paper's second family (``toolkit/assets/default-qwen``). Each checkpoint
ships as float16 safetensors and loads as float32. Reproduce them with
``mllmeraser train-vanilla --out toolkit/assets/default`` and
``mllmeraser train-vanilla --family qwen2_5_vl --out toolkit/assets/default-qwen``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

__all__ = ["DEFAULT_DIR", "DEFAULTS", "load_default"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_DIR = ASSETS / "default"
# name -> (checkpoint folder, the train-vanilla family that makes it)
DEFAULTS = {"default": (DEFAULT_DIR, "llava"), "default-qwen": (ASSETS / "default-qwen", "qwen2_5_vl")}


def load_default(path: str | Path | None = None, name: str = "default"):
    """``(model, processor)`` of an embedded default (float32, eval mode)."""
    import transformers as tf

    from .adapters import adapter_for
    from .processors import load_processor

    if name not in DEFAULTS:
        raise ValueError(f"No embedded model {name!r}; the defaults are {', '.join(DEFAULTS)}.")
    folder, family = DEFAULTS[name]
    path = Path(path or folder)
    if not (path / "config.json").exists():
        extra = "" if family == "llava" else f" --family {family}"
        raise FileNotFoundError(
            f"The {name} checkpoint is missing at {str(path)!r}. Rebuild it with "
            f"`mllmeraser train-vanilla{extra} --out {path}` (about 15 minutes on 2 CPU cores).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = adapter_for(tf.AutoConfig.from_pretrained(path))
        model = getattr(tf, adapter.auto_class).from_pretrained(path, dtype=torch.float32).eval()
        processor = load_processor(path)
    processor.tokenizer.padding_side = "left"
    return model, processor
