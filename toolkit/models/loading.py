"""Loading a model: one wrapper around ``nnsight.TransformersModel`` plus its adapter."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from .adapters import Adapter, adapter_for
from .tokens import continuation_ids, join_answer

__all__ = ["Sample", "LoadedModel", "load_model", "load_image", "continuation_ids", "join_answer"]

ImageLike = Image.Image | str | os.PathLike | bytes | None


@dataclass(frozen=True)
class Sample:
    """One input: an optional image and the user's message (not yet templated)."""

    text: str
    image: ImageLike = None
    person: str | None = field(default=None, compare=False)
    """Who the question is about, when known. Membership gates can keep one exemplar per person instead of one
    per question (``FitConfig.gate_pool="people"``); nothing else reads it."""


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
        folder: the local checkpoint folder it was loaded from (``None``: a hub name or a model object).
    """

    def __init__(self, module: torch.nn.Module, processor: Any, adapter: Adapter, *, remote: Any = False,
                 name: str = "", folder: str | os.PathLike | None = None) -> None:
        import nnsight

        self.module = module
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if getattr(self.tokenizer, "padding_side", "left") != "left":
            # Left padding puts every row's last prompt token at index -1.
            self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            # Llama-style checkpoints ship no pad token; batching needs one. Pads are masked out
            # (attention mask 0, left of every prompt), so the end-of-sequence token serves.
            if self.tokenizer.eos_token is None:
                raise ValueError(f"The tokenizer of {name or type(module).__name__} has neither a pad nor an "
                                 "end-of-sequence token; set tokenizer.pad_token before loading.")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._fingerprint: dict[str, Any] | None = None
        self.adapter = adapter
        self.remote = remote
        self.name = name or type(module).__name__
        self.folder = Path(folder) if folder is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if adapter.supports_images:
                self.nn = nnsight.TransformersModel(module, task="image-text-to-text", processor=processor,
                                                    tokenizer=self.tokenizer)
            else:
                self.nn = nnsight.TransformersModel(module, task="text-generation", tokenizer=self.tokenizer)

    @property
    def training_info(self) -> dict[str, Any] | None:
        """The checkpoint's ``training.json`` (``mllmeraser train-vanilla`` writes it: the recipe, the
        training time), or ``None`` where the folder has none (a hub checkpoint, a model object)."""
        path = self.folder / "training.json" if self.folder is not None else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

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
        """Where inputs go: the device of the input embeddings (the first shard under a ``device_map``)."""
        return _module_device(self.module.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def image_token_id(self) -> int | None:
        """The token id at the image's positions in ``input_ids`` (None for a text-only family)."""
        return self.adapter.image_token_id(self.config)

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: True at image tokens (what gates reading ``"image-max"`` pool over)."""
        token = self.image_token_id
        if token is None:
            return torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        return input_ids == token

    def layer_device(self, layer: int) -> torch.device:
        """The device decoder layer ``layer`` computes on (its shard under a ``device_map``)."""
        (layer,) = self.check_layers(layer)
        return _module_device(self.layer_modules[layer])

    @property
    def layers(self) -> Any:
        """Decoder layers as nnsight envoys (use inside a trace)."""
        return self.adapter.layer_envoys(self.nn)

    @property
    def layer_modules(self) -> torch.nn.ModuleList:
        """Decoder layers as plain torch modules (for forward hooks)."""
        return self.adapter.layer_modules(self.module)

    def check_layers(self, layers: int | Sequence[int] | None) -> list[int]:
        """Validate layer indices (0-based decoder-block outputs); negatives count from the end. ``None``: every
        decoder layer (what ``FitConfig(layers=None)`` means)."""
        if layers is None:
            layers = range(self.num_layers)
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

    def format_chat(self, turns: Sequence[tuple[str, str]], image: bool = True) -> str:
        """A templated multi-turn conversation ``[(role, text), ...]`` ending with the generation prompt."""
        return self.adapter.format_chat(self.processor, turns, with_image=image)

    def encode(self, samples: Sequence[Sample | tuple], *, formatted: bool = False,
               device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """Tokenise a batch (left padded). ``samples``: ``Sample``s or ``(image, text)`` pairs.

        With ``formatted=True`` the texts are full prompts, used as given
        (checked for exactly one image placeholder per image). Tensors are on the
        CPU unless ``device`` is given (the toolkit's traces pass ``self.device``).
        Refuses empty messages and prompts longer than the model's context.
        """
        samples = [as_sample(s) for s in samples]
        for s in samples:
            if not isinstance(s.text, str) or not s.text.strip():
                raise ValueError("An empty prompt was given: every sample needs a non-empty text "
                                 "(a question or instruction).")
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
        limit = self.context_length
        if limit is not None and enc["input_ids"].shape[1] > limit:
            lengths = enc["attention_mask"].sum(1)
            raise ValueError(f"A prompt is {int(lengths.max())} tokens long; this model's context is {limit} "
                             "tokens (max_position_embeddings). Shorten the prompt: it is not truncated "
                             "silently, since the answer would then be to another question.")
        out = {k: v for k, v in enc.items() if k not in self.adapter.drop_keys and isinstance(v, torch.Tensor)}
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    @property
    def context_length(self) -> int | None:
        """The text model's context (``max_position_embeddings``), if the config states one."""
        value = getattr(self.adapter.text_config(self.config), "max_position_embeddings", None)
        return int(value) if value else None

    def continuation_ids(self, prompt: str, answer: str) -> list[int]:
        """The token ids ``answer`` gets when it follows the templated ``prompt``. See :func:`continuation_ids`."""
        return continuation_ids(self.tokenizer, prompt, answer)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def fingerprint(self, *, refresh: bool = False) -> dict[str, Any]:
        """Identity of the weights an eraser was fitted on (architecture, shape, weight hash).

        Computed once per model (it reads a sample of two layers' weights) and cached;
        pass ``refresh=True`` after changing the weights in place. Offloaded weights
        (on the meta device under an accelerate ``device_map``) are read from their
        offload store, so two offloaded models do not hash alike.
        """
        if self._fingerprint is None or refresh:
            import hashlib

            h = hashlib.sha256()
            for module in (self.layer_modules[0], self.layer_modules[-1]):
                for name, value in _named_weights(module):
                    flat = value.detach().flatten()
                    h.update(name.encode())
                    h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
            self._fingerprint = {"architecture": type(self.module).__name__, "family": self.adapter.family,
                                 "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                                 "weights_sha256": h.hexdigest()[:16]}
        return dict(self._fingerprint)

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name}: family={self.adapter.family}, layers={self.num_layers}, "
                f"hidden={self.hidden_size})")


