"""Capture and edit the residual stream through nnsight, batched.

Layer ``l`` means the **output of decoder block l** (0-based): the residual
stream after the block, which equals ``output_hidden_states[l + 1]`` (index 0
there is the embedding output; the last entry additionally has the final norm
applied on most families). Prompts are left padded, so the last prompt token of
every row is at index ``-1``.

Two halves:

* capture: :func:`capture` / :func:`iter_capture` read layer outputs at the last
  prompt token, at every prompt token, at each sample's trailing tokens
  (:class:`Trailing`: teacher-forced answers), or at a mask you supply, over many inputs
  in batches, returning CPU float32 tensors keyed by layer.
* edit: :func:`forward` and :func:`generate` run with steers (a :class:`Steer`,
  an Eraser, or a list), through :func:`toolkit.steering.intervene`; see
  :mod:`toolkit.steering` for the positions and for the two other routes
  (:func:`intervene` in your own trace, :func:`attached` hooks for any forward).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch
from tqdm.auto import tqdm

from .models.loading import LoadedModel, Sample, as_sample
from .prefix import SharedPrefix, assemble, image_key, prefix_groups, split_prefix, suffix_inputs
from .reads import READS, parse_reads, pool
from .steering import (POSITIONS, GateLog, Steer, active_steers, as_steers, attached, decides_at_prefill, edit_envoy,
                       group_by_layer, intervene, prompt_texts, steering)

__all__ = ["Steer", "Trailing", "Capture", "capture", "iter_capture", "forward", "generate", "intervene", "attached",
           "steering", "active_steers", "GateLog", "POSITIONS", "keeps_last_logits", "steered_rows"]



def _is_read(positions: Any) -> bool:
    if not isinstance(positions, str) or positions == "prompt":
        return False
    try:
        parse_reads(positions)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Trailing:
    """Capture positions: for sample ``i``, the ``counts[i]`` tokens that end ``offset`` tokens before its end.

    For texts "prompt + answer" with an answer of ``n_i`` tokens, ``Trailing(n, offset=1)``
    selects the states that *predict* each answer token (teacher forcing): the
    last prompt token and every answer token but the last.
    """

    counts: tuple[int, ...]
    offset: int = 1

    def mask(self, enc: dict, idx: Sequence[int]) -> torch.Tensor:
        attn = enc["attention_mask"].bool()
        width = attn.shape[1]
        mask = torch.zeros_like(attn)
        for row, i in enumerate(idx):
            n = int(self.counts[i])
            if n < 0 or n + self.offset > int(attn[row].sum()):
                raise ValueError(f"Sample {i}: {n} trailing tokens (offset {self.offset}) do not fit in its "
                                 f"{int(attn[row].sum())} tokens.")
            mask[row, width - self.offset - n: width - self.offset] = True
        return mask


CapturePositions = str | Trailing | Callable[[dict], torch.Tensor]


@dataclass
class Capture:
    """Captured activations.

    Attributes:
        activations: ``{layer: (rows, d)}`` float32 CPU tensors. With
            ``positions="last"`` a row is a sample; otherwise a row is a token and
            ``sample_index`` says whose.
        sample_index: ``(rows,)`` index of the sample each row came from.
    """

    activations: dict[int, torch.Tensor]
    sample_index: torch.Tensor
    num_layers: int | None = None

    def __getitem__(self, layer: int) -> torch.Tensor:
        key = layer % self.num_layers if (self.num_layers and isinstance(layer, int) and layer < 0) else layer
        if key not in self.activations:
            raise KeyError(f"Layer {layer} was not captured; this capture holds layers {sorted(self.activations)} "
                           "(negative indices count from the model's last layer).")
        return self.activations[key]


# --------------------------------------------------------------------------- batching
def _batches(samples: Sequence[Sample], batch_size: int) -> Iterator[list[int]]:
    """Index batches; samples with and without images are never mixed in one batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    groups: dict[bool, list[int]] = {True: [], False: []}
    for i, s in enumerate(samples):
        groups[s.image is not None].append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            yield idx[start:start + batch_size]


