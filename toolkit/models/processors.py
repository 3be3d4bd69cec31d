"""Processors without torchvision: building, saving and loading them offline.

torchvision does not load beside the CPU torch, and transformers defines its
video-processor base class only when it does; Qwen-VL processors type-check
their ``video_processor`` against it and their saved checkpoints name one. These
helpers let image-only use go ahead without it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from transformers.processing_utils import ProcessorMixin

__all__ = ["allow_missing_video_processor", "save_processor", "load_processor"]


@contextlib.contextmanager
def allow_missing_video_processor():
    """Let a Qwen-VL processor be built without a video processor.

    Qwen processors type-check their ``video_processor`` against
    ``BaseVideoProcessor``, which transformers only defines when torchvision is
    importable; torchvision does not load beside the CPU torch, so even
    ``video_processor=None`` fails the check. Images do not need it.
    """
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument is None and "video" in argument_name:
            return type(None)
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def save_processor(processor, out) -> None:
    """``processor.save_pretrained(out)`` that skips absent sub-processors (a Qwen-VL processor built
    without its video processor, see :func:`allow_missing_video_processor`)."""
    cls = type(processor)
    own = cls.__dict__.get("get_attributes")
    present = [a for a in cls.get_attributes() if getattr(processor, a, None) is not None]
    cls.get_attributes = classmethod(lambda c: list(present))
    try:
        processor.save_pretrained(out)
    finally:
        if own is None:
            del cls.get_attributes
        else:
            cls.get_attributes = own


def load_processor(path: str | Path, trust_remote_code: bool = False, image_backend: str | None = None) -> Any:
    """``AutoProcessor.from_pretrained(path)``, or, where that needs what is missing here (a video
    processor, a torchvision image processor), the same processor class built from its saved parts
    with the PIL image processor. ``image_backend``: transformers' ``backend`` ("pil" or
    "torchvision"; ``None``: transformers' choice)."""
    import transformers as tf

    if image_backend not in (None, "pil", "torchvision"):
        raise ValueError(f"image_backend must be 'pil', 'torchvision' or None, got {image_backend!r}.")
    extra = {"backend": image_backend} if image_backend else {}
    try:
        with allow_missing_video_processor():
            return tf.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ImportError, ValueError, TypeError) as err:
        config_file = Path(path) / "processor_config.json"
        if not config_file.exists():
            raise
        first_error = err
    config = json.loads(config_file.read_text())
    cls = getattr(tf, config.get("processor_class", ""), None)
    image_config = dict(config.get("image_processor") or {})
    kind = image_config.pop("image_processor_type", "")
    image_cls = getattr(tf, kind + "Pil", None) or getattr(tf, kind, None)
    if cls is None or image_cls is None:
        raise first_error
    tokenizer = tf.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    template_file = Path(path) / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else tokenizer.chat_template
    with allow_missing_video_processor():
        return cls(image_processor=image_cls(**image_config), tokenizer=tokenizer, chat_template=template)
