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
* edit: a :class:`Steer` adds ``fn(h_source)`` to a layer's output. Positions:
  ``"last"`` (the last prompt token, prefill only), ``"prompt"`` (every prompt
  token, the shift computed from the last prompt token; prefill only, the KV
  cache carries it into decoding), ``"all"`` (as ``"prompt"``, and every
  generated token with the shift recomputed from that token). :func:`forward`
  and :func:`generate` run with steers; :func:`steering` is a context manager
  that makes steers active for every toolkit call on a model and always removes
  them on exit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import nnsight
import torch
from tqdm.auto import tqdm

from .models.loading import LoadedModel, Sample, as_sample

__all__ = ["Steer", "Trailing", "Capture", "capture", "iter_capture", "forward", "generate", "steering", "active_steers",
           "POSITIONS"]

Positions = Literal["prompt", "last", "all"]
POSITIONS = ("prompt", "last", "all")


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


CapturePositions = Literal["last", "prompt"] | Trailing | Callable[[dict], torch.Tensor]


@dataclass(frozen=True)
class Steer:
    """Add ``fn(h_source)`` to the output of decoder layer ``layer``.

    ``fn`` maps a batch of states ``(B, d)`` to shifts ``(B, d)``; it sees the
    *unsteered* output of its layer (the input stream already carries the
    steers of earlier layers). Several steers on one layer see the same state
    and their shifts add.
    """

    layer: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: Positions = "prompt"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}.")


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

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.activations[layer]


_ACTIVE: dict[int, list[Steer]] = {}


def active_steers(model: LoadedModel) -> list[Steer]:
    """Steers made active on ``model`` by enclosing :func:`steering` blocks."""
    return list(_ACTIVE.get(id(model), []))


@contextlib.contextmanager
def steering(model: LoadedModel, steers: Sequence[Steer] | Any) -> Iterator[None]:
    """Within the block, every toolkit forward/generate on ``model`` applies ``steers``.

    Accepts Steers or an object with ``.steers(model)`` (an Eraser). Nothing is
    attached to the torch modules (nnsight edits are per trace), and the steers
    are dropped in ``finally``, so the model is exactly the original after the block.
    """
    steers = _as_steers(model, steers)
    stack = _ACTIVE.setdefault(id(model), [])
    stack.extend(steers)
    try:
        yield
    finally:
        for s in steers:
            stack.remove(s)
        if not stack:
            _ACTIVE.pop(id(model), None)


def _as_steers(model: LoadedModel, steers: Any) -> list[Steer]:
    if steers is None:
        return []
    if hasattr(steers, "steers"):
        return list(steers.steers(model))
    if isinstance(steers, Steer):
        return [steers]
    out: list[Steer] = []
    for s in steers:
        out.extend(_as_steers(model, s))
    return out


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


def _output_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


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
) -> Iterator[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """Stream captures batch by batch: yields ``(sample_index, {layer: (rows, d)})``.

    Use it to accumulate statistics over more inputs than fit in memory.
    ``positions``: ``"last"`` (one row per sample), ``"prompt"`` (every non-pad
    prompt token), a :class:`Trailing` window per sample, or a callable
    ``encoding -> (B, T) bool mask``. With
    ``steers`` (or active ones), captures see the steered stream; a steered
    layer's capture is its output after the steer.
    """
    samples = [as_sample(s) for s in samples]
    layer_ids = sorted(model.check_layers(layers))
    groups = _group(model, _steers_for(model, steers))
    if not samples:
        raise ValueError("No samples to capture.")
    if isinstance(positions, Trailing) and len(positions.counts) != len(samples):
        raise ValueError(f"Trailing has {len(positions.counts)} counts for {len(samples)} samples.")
    bar = tqdm(total=len(samples), desc=progress if isinstance(progress, str) else "capture",
               disable=not progress, leave=False)
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted)
        if isinstance(positions, Trailing):
            mask = positions.mask(enc, idx)
        elif callable(positions):
            mask = torch.as_tensor(positions(enc), dtype=torch.bool)
            if mask.shape != enc["input_ids"].shape:
                raise ValueError(f"The positions mask has shape {tuple(mask.shape)}; the batch's tokens are "
                                 f"{tuple(enc['input_ids'].shape)}.")
        elif positions == "prompt":
            mask = enc["attention_mask"].bool()
        elif positions == "last":
            mask = None
        else:
            raise ValueError(f"positions must be 'last', 'prompt', a Trailing or a mask function, got {positions!r}.")
        saved = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with model.nn.trace(**enc, remote=model.remote):
                # In layer order: nnsight reads each output once, in execution order.
                for layer in sorted(set(layer_ids) | set(groups)):
                    if layer in groups:
                        h = _edit_layer(model.layers[layer], groups[layer], enc["attention_mask"], prefill=True)
                    else:
                        h = _output_tensor(model.layers[layer].output)
                    if layer in layer_ids:
                        saved.append(nnsight.save(h[:, -1] if mask is None else h))
        rows = torch.as_tensor(idx)
        out = {}
        for layer, h in zip(layer_ids, saved):
            h = h.detach().to("cpu", torch.float32)
            if mask is not None:
                h = h[mask]
            if not torch.isfinite(h).all():
                raise FloatingPointError(f"Layer {layer} activations contain NaN/inf: check the model's dtype "
                                         "(float16 overflow?) and its inputs.")
            out[layer] = h
        if mask is not None:
            rows = rows[:, None].expand_as(mask)[mask]
        bar.update(len(idx))
        yield rows, out
    bar.close()


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
) -> Capture:
    """Capture layer outputs for ``samples`` (rows in the samples' order). See :func:`iter_capture`."""
    chunks = list(iter_capture(model, samples, layers, positions, batch_size=batch_size, formatted=formatted,
                               progress=progress, steers=steers))
    rows = torch.cat([r for r, _ in chunks])
    order = torch.argsort(rows, stable=True)
    acts = {layer: torch.cat([c[layer] for _, c in chunks])[order] for layer in chunks[0][1]}
    return Capture(acts, rows[order])


