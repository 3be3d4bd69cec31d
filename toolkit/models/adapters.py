"""One adapter per model family: everything architecture-specific lives here.

An adapter knows, for its family, where the decoder layers are, the text width
and depth, how a prompt with or without an image is written, how the processor
wants images batched, and which processor outputs are not model inputs. The rest
of the toolkit asks the adapter and never branches on a model's name.

Positions: every adapter pads on the **left**, so the last prompt token of every
row of a batch is at index ``-1`` (the convention the steering code relies on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .tokens import continuation_ids, join_answer

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "supported_families"]


@dataclass(frozen=True)
class Adapter:
    """Family knowledge for one architecture.

    Attributes:
        family: short name (``"llava"``).
        model_types: ``config.model_type`` values this adapter handles.
        layers_path: dotted path from the top model to the decoder ``ModuleList``.
        image_placeholder: the string a prompt must contain where the image goes,
            before the processor expands it; ``None`` for text-only families or
            where the processor inserts it itself (PaliGemma).
        nested_images: the processor wants one list of images per prompt.
        drop_keys: processor outputs that must not reach ``forward``/``generate``.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    image_placeholder: str | None = None
    supports_images: bool = True
    nested_images: bool = False
    chat: bool = True
    drop_keys: tuple[str, ...] = ("labels",)
    auto_class: str = "AutoModelForImageTextToText"
    # How pixel_values is built from the resized image (toolkit.models.pixels): "image" (one
    # normalised 3 x H x W image), "patches" (Qwen-VL's flattened patches), "anyres" (LLaVA-NeXT's
    # tiles after a whole-image view), "split" (Idefics3's tiles before one), or None (no
    # differentiable re-implementation: no PGD in pixel space).
    pixel_layout: str | None = None
    # token_type_ids mark the answer as the suffix of a prefix-LM (PaliGemma).
    suffix_token_types: bool = False
    # Qwen3-VL: after its first decoder layers, visual features are added to the stream at image
    # positions *after* the layer's output, so there the layer output is not what the next layer reads.
    deepstack: bool = False
    # Multimodal rotary positions (Qwen-VL): text after an image continues at the model's rope_deltas offset.
    mrope: bool = False
    # Whether a prompt's prefix (the image, then the template up to the question) has the same states whatever
    # follows it, so that it can be computed once for many questions (toolkit.prefix). False where the image
    # tokens attend to the question (PaliGemma's bidirectional prefix).
    shares_prefix: bool = True
    notes: str = field(default="", compare=False)

    # -- structure -----------------------------------------------------------
    def text_config(self, config: Any) -> Any:
        getter = getattr(config, "get_text_config", None)
        return getter() if getter is not None else config

    def num_layers(self, config: Any) -> int:
        return int(self.text_config(config).num_hidden_layers)

    def hidden_size(self, config: Any) -> int:
        return int(self.text_config(config).hidden_size)

    def layer_modules(self, module: torch.nn.Module) -> torch.nn.ModuleList:
        """The decoder layers of the plain torch model (``L`` modules)."""
        return _get_path(module, self.layers_path)

    def deepstack_layers(self, config: Any) -> set[int]:
        """Layers after whose output visual features are added at image positions (Qwen3-VL's deepstack)."""
        if not self.deepstack:
            return set()
        vision = getattr(config, "vision_config", None)
        return set(range(len(getattr(vision, "deepstack_visual_indexes", None) or [])))

    def image_rows(self, enc: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The image inputs (pixels, grids, sizes) of batch rows ``rows`` of a processor encoding; token-level
        inputs (ids, mask, token types) are left out."""
        batch, width = enc["input_ids"].shape
        out = {}
        for k, v in enc.items():
            if k in ("input_ids", "attention_mask") or v.shape[:2] == (batch, width):
                continue
            if self.pixel_layout == "patches" and k == "pixel_values":
                # Qwen-VL concatenates every image's patches; image i has prod(image_grid_thw[i]) of them.
                ends = enc["image_grid_thw"].prod(-1).cumsum(0).tolist()
                out[k] = torch.cat([v[(ends[i - 1] if i else 0):ends[i]] for i in rows.tolist()])
            elif v.shape[0] == batch:
                out[k] = v[rows.to(v.device)]
            else:
                raise ValueError(f"{self.family}: cannot split input {k!r} of shape {tuple(v.shape)} by image; "
                                 "capture with share_prefix=False.")
        return out

    def continuation_positions(self, module: torch.nn.Module, start: int, width: int, index: torch.Tensor
                               ) -> torch.Tensor:
        """Position ids of ``width`` text tokens that follow cached prefixes of ``start`` tokens, row ``b`` continuing
        prefix ``index[b]``: (B, width); Qwen-VL: (3, B, width), offset by the ``rope_deltas`` its prefix forward
        left on the model."""
        batch = len(index)
        pos = torch.arange(start, start + width, device=index.device)[None].expand(batch, width)
        if not self.mrope:
            return pos
        deltas = getattr(getattr(module, "model", module), "rope_deltas", None)
        if deltas is None:
            raise RuntimeError(f"{self.family}: no rope_deltas after the prefix forward; capture with "
                               "share_prefix=False.")
        deltas = deltas.reshape(-1).to(pos.device)[index.to(pos.device)]
        return (pos + deltas[:, None])[None].expand(3, batch, width)

    def image_token_id(self, config: Any) -> int | None:
        """The id the processor repeats once per image token in ``input_ids`` (LLaVA's ``<image>``, Qwen-VL's
        ``<|image_pad|>``): where the image's states sit. ``None`` for text-only families."""
        if not self.supports_images:
            return None
        for name in ("image_token_id", "image_token_index", "image_token_idx"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        return None

    def layer_envoys(self, envoy: Any) -> Any:
        """The same decoder layers seen through an nnsight envoy."""
        return _get_path(envoy, self.layers_path)

    # -- prompts ---------------------------------------------------------------
    def format_prompt(self, processor: Any, text: str, with_image: bool) -> str:
        """The full prompt for a user message, ending with the generation prompt.

        Uses the processor's chat template where it has one, so real checkpoints
        get their own format.
        """
        if with_image and not self.supports_images:
            raise ValueError(
                f"An image was given to a text-only {self.family} model. Pass image=None, "
                "or load a vision-language model."
            )
        return self.format_chat(processor, [("user", text)], with_image)

    def format_chat(self, processor: Any, turns: Sequence[tuple[str, str]], with_image: bool) -> str:
        """A multi-turn conversation ``[(role, text), ...]`` (roles ``user``/``assistant``), the image in the
        first user turn, ending with the generation prompt. Families without a chat format join the turns."""
        if not turns or turns[-1][0] != "user":
            raise ValueError("A conversation must end with a user turn (the model answers it).")
        template_owner = processor if getattr(processor, "chat_template", None) else None
        if template_owner is None:
            tok = getattr(processor, "tokenizer", processor)
            template_owner = tok if getattr(tok, "chat_template", None) else None
        if not self.chat or template_owner is None:
            prefix = self.image_placeholder if (with_image and self.image_placeholder) else ""
            return prefix + "\n".join(text for _, text in turns)
        messages, placed = [], False
        for role, text in turns:
            content: list[dict] = []
            if role == "user" and with_image and not placed:
                content.append({"type": "image"})
                placed = True
            content.append({"type": "text", "text": text})
            messages.append({"role": role, "content": content})
        return template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def check_prompt(self, prompt: str, has_image: bool) -> None:
        """Refuse a prompt whose image placeholder does not match the image."""
        if has_image and not self.supports_images:
            raise ValueError(
                f"An image was given to a text-only {self.family} model. Pass image=None, "
                "or load a vision-language model."
            )
        marker = self.image_placeholder
        if marker is None or not self.supports_images:
            return
        count = prompt.count(marker)
        if has_image and count != 1:
            raise ValueError(
                f"The prompt has {count} {marker!r} image placeholders but one image was given. "
                f"Build prompts with model.format_prompt(text, image=True), which inserts exactly one "
                f"{marker!r} in the {self.family} format."
            )
        if not has_image and count:
            raise ValueError(
                f"The prompt contains the image placeholder {marker!r} but no image was given. "
                "Pass the image, or build the prompt with model.format_prompt(text, image=False)."
            )

    def images_argument(self, images: Sequence[Image.Image]) -> list:
        return [[im] for im in images] if self.nested_images else list(images)

    def training_batch(self, processor: Any, prompts: Sequence[str], answers: Sequence[str],
                       images: Sequence[Image.Image] | None = None, *, eos: bool = True) -> dict[str, torch.Tensor]:
        """A right-padded teacher-forcing batch: ``prompt + answer + EOS`` with labels on the answer and EOS
        (``eos=False``: the answer alone, as an attack's target).

        ``prompts`` are templated (``format_prompt``); ``images`` one per prompt or
        ``None``. The processor builds every family's own inputs (pixel values,
        ``image_grid_thw``, ``image_sizes``, ``token_type_ids``); the answer's tokens
        are the continuation of the prompt (:func:`~toolkit.models.loading.continuation_ids`),
        the last ``n`` real tokens of each row, so no tokenizer kind is assumed.
        """
        tok = getattr(processor, "tokenizer", processor)
        if len(prompts) != len(answers) or (images is not None and len(images) != len(prompts)):
            raise ValueError(f"{len(prompts)} prompts, {len(answers)} answers and "
                             f"{len(images) if images is not None else 0} images: give one of each per example.")
        kwargs: dict[str, Any] = {"return_tensors": "pt", "padding": True, "padding_side": "right"}
        if images is not None:
            kwargs["images"] = self.images_argument(images)
        if self.suffix_token_types:
            # PaliGemma: the processor appends the answer as the prefix-LM suffix (token type 1) with EOS,
            # and builds the labels itself.
            enc = processor(text=list(prompts), suffix=list(answers), **kwargs)
            labels = enc["labels"]
            if not eos:
                labels = labels.masked_fill(labels == tok.eos_token_id, -100)
        else:
            counts = [len(continuation_ids(tok, p, a)) + int(eos) for p, a in zip(prompts, answers)]
            ending = tok.eos_token if eos else ""
            enc = processor(text=[join_answer(p, a) + ending for p, a in zip(prompts, answers)], **kwargs)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            labels = torch.full_like(ids, -100)
            for row, n in enumerate(counts):
                end = int(mask[row].sum())
                labels[row, end - n:end] = ids[row, end - n:end]
        batch = {k: v for k, v in enc.items() if k not in self.drop_keys and isinstance(v, torch.Tensor)}
        batch["labels"] = labels
        return batch


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


LLAVA = Adapter("llava", ("llava",), "model.language_model.layers", "<image>", pixel_layout="image",
                notes="LLaVA-1.5 (CLIP tower, Llama/Vicuna text model)")
LLAVA_NEXT = Adapter("llava_next", ("llava_next",), "model.language_model.layers", "<image>", pixel_layout="anyres",
                     notes="LLaVA-NeXT / LLaVA-1.6 (any-resolution tiles)")
QWEN2_VL = Adapter("qwen2_vl", ("qwen2_vl",), "model.language_model.layers", "<|image_pad|>", pixel_layout="patches",
                   mrope=True)
QWEN2_5_VL = Adapter("qwen2_5_vl", ("qwen2_5_vl",), "model.language_model.layers", "<|image_pad|>",
                     pixel_layout="patches", mrope=True)
QWEN3_VL = Adapter("qwen3_vl", ("qwen3_vl",), "model.language_model.layers", "<|image_pad|>", pixel_layout="patches",
                   deepstack=True, mrope=True,
                   notes="Qwen3-VL adds visual features to the stream after its first layers")
GEMMA3 = Adapter("gemma3", ("gemma3",), "model.language_model.layers", "<start_of_image>", nested_images=True,
                 pixel_layout="image")
# PaliGemma's processor inserts the image tokens itself and has no chat format.
PALIGEMMA = Adapter("paligemma", ("paligemma",), "model.language_model.layers", None, chat=False,
                    pixel_layout="image", suffix_token_types=True, shares_prefix=False)
IDEFICS3 = Adapter("idefics3", ("idefics3", "smolvlm"), "model.text_model.layers", "<image>", nested_images=True,
                   pixel_layout="split",
                   notes="Idefics3 and SmolVLM")
LLAMA = Adapter("llama", ("llama", "mistral"), "model.layers", None, supports_images=False,
                auto_class="AutoModelForCausalLM")
QWEN2 = Adapter("qwen2", ("qwen2", "qwen3"), "model.layers", None, supports_images=False,
                auto_class="AutoModelForCausalLM")

ADAPTERS: tuple[Adapter, ...] = (LLAVA, LLAVA_NEXT, QWEN2_VL, QWEN2_5_VL, QWEN3_VL, GEMMA3, PALIGEMMA, IDEFICS3,
                                 LLAMA, QWEN2)


def supported_families() -> list[str]:
    return [f"{a.family} (model_type {', '.join(a.model_types)})" for a in ADAPTERS]


def adapter_for(config: Any) -> Adapter:
    """The adapter for a transformers config; a clear error for anything else."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise ValueError(
        f"Unsupported architecture: model_type={model_type!r} "
        f"({', '.join(getattr(config, 'architectures', None) or []) or 'no architectures listed'}). "
        "Supported families: " + "; ".join(supported_families()) + ". "
        "To add one, write an Adapter in toolkit/models/adapters.py naming its decoder-layer path."
    )
