"""Loading a model: one wrapper around ``nnsight.TransformersModel`` plus its adapter."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .adapters import Adapter, adapter_for

__all__ = ["Sample", "LoadedModel", "load_model", "load_image"]

ImageLike = Image.Image | str | os.PathLike | bytes | None


@dataclass(frozen=True)
class Sample:
    """One input: an optional image and the user's message (not yet templated)."""

    text: str
    image: ImageLike = None


def load_image(image: ImageLike) -> Image.Image | None:
    """A PIL RGB image from a PIL image, a file path or encoded bytes.

    Raises a ValueError naming the file when it cannot be decoded.
    """
    if isinstance(image, dict) and "bytes" in image:  # an MLLMU-Bench parquet cell
        image = image["bytes"]
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    what = "image bytes" if isinstance(image, (bytes, bytearray)) else f"image file {str(image)!r}"
    try:
        src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
        with Image.open(src) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {str(image)!r}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Could not decode {what}: {err}. Is it a valid PNG/JPEG file?") from None


class LoadedModel:
    """A model ready for tracing: the nnsight wrapper, the processor, the adapter.

    Attributes:
        nn: the ``nnsight.TransformersModel``; use it for your own traces.
        module: the underlying ``transformers`` model (plain torch).
        processor: the processor (VLMs) or tokenizer (text-only models).
        adapter: the family adapter.
        remote: passed to every trace this toolkit opens (nnsight's ``remote``).
    """

    def __init__(self, module: torch.nn.Module, processor: Any, adapter: Adapter, *, remote: Any = False,
                 name: str = "") -> None:
        import nnsight

        self.module = module
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if getattr(self.tokenizer, "padding_side", "left") != "left":
            # Left padding puts every row's last prompt token at index -1.
            self.tokenizer.padding_side = "left"
        self.adapter = adapter
        self.remote = remote
        self.name = name or type(module).__name__
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if adapter.supports_images:
                self.nn = nnsight.TransformersModel(module, task="image-text-to-text", processor=processor,
                                                    tokenizer=self.tokenizer)
            else:
                self.nn = nnsight.TransformersModel(module, task="text-generation", tokenizer=self.tokenizer)

    # -- structure -------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.module.config

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.config)

    @property
    def hidden_size(self) -> int:
        return self.adapter.hidden_size(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def layers(self) -> Any:
        """Decoder layers as nnsight envoys (use inside a trace)."""
        return self.adapter.layer_envoys(self.nn)

    @property
    def layer_modules(self) -> torch.nn.ModuleList:
        """Decoder layers as plain torch modules (for forward hooks)."""
        return self.adapter.layer_modules(self.module)

    def check_layers(self, layers: int | Sequence[int]) -> list[int]:
        """Validate layer indices (0-based decoder-block outputs); negatives count from the end."""
        items = [layers] if isinstance(layers, int) else list(layers)
        if not items:
            raise ValueError("No layers given: pass at least one decoder-layer index.")
        out = []
        for layer in items:
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise TypeError(f"Layer indices must be ints, got {layer!r}.")
            if not -self.num_layers <= layer < self.num_layers:
                raise ValueError(
                    f"Layer {layer} is out of range: this model has {self.num_layers} decoder layers "
                    f"(valid: 0..{self.num_layers - 1}, or -{self.num_layers}..-1)."
                )
            out.append(layer % self.num_layers)
        if len(set(out)) != len(out):
            raise ValueError(f"Layer indices repeat: {items}.")
        return out

    # -- inputs ------------------------------------------------------------------
    def format_prompt(self, text: str, image: bool = True) -> str:
        """The templated prompt for a user message (with the generation prompt)."""
        return self.adapter.format_prompt(self.processor, text, with_image=image)

    def encode(self, samples: Sequence[Sample | tuple], *, formatted: bool = False) -> dict[str, torch.Tensor]:
        """Tokenise a batch (left padded). ``samples``: ``Sample``s or ``(image, text)`` pairs.

        With ``formatted=True`` the texts are full prompts, used as given
        (checked for exactly one image placeholder per image).
        """
        samples = [as_sample(s) for s in samples]
        has_image = [s.image is not None for s in samples]
        if any(has_image) and not all(has_image):
            raise ValueError("A batch mixes samples with and without images; encode them separately "
                             "(toolkit.tracing does this for you).")
        images = [load_image(s.image) for s in samples] if all(has_image) else []
        prompts = []
        for s, img in zip(samples, has_image):
            prompt = s.text if formatted else self.format_prompt(s.text, image=img)
            self.adapter.check_prompt(prompt, img)
            prompts.append(prompt)
        if images:
            enc = self.processor(text=prompts, images=self.adapter.images_argument(images),
                                 return_tensors="pt", padding=True, padding_side="left")
        else:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        return {k: v for k, v in enc.items() if k not in self.adapter.drop_keys and isinstance(v, torch.Tensor)}

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the weights an eraser was fitted on (architecture, shape, weight hash)."""
        import hashlib

        h = hashlib.sha256()
        for module in (self.layer_modules[0], self.layer_modules[-1]):
            for name, p in sorted(module.named_parameters()):
                if p.device.type == "meta":
                    continue
                flat = p.detach().float().flatten()
                h.update(name.encode())
                h.update(flat[:: max(1, flat.numel() // 256)][:256].cpu().numpy().tobytes())
        return {"architecture": type(self.module).__name__, "family": self.adapter.family,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size, "weights_sha256": h.hexdigest()[:16]}

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name}: family={self.adapter.family}, layers={self.num_layers}, "
                f"hidden={self.hidden_size})")


def as_sample(s: Sample | tuple | str) -> Sample:
    if isinstance(s, Sample):
        return s
    if isinstance(s, str):
        return Sample(text=s)
    if isinstance(s, tuple) and len(s) == 2:
        image, text = s
        if isinstance(image, str) and not isinstance(text, str):
            image, text = text, image
        return Sample(text=text, image=image)
    raise TypeError(f"Expected a Sample, a text, or an (image, text) pair; got {type(s).__name__}.")


def load_model(
    name_or_path_or_model: str | os.PathLike | torch.nn.Module,
    processor: Any = None,
    *,
    device_map: Any = None,
    dtype: Any = None,
    remote: Any = False,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> LoadedModel:
    """Load a model for tracing.

    Args:
        name_or_path_or_model: ``"default"`` (the embedded model trained on the
            synthetic benchmark), ``"tiny-<family>"`` (a tiny random model, e.g.
            ``"tiny-llava"``), a local directory or hub id, or an already built
            ``transformers`` model (then pass ``processor``).
        device_map, dtype: passed to ``from_pretrained`` untouched.
        remote: nnsight's ``remote`` flag, passed to every trace the toolkit opens
            (``True`` for NDIF, ``"local"`` to test serialisation locally).
        trust_remote_code: only when you ask for it.
    """
    from . import tiny

    if isinstance(name_or_path_or_model, torch.nn.Module):
        if processor is None:
            raise ValueError("A model object needs its processor (VLMs) or tokenizer: load_model(model, processor).")
        module = name_or_path_or_model
        return LoadedModel(module.eval(), processor, adapter_for(module.config), remote=remote)
    name = str(name_or_path_or_model)
    if name == "default":
        from .default import load_default

        module, processor = load_default()
        return LoadedModel(module, processor, adapter_for(module.config), remote=remote, name="default")
    if name.startswith("tiny-"):
        module, processor = tiny.build_tiny(name[len("tiny-"):], seed=kwargs.pop("seed", 0))
        return LoadedModel(module, processor, adapter_for(module.config), remote=remote, name=name)

    import transformers

    config = transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    adapter = adapter_for(config)
    auto = getattr(transformers, adapter.auto_class)
    load_kwargs = {k: v for k, v in {"device_map": device_map, "dtype": dtype}.items() if v is not None}
    module = auto.from_pretrained(name, trust_remote_code=trust_remote_code, **load_kwargs, **kwargs)
    if processor is None:
        loader = transformers.AutoProcessor if adapter.supports_images else transformers.AutoTokenizer
        with tiny.allow_missing_video_processor():
            processor = loader.from_pretrained(name, trust_remote_code=trust_remote_code)
    return LoadedModel(module.eval(), processor, adapter, remote=remote, name=name)