# --------------------------------------------------------------------------- editing
def _group(model: LoadedModel, steers: Sequence[Steer]) -> dict[int, list[Steer]]:
    by_layer: dict[int, list[Steer]] = {}
    for s in steers:
        (layer,) = model.check_layers(s.layer)
        by_layer.setdefault(layer, []).append(s)
    return dict(sorted(by_layer.items()))


def _edit_layer(envoy: Any, steers: list[Steer], mask: torch.Tensor, prefill: bool) -> torch.Tensor:
    """Apply ``steers`` to one layer's output inside a trace (one read, one write); returns the new state."""
    out = envoy.output
    h = _output_tensor(out)
    active = steers if prefill else [s for s in steers if s.positions == "all"]
    if not active:
        return h
    source = h[:, -1]
    # Shifts from steers that act at one position vs. along the whole prompt.
    spread = sum((s.fn(source) for s in active if s.positions != "last" or not prefill), torch.zeros_like(source))
    point = sum((s.fn(source) for s in active if s.positions == "last" and prefill), torch.zeros_like(source))
    if prefill:
        new = h + spread.to(h.dtype)[:, None, :] * mask[:, :, None].to(h.dtype)
        last = torch.zeros_like(h)
        last[:, -1] = point.to(h.dtype)
        new = new + last
    else:
        new = h + spread.to(h.dtype)[:, None, :]
    if isinstance(out, tuple):
        envoy.output = (new,) + tuple(out[1:])
    else:
        envoy.output = new
    return new


def _steers_for(model: LoadedModel, steers: Any) -> list[Steer]:
    return active_steers(model) + _as_steers(model, steers)


def forward(
    model: LoadedModel,
    samples: Sequence[Sample | tuple],
    *,
    steers: Any = None,
    batch_size: int = 16,
    formatted: bool = False,
    last_only: bool = True,
) -> torch.Tensor:
    """Logits for ``samples`` with ``steers`` (and any active ones) applied.

    Returns ``(n, vocab)`` next-token logits at the last prompt token
    (``last_only``), else a list of ``(T_i, vocab)`` per sample (pads removed).
    """
    samples = [as_sample(s) for s in samples]
    groups = _group(model, _steers_for(model, steers))
    results: dict[int, torch.Tensor] = {}
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted)
        mask = enc["attention_mask"]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with model.nn.trace(**enc, remote=model.remote):
                for layer, ss in groups.items():
                    _edit_layer(model.layers[layer], ss, mask, prefill=True)
                logits = nnsight.save(model.nn.output.logits)
        logits = logits.detach().float().cpu()
        for row, i in enumerate(idx):
            results[i] = logits[row, -1] if last_only else logits[row][mask[row].bool()]
    ordered = [results[i] for i in range(len(samples))]
    return torch.stack(ordered) if last_only else ordered


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
    **generate_kwargs: Any,
) -> list[str] | list[torch.Tensor]:
    """Greedy (unless told otherwise) generation with ``steers`` applied.

    Returns the decoded continuations (special tokens removed), or the new token
    ids per sample with ``return_ids=True``.
    """
    samples = [as_sample(s) for s in samples]
    groups = _group(model, _steers_for(model, steers))
    every_step = any(s.positions == "all" for ss in groups.values() for s in ss)
    generate_kwargs.setdefault("do_sample", False)
    pad_id = model.tokenizer.pad_token_id
    generate_kwargs.setdefault("pad_token_id", pad_id)
    results: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(samples), desc=progress if isinstance(progress, str) else "generate",
               disable=not progress, leave=False)
    for idx in _batches(samples, batch_size):
        enc = model.encode([samples[i] for i in idx], formatted=formatted)
        mask = enc["attention_mask"]
        width = enc["input_ids"].shape[1]
        with torch.no_grad(), warnings.catch_warnings():
            # nnsight warns when an open `tracer.iter[:]` ends with the generation: that is the design here.
            warnings.simplefilter("ignore")
            with model.nn.generate(max_new_tokens=max_new_tokens, remote=model.remote, **generate_kwargs) as tr:
                with tr.invoke(**enc):
                    if groups and every_step:
                        for step in tr.iter[:]:
                            for layer, ss in groups.items():
                                _edit_layer(model.layers[layer], ss, mask, prefill=step == 0)
                    elif groups:
                        for layer, ss in groups.items():
                            _edit_layer(model.layers[layer], ss, mask, prefill=True)
                with tr.invoke():
                    ids = nnsight.save(tr.result)
        ids = ids.detach().cpu()
        for row, i in enumerate(idx):
            new = ids[row, width:]
            results[i] = new
        bar.update(len(idx))
    bar.close()
    out = [results[i] for i in range(len(samples))]
    if return_ids:
        return out
    return model.decode(torch.nn.utils.rnn.pad_sequence(out, batch_first=True, padding_value=pad_id)
                        if out else torch.zeros(0, 0, dtype=torch.long))