def _module_device(module: torch.nn.Module) -> torch.device:
    """The device a module computes on: accelerate's execution device, else its first real parameter's."""
    hook = getattr(module, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _named_weights(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every parameter, offloaded (meta) ones read from accelerate's weights map."""
    out = []
    for name, p in sorted(module.named_parameters()):
        if p.device.type == "meta":
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            store = getattr(getattr(owner, "_hf_hook", None), "weights_map", None)
            if store is None:
                raise ValueError(f"Weight {name!r} is on the meta device and no offload store holds it: the model "
                                 "was not fully loaded, so it cannot be identified or steered.")
            p = store[leaf]
        out.append((name, p))
    return out


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_config(name: str, trust_remote_code: bool) -> Any:
    """The checkpoint's config, or one clear error: no hub retries when offline, no deep traceback."""
    import transformers

    local = Path(name).expanduser()
    if local.is_dir() and not (local / "config.json").exists():
        raise ValueError(f"{name!r} is a directory without a config.json: not a transformers checkpoint.")
    if not local.exists() and _offline():
        raise ValueError(f"Model {name!r} is neither 'default', 'default-qwen', 'tiny-<family>' nor a local "
                         "directory, and hub "
                         "access is off (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE). Give the checkpoint's directory, "
                         "or unset offline mode to download it.")
    try:
        return transformers.AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Could not load model {name!r}: {first} Give a checkpoint directory, a hub id you can "
                         "reach, 'default' or 'tiny-<family>'.") from None


def _place(module: torch.nn.Module, device_map: Any, dtype: Any) -> torch.nn.Module:
    """``dtype`` / a single-device ``device_map`` for models built here (the default, tiny ones)."""
    if dtype not in (None, "auto"):
        module = module.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if device_map is not None:
        if isinstance(device_map, dict):
            raise ValueError("A per-module device_map needs a checkpoint directory; for the built-in models "
                             "give one device ('cuda', 'cpu') or 'auto'.")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device_map == "auto" else device_map
        module = module.to(device)
    return module


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
    image_backend: str | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """Load a model for tracing.

    Args:
        name_or_path_or_model: ``"default"`` (the embedded LLaVA trained on the
            synthetic benchmark), ``"default-qwen"`` (its Qwen2.5-VL twin), ``"tiny-<family>"`` (a tiny random model, e.g.
            ``"tiny-llava"``), a local directory or hub id, or an already built
            ``transformers`` model (then pass ``processor``).
        device_map, dtype: passed to ``from_pretrained`` untouched.
        remote: nnsight's ``remote`` flag, passed to every trace the toolkit opens
            (``True`` for NDIF, ``"local"`` to test serialisation locally).
        trust_remote_code: only when you ask for it.
        image_backend: the image processor's backend for a checkpoint ("pil" or "torchvision";
            ``None``: transformers' choice). PGD for LLaVA-NeXT and Idefics3 needs "pil".
    """
    from . import tiny

    if isinstance(name_or_path_or_model, torch.nn.Module):
        if processor is None:
            raise ValueError("A model object needs its processor (VLMs) or tokenizer: load_model(model, processor).")
        module = name_or_path_or_model
        return LoadedModel(module.eval(), processor, adapter_for(module.config), remote=remote)
    name = str(name_or_path_or_model)
    if name in ("default", "default-qwen") or name.startswith("tiny-"):
        if not name.startswith("tiny-"):
            from .default import DEFAULTS, load_default

            module, processor = load_default(name=name)
            folder = DEFAULTS[name][0]
        else:
            module, processor = tiny.build_tiny(name[len("tiny-"):], seed=kwargs.pop("seed", 0))
            folder = None
        module = _place(module, device_map, dtype)
        return LoadedModel(module, processor, adapter_for(module.config), remote=remote, name=name, folder=folder)

    import transformers

    config = _load_config(name, trust_remote_code)
    adapter = adapter_for(config)
    auto = getattr(transformers, adapter.auto_class)
    load_kwargs = {k: v for k, v in {"device_map": device_map, "dtype": dtype}.items() if v is not None}
    module = auto.from_pretrained(name, trust_remote_code=trust_remote_code, **load_kwargs, **kwargs)
    if processor is None:
        if adapter.supports_images:
            from .processors import load_processor

            processor = load_processor(name, trust_remote_code=trust_remote_code, image_backend=image_backend)
        else:
            processor = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    return LoadedModel(module.eval(), processor, adapter, remote=remote, name=name,
                       folder=name if Path(name).is_dir() else None)
