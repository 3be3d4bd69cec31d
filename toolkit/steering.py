"""Editing the residual stream: one implementation, three routes.

A :class:`Steer` adds ``fn(h_source)`` to the output of one decoder layer.
Positions: ``"last"`` (the last prompt token, prefill only), ``"prompt"`` (every
prompt token, the shift computed from the last prompt token; prefill only, the
KV cache carries it into decoding; the reference behaviour), ``"all"`` (as
``"prompt"``, and every generated token with the shift recomputed from that
token). Prompts must be **left padded**, so the last prompt token of every row
is at index ``-1`` (the toolkit's encoding and :class:`~toolkit.models.loading.LoadedModel`'s
tokenizer do this).

The same arithmetic (:func:`shifted`) is reached three ways, which give
identical generations:

* :func:`intervene` inside your own ``with model.nn.trace(...)`` or
  ``with model.nn.generate(...)`` block (nnsight edits, so it also runs through
  nnsight's remote execution);
* :func:`attached`: plain PyTorch forward hooks on the decoder layers while the
  block lasts, always removed in ``finally``: *any* forward or ``generate`` of
  the HF module or of its nnsight wrapper is steered;
* :func:`toolkit.tracing.generate` / ``forward`` / ``capture`` with
  ``steers=...``, built on :func:`intervene`.

Steers see the state in float32 (a gate ``h @ w`` computed in bf16 loses the
cancellation ``h_retain . w ~ 0`` that the null space exists for); the summed
shift is cast back to the layer's dtype, and everything created follows the
layer output's device. A :class:`GateLog` records, per layer and forward call,
the gate values of steers that have one (an Eraser's), so you can see *when*
the eraser fired during a generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .reads import masked_mean, needs_image_mask, needs_prompt, parse_reads, pool

__all__ = ["Steer", "POSITIONS", "GateLog", "as_steers", "group_by_layer", "shifted", "edit_envoy", "intervene",
           "attached", "steering", "active_steers", "prompt_mean", "image_token_mask", "prompt_texts",
           "decides_at_prefill"]

Positions = Literal["prompt", "last", "all"]
POSITIONS = ("prompt", "last", "all")


@dataclass(frozen=True)
class Steer:
    """Add ``fn(source)`` to the output of decoder layer ``layer``.

    ``fn`` maps a batch of float32 sources ``(B, f)`` (on the layer's device) to
    shifts ``(B, d)``; it sees the *unsteered* output of its layer (the input
    stream already carries the steers of earlier layers). Several steers on one
    layer see the same state and their shifts add. ``gate`` (optional) maps the
    same sources to the ``(B, r)`` gate values behind ``fn``, for :class:`GateLog`.

    ``reads`` (:mod:`toolkit.reads`): the source is the state ``h`` (B, d) for ``"last"``
    (the last prompt token, or the new token at a decoding step); for any other read,
    the pooled prompt features (B, k d) at prefill (``"last+mean"``, ``"image-max"``
    ...), and such a steer decides once per prompt (positions ``"prompt"`` or
    ``"last"``, or ``latch``).

    ``latch``: decide per row and hold the decision through the generation (CAST's
    latched condition, acting on the continuation as circuit breakers do). Needs
    ``weights`` (source -> (B, r) weights, 0 where the gate does not fire) and
    ``from_weights`` ((B, r) weights, (B, d) state -> (B, d) shift). At prefill the
    row's weights steer as ``positions`` says; at every decoding step the new token
    is shifted by the row's latched weights, which for a ``"last"`` read are updated
    as ``max(latched, weights(new token))``: once on, on for the rest of the row's
    generation. A row whose weights stay 0 gets no shift at all (its tokens are
    bit-identical to unsteered ones).

    ``named`` (optional, a name gate, :class:`toolkit.names.NameKeys`'s ``matches``): maps the batch's prompt
    texts to one bool per row; at prefill a named row gets weight 1 on every column, whatever the state gate
    says (an OR of the two gates). Needs ``weights`` and ``from_weights``; the route passes the texts
    (decoded from the prompt's ids). A named row's decision is carried into decoding by ``latch`` only.
    """

    layer: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    positions: Positions = "prompt"
    gate: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    reads: str = "last"
    latch: bool = False
    weights: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    from_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    named: Callable[[Sequence[str]], Sequence[bool]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}.")
        parse_reads(self.reads)
        if needs_prompt(self.reads) and self.positions == "all" and not self.latch:
            raise ValueError(f"A steer that reads {self.reads!r} decides at prefill: positions 'prompt' or "
                             "'last', not 'all' (or latch=True, which carries the decision into decoding).")
        if self.latch and (self.weights is None or self.from_weights is None):
            raise ValueError("A latching steer needs weights= and from_weights= (an Eraser builds both).")
        if self.named is not None and (self.weights is None or self.from_weights is None):
            raise ValueError("A steer with a name gate needs weights= and from_weights= (an Eraser builds both).")


@dataclass
class GateLog:
    """Gate values recorded while steering: one record per (forward call, steered layer).

    ``records[i]``: ``{"call": forward-call index (0 = prefill of the first batch),
    "prefill": bool, "layer": int, "gates": (B, r) float32 CPU tensor}`` (gate of
    the state the shift was computed from: the last prompt token at prefill, the
    new token at each decoding step).
    """

    records: list[dict] = field(default_factory=list)
    _calls: int = 0

    def add(self, layer: int, prefill: bool, gates: torch.Tensor) -> None:
        self.records.append({"call": self._calls, "prefill": prefill, "layer": layer,
                             "gates": gates.detach().float().cpu()})

    def next_call(self) -> None:
        self._calls += 1

    def per_step(self, layer: int, row: int = 0, column: int = 0) -> list[float]:
        """The gate of batch row ``row`` at ``layer``, one value per recorded call (prefill first)."""
        return [float(r["gates"][row, column]) for r in self.records if r["layer"] == layer]

    def frame(self):
        """A long DataFrame: call, prefill, layer, row, gate (first gate column)."""
        import pandas as pd

        rows = [{"call": r["call"], "prefill": r["prefill"], "layer": r["layer"], "row": i,
                 "gate": float(g[0])} for r in self.records for i, g in enumerate(r["gates"])]
        return pd.DataFrame(rows, columns=["call", "prefill", "layer", "row", "gate"])


def decides_at_prefill(steer: Steer) -> bool:
    """Whether ``steer`` touches a row only if it shifts that row at prefill: true unless it acts at decoding
    steps from the new token's state (``positions="all"`` without a latch, or a latch on the ``"last"`` read,
    which can fire later). A row such a steer leaves unshifted at prefill generates exactly as unsteered: the
    other steers are inactive after prefill, and a latch holds the row's zero weights (an exact zero shift)."""
    if steer.latch:
        return steer.reads != "last"
    return steer.positions != "all"


def as_steers(model: Any, steers: Any) -> list[Steer]:
    """Steers from a Steer, an object with ``.steers(model)`` (an Eraser), or a list of either."""
    if steers is None:
        return []
    if hasattr(steers, "steers"):
        return list(steers.steers(model))
    if isinstance(steers, Steer):
        return [steers]
    out: list[Steer] = []
    for s in steers:
        out.extend(as_steers(model, s))
    return out


def group_by_layer(model: Any, steers: Sequence[Steer]) -> dict[int, list[Steer]]:
    """``{layer: steers}`` in layer order (layers normalised and range-checked)."""
    by_layer: dict[int, list[Steer]] = {}
    for s in steers:
        (layer,) = model.check_layers(s.layer)
        by_layer.setdefault(layer, []).append(s)
    return dict(sorted(by_layer.items()))


def prompt_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``h`` (B, T, d) over the prompt's real tokens, float32 (B, d); all tokens without a mask."""
    return masked_mean(h, mask)


def _shift(steer: Steer, source: torch.Tensor, check: bool = True) -> torch.Tensor:
    """``steer.fn(source)`` checked (:func:`_checked`) against the state's shape (B, d)."""
    width = source.shape[-1] // len(parse_reads(steer.reads))
    try:
        shift = steer.fn(source)
    except RuntimeError as err:
        raise RuntimeError(f"The steer at layer {steer.layer} failed on a {tuple(source.shape)} "
                           f"{source.dtype} state on {source.device}: {err}. Keep the steer's tensors on the "
                           "state's device (h.device), or use an Eraser, which moves with the model.") from None
    return _checked(shift, steer, source.new_empty(*source.shape[:-1], width), check)


def _checked(shift: Any, steer: Steer, state: torch.Tensor, check: bool) -> torch.Tensor:
    """The shift of a steer: same shape as the state, finite (when ``check``: a device sync, so only at
    prefill), on the state's device, float32."""
    if not isinstance(shift, torch.Tensor) or shift.shape != state.shape:
        got = tuple(shift.shape) if isinstance(shift, torch.Tensor) else type(shift).__name__
        raise ValueError(f"The steer at layer {steer.layer} returned a shift of shape {got}; it must map the "
                         f"(batch, d) states {tuple(state.shape)} to shifts of the same shape.")
    if check and not torch.isfinite(shift).all():
        raise FloatingPointError(f"The steer at layer {steer.layer} returned NaN/inf shifts; the model would "
                                 "generate nothing meaningful. Check its strength and vectors.")
    return shift.to(state.device, torch.float32)


def _latched_shift(steer: Steer, weights: torch.Tensor, state: torch.Tensor, check: bool) -> torch.Tensor:
    """``from_weights`` of the latched weights, exactly 0 on rows that have not fired."""
    fired = (weights != 0).any(-1, keepdim=True)
    shift = _checked(steer.from_weights(weights, state), steer, state, check)
    return torch.where(fired, shift, torch.zeros_like(shift))


def shifted(h: torch.Tensor, steers: Sequence[Steer], *, prefill: bool, mask: torch.Tensor | None = None,
            log: GateLog | None = None, image_mask: torch.Tensor | None = None,
            latches: dict | None = None, texts: Sequence[str] | None = None) -> torch.Tensor:
    """``h`` (B, T, d) with ``steers`` (all on one layer) added; the arithmetic every route shares.

    ``prefill``: the call that reads the prompt (``"prompt"``/``"all"`` steers shift
    every prompt token, ``"last"`` steers the last one); otherwise a decoding step
    (``"all"`` steers act on the new token, latching steers by their latched weights).
    ``mask`` (B, T): 1 for real prompt tokens, 0 for pads (pads are never attended to,
    so ``None``, shifting them too, gives the same outputs for the real tokens).
    ``image_mask`` (B, T): 1 at image tokens (needed at prefill by gates reading
    image parts; all 0 for a text-only batch). ``latches``: the route's per-generation
    store of latched weights (a dict, emptied by the route at each prefill). ``texts``: the B prompts' text,
    needed at prefill by steers with a name gate (``Steer.named``).
    """
    if not prefill:
        active = [s for s in steers if s.positions == "all" or s.latch]
    else:
        active = list(steers)
    if not active:
        return h
    last = h[:, -1].float()
    sources: dict[str, torch.Tensor] = {}

    def source(steer: Steer) -> torch.Tensor:  # each read pooled once per call, only if a steer reads it
        if steer.reads == "last" or not prefill:
            return last
        if steer.reads not in sources:
            if mask is None and h.shape[0] > 1:
                raise ValueError(f"A gate that reads {steer.reads!r} needs the batch's attention mask (left padding "
                                 "would enter the pooling): intervene(..., inputs=enc), or call the model with "
                                 "attention_mask=.")
            if needs_image_mask(steer.reads) and image_mask is None:
                raise ValueError(f"A gate that reads {steer.reads!r} needs to know the image tokens: "
                                 "intervene(..., inputs=enc) (or image_mask=model.image_token_mask(input_ids)).")
            sources[steer.reads] = pool(h, steer.reads, mask, image_mask)
        return sources[steer.reads]

    def with_names(steer: Steer, w: torch.Tensor) -> torch.Tensor:  # the name gate OR the state gate, at prefill
        if steer.named is None or not prefill:
            return w
        if texts is None or len(texts) != h.shape[0]:
            raise ValueError("This eraser's name gate reads the prompt's text: intervene(..., inputs=enc) (the "
                             "encoding with input_ids), or call the model with input_ids=.")
        named = torch.tensor([bool(v) for v in steer.named(texts)], device=w.device)[:, None]
        return torch.where(named, torch.maximum(w, torch.ones_like(w)), w)

    zero = torch.zeros_like(last)
    spread, point = zero, zero  # shifts along the whole prompt (or the new token) vs at the last prompt token
    for s in active:
        if s.latch:
            key = id(s)
            if prefill:
                w = with_names(s, s.weights(source(s)).float())
            else:
                w = latches.get(key) if latches is not None else None
                if w is None:
                    raise ValueError("A latching steer reached a decoding step without its prefill; the route "
                                     "must pass the same latches dict through a generation.")
                if s.reads == "last":
                    w = torch.maximum(w, s.weights(last).float())
            if latches is not None:
                latches[key] = w
            if log is not None:
                log.add(s.layer, prefill, w)
            shift = _latched_shift(s, w, last, check=prefill)
        else:
            src = source(s)
            if log is not None and s.gate is not None:
                log.add(s.layer, prefill, with_names(s, s.gate(src).float()))
            if s.weights is not None and s.from_weights is not None:  # the gate once, the shift from the state
                shift = _checked(s.from_weights(with_names(s, s.weights(src).float()), last), s, last, check=prefill)
            else:
                shift = _shift(s, src, check=prefill)
        if prefill and s.positions == "last":
            point = point + shift
        else:
            spread = spread + shift
    if not prefill:
        return h + spread.to(h.dtype)[:, None, :]
    weights = torch.ones(h.shape[:2], device=h.device) if mask is None else mask.to(h.device, torch.float32)
    new = h + (spread[:, None, :] * weights[:, :, None]).to(h.dtype)
    at_last = torch.zeros_like(h)
    at_last[:, -1] = point.to(h.dtype)
    return new + at_last


def _output_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def edit_envoy(envoy: Any, steers: list[Steer], *, prefill: bool, mask: torch.Tensor | None = None,
               log: GateLog | None = None, image_mask: torch.Tensor | None = None,
               latches: dict | None = None, texts: Sequence[str] | None = None) -> torch.Tensor:
    """Inside an nnsight trace: replace one layer's output by its steered version (one read, one write)."""
    out = envoy.output
    new = shifted(_output_tensor(out), steers, prefill=prefill, mask=mask, log=log, image_mask=image_mask,
                  latches=latches, texts=texts)
    if isinstance(out, tuple):
        envoy.output = (new,) + tuple(out[1:])
    else:
        envoy.output = new
    return new


def image_token_mask(model: Any, input_ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) bool, True at the model's image tokens (all False for a text-only family); None without ids."""
    if input_ids is None:
        return None
    return model.image_token_mask(input_ids)


def prompt_texts(model: Any, steers: Sequence[Steer], input_ids: torch.Tensor | None) -> list[str] | None:
    """The prompts' text (decoded, special tokens dropped) when a steer has a name gate; else None (no decoding)."""
    if input_ids is None or not any(s.named is not None for s in steers):
        return None
    return model.decode(input_ids)


def intervene(model: Any, steers: Any, *, steps: int | None = None, mask: torch.Tensor | None = None,
              generating: bool = True, log: GateLog | None = None, inputs: dict | None = None,
              image_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Apply ``steers`` inside your own nnsight block (the current invoke).

    Call it inside ``with model.nn.trace(...)`` (a forward: ``generating=False``)
    or inside ``with model.nn.generate(...)`` (or one of its ``tracer.invoke``
    blocks). Steers with ``positions="all"`` or ``latch`` also edit every generated
    token: that loops over nnsight's iterations, so with ``steps=None`` (every step)
    this must be the **last statement** of its invoke, as with any open
    ``tracer.iter[:]``; give ``steps=max_new_tokens`` to run code after it.
    Reads of layers you want to see steered must come after this call, in layer order.

    ``inputs``: the batch's encoding (``model.encode(...)``), from which the attention
    mask and the image tokens are read: gates that pool the prompt (``"last+mean"``,
    ``"image-max"`` ...) need them when a batch holds more than one row, or images.
    (``mask`` / ``image_mask`` give them one by one.)

    Returns ``{layer: steered output at prefill}`` for the steered layers.
    """
    from nnsight.intervention.iterator import Iterations

    if inputs is not None:
        mask = inputs.get("attention_mask", mask) if mask is None else mask
        if image_mask is None:
            image_mask = image_token_mask(model, inputs.get("input_ids"))
    groups = group_by_layer(model, as_steers(model, steers))
    flat = [s for ss in groups.values() for s in ss]
    texts = prompt_texts(model, flat, inputs.get("input_ids") if inputs is not None else None)
    every_step = generating and any(s.positions == "all" or s.latch for s in flat)
    outputs: dict[int, torch.Tensor] = {}
    latches: dict = {}
    if not every_step:
        for layer, ss in groups.items():
            outputs[layer] = edit_envoy(model.layers[layer], ss, prefill=True, mask=mask, log=log,
                                        image_mask=image_mask, latches=latches, texts=texts)
        return outputs
    for step in (Iterations()[:] if steps is None else Iterations()[:steps]):
        for layer, ss in groups.items():
            new = edit_envoy(model.layers[layer], ss, prefill=step == 0, mask=mask, log=log,
                             image_mask=image_mask, latches=latches, texts=texts)
            if step == 0:
                outputs[layer] = new
        if log is not None:
            log.next_call()
    return outputs


def _cache_length(kwargs: dict) -> int:
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


# Steers currently attached to each model, for inspection (active_steers); application is by hooks only.
_ATTACHED: dict[int, list[Steer]] = {}


@contextlib.contextmanager
def attached(model: Any, steers: Any, *, record_gates: bool = False) -> Iterator[GateLog | None]:
    """Within the block, every forward of ``model`` applies ``steers``, through plain forward hooks.

    Works for the toolkit's calls, ``model.module(...)``, ``model.module.generate(...)``
    and your own ``model.nn`` traces alike. A forward pre-hook on the top module
    tells prefill (empty KV cache: the prompt, with its attention mask) from
    decoding steps. The hooks are removed in ``finally``, whatever happens, so the
    model is exactly the original after the block. Yields a :class:`GateLog` with
    ``record_gates=True``, else ``None``.
    """
    groups = group_by_layer(model, as_steers(model, steers))
    log = GateLog() if record_gates else None
    state: dict[str, Any] = {"prefill": True, "mask": None, "image_mask": None, "calls": 0, "latches": {},
                             "texts": None}
    flat = [s for ss in groups.values() for s in ss]

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if state["calls"] and log is not None:
            log.next_call()
        state["calls"] += 1
        state["prefill"] = _cache_length(kwargs) == 0
        mask = kwargs.get("attention_mask")
        state["mask"] = mask if (state["prefill"] and isinstance(mask, torch.Tensor) and mask.ndim == 2) else None
        if state["prefill"]:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            state["image_mask"] = image_token_mask(model, ids) if isinstance(ids, torch.Tensor) else None
            state["texts"] = prompt_texts(model, flat, ids if isinstance(ids, torch.Tensor) else None)
            state["latches"] = {}  # a new prompt: every row undecided

    def layer_hook(ss: list[Steer]) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, out: Any) -> Any:
            h = _output_tensor(out)
            mask = state["mask"] if state["mask"] is not None and state["mask"].shape == h.shape[:2] else None
            image = state["image_mask"]
            image = image if image is not None and image.shape == h.shape[:2] else None
            texts = state["texts"] if state["texts"] is not None and len(state["texts"]) == h.shape[0] else None
            new = shifted(h, ss, prefill=state["prefill"], mask=mask, log=log, image_mask=image,
                          latches=state["latches"], texts=texts)
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
        return hook

    handles = []
    registry = _ATTACHED.setdefault(id(model), [])
    try:
        handles.append(model.module.register_forward_pre_hook(before, with_kwargs=True))
        for layer, ss in groups.items():
            handles.append(model.layer_modules[layer].register_forward_hook(layer_hook(ss)))
        registry.extend(flat)
        yield log
    finally:
        for handle in handles:
            handle.remove()
        for s in flat:
            if s in registry:
                registry.remove(s)
        if not registry:
            _ATTACHED.pop(id(model), None)


steering = attached  # the name earlier versions used


def active_steers(model: Any) -> list[Steer]:
    """Steers attached to ``model`` by enclosing :func:`attached` blocks (for inspection)."""
    return list(_ATTACHED.get(id(model), []))
