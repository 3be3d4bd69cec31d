"""The embedded default: a small LLaVA trained here on the synthetic benchmark.

The checkpoint ships in ``toolkit/assets/default`` (float16 safetensors, loaded
as float32). Reproduce it with ``mllmeraser train-vanilla --out toolkit/assets/default``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

__all__ = ["DEFAULT_DIR", "load_default", "default_benchmark"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"


def load_default(path: str | Path | None = None):
    """``(model, processor)`` of the embedded default (float32, eval mode)."""
    import transformers as tf

    path = Path(path or DEFAULT_DIR)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"The default checkpoint is missing at {str(path)!r}. Rebuild it with "
            f"`mllmeraser train-vanilla --out {path}` (about 15 minutes on 2 CPU cores).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        processor = tf.LlavaProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return model, processor


def default_benchmark(root: str | Path | None = None, seed: int = 0) -> Path:
    """The synthetic benchmark the default model was trained on, written on first use (about 2 s)."""
    from ..data.synthetic import DATA_VERSION, SyntheticConfig, write_benchmark

    base = Path(root or os.environ.get("MLLMERASER_CACHE", Path.home() / ".cache" / "mllmeraser"))
    out = base / f"synthetic-benchmark-v{DATA_VERSION}-seed{seed}"
    if not (out / "synthetic.json").exists():
        import shutil
        import tempfile

        # Written beside and renamed into place, so a half-written copy is never read.
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".writing-"))
        write_benchmark(tmp, SyntheticConfig(seed=seed))
        try:
            tmp.rename(out)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return out