# --------------------------------------------------------------------------- capture
def iter_capture(
    model: LoadedModel,
    samples: Sequence[Sample | tuple],
    layers: int | Sequence[int],
    positions: CapturePositions = "last",
    *,
    batch_size: int = 16,
    formatted: bool = False,
    progress: bool | str = False,
    steers: Any = None,
    to_cpu: bool = True,
    share_prefix: bool = True,
) -> Iterator[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """Stream captures batch by batch: yields ``(sample_index, {layer: (rows, d)})``.

    ``to_cpu=True`` (default) returns CPU float32 rows; ``False`` keeps them on the
    layer's device in the model's dtype (no host copy: accumulate on the GPU).

    Use it to accumulate statistics over more inputs than fit in memory.
    ``positions``: ``"last"`` (one row per sample), ``"prompt"`` (every non-pad
    prompt token), any gate read of :mod:`toolkit.reads` (``"last+mean"``,
    ``"image-max"``, ``"last+image-max"`` ...: one (k d) row per sample, exactly what a
    gate reading it sees while steering), a :class:`Trailing` window per sample, or a callable
    ``encoding -> (B, T) bool mask``. With
    ``steers`` (or active ones), captures see the steered stream; a steered
    layer's capture is its output after the steer. The forward stops after the last captured layer
    (nnsight's ``tracer.stop()``): the layers above it and the LM head do not run.

    ``share_prefix`` (default): samples that show the same image run their common prompt prefix (the
    image and the template before the question) once and each question's remaining tokens on its
    key/value cache (:mod:`toolkit.prefix`); the states equal a plain forward's. It falls back to plain
    forwards for steered captures, remote execution, families whose prefix attends to the question
    (PaliGemma), text-only samples and images asked about once. ``False``: plain forwards only.
    """
    samples = [as_sample(s) for s in samples]
    layer_ids = sorted(model.check_layers(layers))
    groups = group_by_layer(model, as_steers(model, steers))
    if not samples:
        raise ValueError("No samples to capture.")
    if isinstance(positions, Trailing) and len(positions.counts) != len(samples):
        raise ValueError(f"Trailing has {len(positions.counts)} counts for {len(samples)} samples.")
    deepstack = sorted(model.adapter.deepstack_layers(model.config) & set(layer_ids))
    if deepstack and positions != "last" and any(s.image is not None for s in samples):
        raise ValueError(
            f"{model.adapter.family}: layers {deepstack} are followed by deepstack visual features added at image "
            "positions, so their output there is not what the next layer reads. Capture positions='last' (the "
            "last prompt token is text), capture without images, or use layers >= "
            f"{max(deepstack) + 1}.")
    if not (isinstance(positions, Trailing) or callable(positions) or positions in ("last", "prompt")
            or _is_read(positions)):
        raise ValueError(f"positions must be 'last', 'prompt', a gate read ({', '.join(READS)}), a Trailing or a "
                         f"mask function, got {positions!r}.")
    steered = bool(groups) or bool(active_steers(model))
    share = share_prefix and not steered and not model.remote and model.adapter.shares_prefix
    bar = tqdm(total=len(samples), desc=progress if isinstance(progress, str) else "capture",
               disable=not progress, leave=False)
    for idx, enc, saved in _forwards(model, samples, layer_ids, groups, batch_size, formatted, share,
                                     last_only=positions == "last"):
        if isinstance(positions, Trailing):
            mask = positions.mask(enc, idx)
        elif callable(positions):
            mask = torch.as_tensor(positions(enc), dtype=torch.bool)
            if mask.shape != enc["input_ids"].shape:
                raise ValueError(f"The positions mask has shape {tuple(mask.shape)}; the batch's tokens are "
                                 f"{tuple(enc['input_ids'].shape)}.")
        elif positions == "prompt":
            mask = enc["attention_mask"].bool()
        else:
            mask = None
        rows = torch.as_tensor(idx)
        out = {}
        for layer, h in zip(layer_ids, saved):
            h = h.detach().to("cpu", torch.float32) if to_cpu else h.detach()
            if positions != "last" and _is_read(positions):
                # What a gate with this read sees at prefill (toolkit.steering), float32 as there.
                h = pool(h, positions, enc["attention_mask"].to(h.device),
                         model.image_token_mask(enc["input_ids"]).to(h.device))
            if mask is not None:
                h = h[mask.to(h.device)]
            if not torch.isfinite(h).all():
                raise FloatingPointError(f"Layer {layer} activations contain NaN/inf: check the model's dtype "
                                         "(float16 overflow?) and its inputs.")
            out[layer] = h
        if mask is not None:
            mask = mask.cpu()
            rows = rows[:, None].expand_as(mask)[mask]
        bar.update(len(idx))
        yield rows, out
    bar.close()


def _trace_layers(model: LoadedModel, inputs: dict, layer_ids: list[int], groups: dict, enc: dict,
                  last_only: bool, save: bool = True) -> list:
    """One traced forward that saves the outputs of ``layer_ids`` (steered by ``groups``; ``save=False``: none, the
    forward only fills a cache) and stops after the last."""
    saved = []
    last_layer = layer_ids[-1]
    texts = prompt_texts(model, [s for ss in groups.values() for s in ss], enc["input_ids"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with model.nn.trace(**inputs, remote=model.remote) as tracer:
            # In layer order: nnsight reads each output once, in execution order. Steers after the
            # last captured layer cannot change what is captured, so they are left out.
            for layer in sorted(set(layer_ids) | {l for l in groups if l <= last_layer}):
                if layer in groups:
                    h = edit_envoy(model.layers[layer], groups[layer], prefill=True, mask=enc["attention_mask"],
                                   image_mask=model.image_token_mask(enc["input_ids"]), texts=texts)
                else:
                    out = model.layers[layer].output
                    h = out[0] if isinstance(out, tuple) else out
                if layer in layer_ids and save:
                    saved.append(nnsight.save(h[:, -1] if last_only else h))
            # Early stop: the layers above and the LM head ((B, T, vocab) logits) never run.
            tracer.stop()
    return saved


def _cache_argument(model: LoadedModel) -> str:
    """The forward's name for a key/value cache (``cache`` in transformers >= 5.2, before ``past_key_values``)."""
    try:
        params = inspect.signature(model.module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _forwards(model: LoadedModel, samples: list[Sample], layer_ids: list[int], groups: dict, batch_size: int,
              formatted: bool, share: bool, last_only: bool) -> Iterator[tuple[list[int], dict, list]]:
    """``(indices, encoding, layer outputs)`` per batch: ``(B, T, d)`` in the encoding's left-padded layout (``(B, d)``
    at the last token with ``last_only``). With ``share``, images asked about more than once run their prompt
    prefix once a batch (:mod:`toolkit.prefix`); the others, and batches whose common prefix does not hold
    every image token, run plainly."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    plain = list(range(len(samples)))
    if share:
        keys = [image_key(s.image) for s in samples]  # hashed once: each image's bytes
        shared, plain = prefix_groups(samples, keys=keys)
        ordered = [i for g in shared for i in g]
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start:start + batch_size]
            # Images of other sizes give other prefix lengths (Qwen-VL's grids): then each image's rows run
            # as their own shared batch.
            tries = [batch]
            while tries:
                idx = tries.pop(0)
                batch_keys = [keys[i] for i in idx]
                enc = model.encode([samples[i] for i in idx], formatted=formatted, device=model.device)
                split = split_prefix(enc, batch_keys, model.image_token_mask, model.adapter.image_rows)
                if split is not None:
                    yield idx, enc, _shared_forward(model, enc, split, layer_ids, last_only)
                elif len(set(batch_keys)) > 1:
                    tries += [[i for i in idx if keys[i] == key] for key in dict.fromkeys(batch_keys)]
                else:
                    yield idx, enc, _trace_layers(model, enc, layer_ids, groups, enc, last_only)
    sub = [samples[i] for i in plain]
    for local in _batches(sub, batch_size):
        idx = [plain[i] for i in local]
        enc = model.encode([samples[i] for i in idx], formatted=formatted, device=model.device)
        yield idx, enc, _trace_layers(model, enc, layer_ids, groups, enc, last_only)


def _shared_forward(model: LoadedModel, enc: dict, split: SharedPrefix, layer_ids: list[int], last_only: bool
                    ) -> list[torch.Tensor]:
    """A batch's layer outputs from its images' prefixes (run once each) and its rows' suffixes on their caches."""
    from transformers import DynamicCache

    name = _cache_argument(model)
    cache = DynamicCache()
    p = split.length
    # At the last token only the suffixes are read: the prefix's states are not kept.
    prefix_h = _trace_layers(model, dict(split.prefix, use_cache=True, **{name: cache}), layer_ids, {},
                             split.prefix, last_only=False, save=not last_only)
    # One cache row per batch row (the rows of an image share its prefix's keys and values).
    index = split.index.to(split.prefix["input_ids"].device)
    cache.batch_select_indices(index)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    inputs = suffix_inputs(enc, split, pad)
    width = inputs["input_ids"].shape[1]
    inputs.update(use_cache=True, **{name: cache},
                  position_ids=model.adapter.continuation_positions(model.module, p, width, index))
    suffix_h = _trace_layers(model, inputs, layer_ids, {}, inputs, last_only=False)
    if last_only:  # each row's last real suffix token (the suffixes are right padded)
        last = torch.tensor(split.lengths) - p - 1
        return [h[torch.arange(len(last)), last.to(h.device)] for h in suffix_h]
    return [assemble(ph, sh, split, enc["input_ids"].shape[1]) for ph, sh in zip(prefix_h, suffix_h)]


def capture(
    model: LoadedModel,
    samples: Sequence[Sample | tuple],
    layers: int | Sequence[int],
    positions: CapturePositions = "last",
    *,
    batch_size: int = 16,
    formatted: bool = False,
    progress: bool | str = False,
    steers: Any = None,
    to_cpu: bool = True,
    share_prefix: bool = True,
) -> Capture:
    """Capture layer outputs for ``samples`` (rows in the samples' order). See :func:`iter_capture`.

    The result is indexed by layer; negative layers count from the end (``cap[-1]``).
    """
    chunks = list(iter_capture(model, samples, layers, positions, batch_size=batch_size, formatted=formatted,
                               progress=progress, steers=steers, to_cpu=to_cpu, share_prefix=share_prefix))
    rows = torch.cat([r for r, _ in chunks])
    order = torch.argsort(rows, stable=True)
    acts = {}
    for layer in chunks[0][1]:
        stacked = torch.cat([c[layer] for _, c in chunks])
        acts[layer] = stacked[order.to(stacked.device)]
    return Capture(acts, rows[order], model.num_layers)


def keeps_last_logits(model: LoadedModel) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs and VLMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(model.module.forward).parameters
    except (TypeError, ValueError):
        return False


def forward(
    model: LoadedModel,
    samples: Sequence[Sample | tuple],
    *,
    steers: Any = None,
    batch_size: int = 16,
    formatted: bool = False,
    last_only: bool = True,
) -> torch.Tensor:
    """Logits for ``samples`` with ``steers`` applied (and any :func:`attached` ones, through their hooks).

    Returns ``(n, vocab)`` next-token logits at the last prompt token
    (``last_only``), else a list of ``(T_i, vocab)`` per sample (pads removed).
    """
    samples = [as_sample(s) for s in samples]
    steers = as_steers(model, steers)
    # Only the last position is read: the LM head projects that position alone ((B, 1, vocab) instead of
    # (B, T, vocab); 576 image tokens x a 32k vocabulary is 74 MB a row in float32).
    keep = {"logits_to_keep": 1} if last_only and keeps_last_logits(model) else {}
    results: dict[int, torch.Tensor] = {}
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted, device=model.device)
        mask = enc["attention_mask"]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with model.nn.trace(**enc, **keep, remote=model.remote):
                intervene(model, steers, inputs=enc, generating=False)
                logits = nnsight.save(model.nn.output.logits)
        logits = logits.detach().float().cpu()
        for row, i in enumerate(idx):
            results[i] = logits[row, -1] if last_only else logits[row][mask[row].bool().cpu()]
    ordered = [results[i] for i in range(len(samples))]
    return torch.stack(ordered) if last_only else ordered


def steered_rows(model: LoadedModel, samples: Sequence[Sample | tuple], *, steers: Any, batch_size: int = 16,
                 formatted: bool = False) -> list[bool] | None:
    """Which samples ``steers`` change at all: one prefill forward per batch, up to the last steered layer.

    A sample is *steered* when some steered layer's output differs from what that layer gave before the edit, at
    any prompt position (exact comparison). Where every steer decides at prefill
    (:func:`toolkit.steering.decides_at_prefill`: membership gates reading the prompt, latched or not), an unsteered
    sample generates exactly the tokens it generates without the steers, so its unsteered answer can stand for it
    (:func:`toolkit.evaluate.run_items`' ``unsteered``). Returns None where some steer can act later (a decoding
    step may shift a row its prefill left alone), and for a remote model. Steers :func:`attached` to the model are
    not seen here; with such hooks the comparison would be against an already edited state.

    Memory: one batch's prefill up to the last steered layer; the LM head never runs.
    """
    samples = [as_sample(s) for s in samples]
    flat = as_steers(model, steers)
    if not flat:
        return [False] * len(samples)
    if model.remote or active_steers(model) or not all(decides_at_prefill(s) for s in flat):
        return None
    groups = group_by_layer(model, flat)
    steered = [False] * len(samples)
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted, device=model.device)
        texts = prompt_texts(model, flat, enc["input_ids"])
        image_mask = model.image_token_mask(enc["input_ids"])
        changed: list = []  # filled inside the trace (nnsight runs its body apart: names bound there stay there)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with model.nn.trace(**enc, remote=False) as tracer:
                for layer, ss in groups.items():
                    out = model.layers[layer].output
                    before = out[0] if isinstance(out, tuple) else out
                    new = edit_envoy(model.layers[layer], ss, prefill=True, mask=enc["attention_mask"],
                                     image_mask=image_mask, texts=texts)
                    changed.append(nnsight.save((new != before).flatten(1).any(1)))
                tracer.stop()  # the layers above the last steered one and the LM head never run
        rows = torch.stack([c.detach().cpu() for c in changed]).any(0).tolist()
        for row, i in enumerate(idx):
            steered[i] = bool(rows[row])
    return steered


def generate(
    model: LoadedModel,
    samples: Sequence[Sample | tuple],
    *,
    steers: Any = None,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    formatted: bool = False,
    return_ids: bool = False,
    progress: bool | str = False,
    gate_log: GateLog | None = None,
    **generate_kwargs: Any,
) -> list[str] | list[torch.Tensor]:
    """Greedy (unless told otherwise) generation with ``steers`` applied (and any :func:`attached` ones).

    Returns the decoded continuations (special tokens removed), or the new token
    ids per sample with ``return_ids=True``. ``gate_log``: a :class:`GateLog` that
    receives every steer's gate values, per layer and generation step.
    """
    samples = [as_sample(s) for s in samples]
    steers = as_steers(model, steers)
    generate_kwargs.setdefault("do_sample", False)
    pad_id = model.tokenizer.pad_token_id
    generate_kwargs.setdefault("pad_token_id", pad_id)
    results: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(samples), desc=progress if isinstance(progress, str) else "generate",
               disable=not progress, leave=False)
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted, device=model.device)
        width = enc["input_ids"].shape[1]
        with torch.no_grad(), warnings.catch_warnings():
            # nnsight warns when an open `tracer.iter[:]` ends with the generation: that is the design here.
            warnings.simplefilter("ignore")
            with model.nn.generate(max_new_tokens=max_new_tokens, remote=model.remote, **generate_kwargs) as tr:
                with tr.invoke(**enc):
                    intervene(model, steers, inputs=enc, log=gate_log)
                with tr.invoke():
                    ids = nnsight.save(tr.result)
        ids = ids.detach().cpu()
        for row, i in enumerate(idx):
            results[i] = ids[row, width:]
        bar.update(len(idx))
    bar.close()
    out = [results[i] for i in range(len(samples))]
    if return_ids:
        return out
    return model.decode(torch.nn.utils.rnn.pad_sequence(out, batch_first=True, padding_value=pad_id)
                        if out else torch.zeros(0, 0, dtype=torch.long))
