"""The input-aware map and the Eraser artifact.

Fit (per steered layer ``l``, DESIGN.md section 1.3). The reference solves
``min_D ||H_f P D - 1 d^T||^2 + gamma ||P D||^2`` and steers with
``h + lam * h @ (P D)``. Every row has the same target ``d``, so the solution is
exactly rank one: with ``Z = H_f Q``

    w = Q (Z^T Z + gamma I_k)^{-1} Z^T 1,        P D = w d^T,

and the shift is ``lam * (h . w) * d``: a scalar gate along ``w`` (inside the
retain null space, so ~0 on retain inputs) times the erasure direction. Only
``w`` and ``d`` are stored: 2d numbers per layer instead of a d x d matrix
(32 layers x 4096: 1 MiB in float32 against 2 GiB). ``Z^T Z = Q^T (H_f^T H_f) Q``
and ``Z^T 1 = Q^T H_f^T 1``, so the fit streams over forget activations too.

Per-sample targets ``T`` (n x d) generalise this to ``Q (Z^T Z + gamma I)^{-1}
Z^T T``, of rank <= rank(T); :func:`solve_map` returns it factored as
``gates (d x r)`` and ``directions (r x d)``.

Differences from the reference code, on purpose: the direction and the map are
read at the same place (the output of block ``l``, see :mod:`toolkit.tracing`),
not at ``hidden_states[l]`` (the block's input) for one and elsewhere for the
other; and the map is never formed densely.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .gates import Gate, GateStack, LinearGate, gate_from_parts
from .names import NameKeys
from .nullspace import NullSpace
from .reads import needs_prompt, parse_reads
from .steering import POSITIONS, GateLog, Steer, attached, intervene

__all__ = ["solve_map", "dead_zone", "Eraser", "EraserLayer", "MismatchError", "EDITS"]

# How the gated direction enters the state: "add" (the paper: h + lam * g * d) or "rotate" (GUARD-IT's
# norm-preserving form: the same sum rescaled to |h|, so a strong edit turns the state, never inflates it).
EDITS = ("add", "rotate")


def dead_zone(gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """``max(0, g - t) / (1 - t)``: gates below ``t`` (what unseen retain inputs show) steer nothing,
    a gate of 1 (a fitted forget row) still steers fully. ``t = 0`` keeps the gate as it is
    (the paper's linear map, negative gates included)."""
    if not threshold:
        return gate
    return torch.clamp(gate - threshold, min=0.0) / (1.0 - threshold)


def solve_map(forget_gram: torch.Tensor, forget_sum: torch.Tensor | None, space: NullSpace, gamma: float,
              targets_cross: torch.Tensor | None = None, retain_gram: torch.Tensor | None = None,
              retain_weight: float = 0.0) -> torch.Tensor:
    """Gate factor(s) of the closed-form map.

    Args:
        forget_gram: ``H_f^T H_f`` (d x d).
        forget_sum: ``H_f^T 1`` (d,), for the shared target (rank one).
        space: the retain null space (``Q``: d x k).
        gamma: ridge strength (> 0; the reference: 0.1 LLaVA, 1.0 Qwen).
        targets_cross: ``H_f^T T`` (d x r) for per-sample targets ``T = U V`` given
            through their left factor; overrides ``forget_sum``.
        retain_gram, retain_weight: our extension (``retain_weight = 0``, the
            default, is the reference). With ``a = retain_weight``, the retain rows
            join the least squares with target 0: ``+ a ||H_r P D||^2``, i.e.
            ``Z^T Z`` becomes ``Z^T Z + a Q^T H_r^T H_r Q``. The projector keeps the
            map out of the directions retain inputs use most; the penalty also
            pushes the gate to 0 on the retain rows' small null-space components,
            which the projector alone leaves free (see the gate probe). Pass
            ``retain_weight`` already scaled (e.g. ``alpha * n_f / n_r``).

    Returns:
        ``(d, r)`` gates ``Q (Q^T H_f^T H_f Q + a Q^T H_r^T H_r Q + gamma I)^{-1} Q^T H_f^T U``;
        for the shared target, ``(d, 1)`` = ``w``.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}.")
    if retain_weight < 0:
        raise ValueError(f"retain_weight must be >= 0, got {retain_weight}.")
    q = space.basis.to(torch.float64)
    zz = q.T @ forget_gram.to(q.device, torch.float64) @ q
    if retain_weight:
        if retain_gram is None:
            raise ValueError("retain_weight > 0 needs retain_gram (H_r^T H_r).")
        zz = zz + retain_weight * (q.T @ retain_gram.to(q.device, torch.float64) @ q)
    rhs = q.T @ (targets_cross if targets_cross is not None else forget_sum[:, None]).to(q.device, torch.float64)
    system = zz + gamma * torch.eye(q.shape[1], dtype=torch.float64, device=q.device)
    return q @ torch.linalg.solve(system, rhs)


class MismatchError(ValueError):
    """An eraser applied to a model it was not fitted on."""


@dataclass(frozen=True)
class EraserLayer:
    """One steered layer: shift = lam * gate(x) @ directions.

    ``gates``: the paper's map as a (d, r) tensor (the linear gate ``h @ gates``), or any
    :class:`~toolkit.gates.Gate` (a membership gate: logistic, prototype, ...) giving (B, r)
    weights; ``directions``: (r, d). r = 1 for the shared target.
    """

    layer: int
    gates: torch.Tensor | Gate
    directions: torch.Tensor

    @property
    def gate_object(self) -> Gate:
        """The gate as a :class:`~toolkit.gates.Gate` (a tensor is the linear gate)."""
        return LinearGate(self.gates) if isinstance(self.gates, torch.Tensor) else self.gates

    @property
    def kind(self) -> str:
        return self.gate_object.kind

    @property
    def reads(self) -> str:
        """What the gate reads (:mod:`toolkit.reads`): ``"last"`` (the state), or pooled prompt parts
        (``"last+mean"``, ``"image-max"`` ...; k d features)."""
        return self.gate_object.reads

    @property
    def width(self) -> int:
        return self.gate_object.width

    @property
    def rank(self) -> int:
        return self.gate_object.rank

    def weights(self, x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
        """The gate's (B, r) weights in float32: the dead zone ``threshold`` applies to linear columns only
        (a membership gate has its own calibrated threshold)."""
        gate = self.gate_object
        parts = gate.parts if isinstance(gate, GateStack) else (gate,)
        cols = []
        for part in parts:
            w = part(x)
            cols.append(dead_zone(w, threshold) if threshold and part.kind == "linear" else w)
        return cols[0] if len(cols) == 1 else torch.cat(cols, -1)

    def shift(self, x: torch.Tensor, lam: float, threshold: float = 0.0, edit: str = "add",
              state: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, f) -> (B, d)`` in ``x``'s dtype; ``x`` is what the gate reads (:mod:`toolkit.reads`):
        the state (f = d) or pooled prompt features (f = k d). O(r d) per row for the linear gate.

        The gate is computed in float32 whatever ``x``'s dtype: in bf16 the rounding
        of ``w`` (8 bits of mantissa) destroys the cancellation ``h_retain . w ~ 0``.
        ``edit="rotate"`` needs the state ``h`` (B, d) (``state``; by default the read's
        ``last`` part): ``|h| (h + delta) / |h + delta| - h`` instead of ``delta``.
        """
        if state is None and edit == "rotate":
            if parse_reads(self.reads)[0] != "last":
                raise ValueError(f"A rotating edit needs the state; this gate reads {self.reads!r}: pass state=.")
            state = x[..., :self.directions.shape[1]]
        return self.shift_from(self.weights(x, threshold), state, lam, edit).to(x.dtype)

    def shift_from(self, weights: torch.Tensor, state: torch.Tensor | None, lam: float,
                   edit: str = "add") -> torch.Tensor:
        """The float32 shift ``lam * weights @ directions`` (B, d) for gate weights ``(B, r)``; rotated
        onto the state's norm for ``edit="rotate"`` (``state``: (B, d))."""
        delta = lam * (weights.float() @ self.directions.to(weights.device, torch.float32))
        if edit == "rotate":
            state = state.float()
            target = state + delta
            delta = target * (state.norm(dim=-1, keepdim=True)
                              / target.norm(dim=-1, keepdim=True).clamp_min(1e-12)) - state
        return delta

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Gate values in float32: ``(..., r)`` (``h @ gates`` for the linear gate, before any dead zone)."""
        if isinstance(self.gates, torch.Tensor):
            return x.float() @ self.gates.to(x.device, torch.float32)
        flat = x.reshape(-1, x.shape[-1])
        return self.gates(flat).reshape(*x.shape[:-1], -1)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "EraserLayer":
        gates = self.gates.to(device, dtype or self.gates.dtype) if isinstance(self.gates, torch.Tensor) \
            else self.gates.to(device, dtype)
        return EraserLayer(self.layer, gates, self.directions.to(device, dtype or self.directions.dtype))


@dataclass(frozen=True)
class Eraser:
    """An immutable, callable MLLMEraser: per-layer rank-r maps plus how to apply them.

    Memory: ``2 r d`` numbers per layer. Apply it inside your own nnsight block
    (``eraser.intervene(model)``), to every forward while a block lasts
    (``with eraser.attached(model):``), or through the toolkit's calls
    (``tracing.generate(model, samples, steers=eraser)``).
    Several erasers passed together compose: their shifts (gates) add.

    Attributes:
        layers: the steered layers, in order.
        lam: steering strength (positive: toward refusal).
        positions: ``"prompt"`` (reference), ``"last"`` or ``"all"``.
        threshold: gate dead zone in [0, 1) (:func:`dead_zone`) for linear gates; 0 is the paper's map.
        edit: ``"add"`` (the paper) or ``"rotate"`` (norm-preserving, :data:`EDITS`).
        latch: hold each row's gate decision through its generation (membership gates only): once the
            gate fires for a row, every token generated after it is steered too; a ``"last"`` gate is
            also scored on each generated token (:class:`~toolkit.steering.Steer`). A row that
            never fires is generated exactly as without the eraser.
        fingerprint: identity of the model it was fitted on.
        settings: the fit settings and diagnostics (JSON-serialisable).
        names: a name gate (:class:`~toolkit.names.NameKeys`), or None: a prompt whose text names a forget
            person is steered at full weight (1) whatever the state gate says, an OR of the two. It decides at
            prefill (carried into decoding by ``latch``); the file holds salted digests, not the names.
    """

    maps: tuple[EraserLayer, ...]
    lam: float = 1.0
    positions: str = "prompt"
    fingerprint: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    threshold: float = 0.0
    edit: str = "add"
    latch: bool = False
    names: NameKeys | None = None

    def __post_init__(self) -> None:
        if self.names is not None and not isinstance(self.names, NameKeys):
            raise ValueError("names must be NameKeys (toolkit.names.NameKeys.from_names([...])) or None.")
        if self.edit not in EDITS:
            raise ValueError(f"The eraser's edit must be one of {EDITS}, got {self.edit!r}.")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}.")
        try:
            finite = math.isfinite(float(self.lam))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ValueError(f"The eraser's strength lam must be a finite number, got {self.lam!r}.")
        try:
            ok = 0.0 <= float(self.threshold) < 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"The eraser's gate threshold must be a number in [0, 1), got {self.threshold!r}.")
        for m in self.maps:
            gate = m.gate_object
            if not (gate.finite() and torch.isfinite(m.directions).all()):
                raise ValueError(f"The map of layer {m.layer} contains NaN/inf: refit the eraser.")
            if isinstance(m.gates, torch.Tensor) and m.gates.ndim != 2:
                raise ValueError(f"The map of layer {m.layer} has gates {tuple(m.gates.shape)}; expected (d, r).")
            if m.directions.ndim != 2 or gate.rank != m.directions.shape[0] or gate.width != m.directions.shape[1]:
                shape = tuple(m.gates.shape) if isinstance(m.gates, torch.Tensor) else f"{gate.kind} (d={gate.width}, r={gate.rank})"
                raise ValueError(f"The map of layer {m.layer} has gates {shape} and directions "
                                 f"{tuple(m.directions.shape)}; expected (d, r) and (r, d).")
            if self.latch and any(p.kind == "linear" for p in (gate.parts if isinstance(gate, GateStack) else (gate,))):
                raise ValueError(f"latch=True holds a membership gate's decision; the gate of layer {m.layer} is "
                                 f"{gate.kind}, whose weight is never exactly 0. Use a membership gate or latch=False.")
            if needs_prompt(gate.reads) and self.positions == "all" and not self.latch:
                raise ValueError(f"The {gate.kind} gate of layer {m.layer} reads {gate.reads!r}, so it "
                                 "decides once per prompt: use positions='prompt' or 'last', not 'all'.")
        layers = [m.layer for m in self.maps]
        if len(set(layers)) != len(layers):
            raise ValueError(f"An eraser steers each layer once; got layers {layers}.")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(m.layer for m in self.maps)

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.maps)

    @property
    def gate_kinds(self) -> tuple[str, ...]:
        """The gate kind of each steered layer (``"linear"`` for the paper's map)."""
        return tuple(m.kind for m in self.maps)

    def layer_map(self, layer: int) -> EraserLayer:
        for m in self.maps:
            if m.layer == layer:
                return m
        raise KeyError(f"This eraser steers layers {list(self.layers)}, not {layer}.")

    def __call__(self, layer: int, h: torch.Tensor, prompt_mean: torch.Tensor | None = None,
                 features: torch.Tensor | None = None) -> torch.Tensor:
        """The steered state ``h + lam * g(x) d`` for layer ``layer``; ``h``: (B, d). A gate reading more
        than the state needs ``features`` (B, k d), :func:`toolkit.reads.pool` of the prompt's states at
        that layer (for ``"last+mean"``, ``prompt_mean`` (B, d) will do)."""
        m = self.layer_map(layer)
        if m.reads == "last":
            x = h
        elif features is not None:
            x = features
        elif m.reads == "last+mean":
            x = torch.cat([h, _need_mean(prompt_mean, m)], -1)
        else:
            raise ValueError(f"The {m.kind} gate of layer {layer} reads {m.reads!r}: pass features="
                             "toolkit.reads.pool(states, reads, mask, image_mask).")
        return h + m.shift(x, self.lam, self.threshold, self.edit, state=h)

    def with_options(self, *, lam: float | None = None, positions: str | None = None,
                     layers: Sequence[int] | None = None, threshold: float | None = None,
                     edit: str | None = None, latch: bool | None = None) -> "Eraser":
        """A copy with another strength, position mode, gate threshold, edit, latch or subset of layers."""
        maps = self.maps if layers is None else tuple(self.layer_map(l) for l in layers)
        return replace(self, maps=maps, lam=self.lam if lam is None else lam,
                       positions=self.positions if positions is None else positions,
                       threshold=self.threshold if threshold is None else threshold,
                       edit=self.edit if edit is None else edit, latch=self.latch if latch is None else latch)

    def with_names(self, names: NameKeys | Sequence[str] | None) -> "Eraser":
        """A copy with a name gate for ``names`` (people's names, or :class:`~toolkit.names.NameKeys`); None
        removes it."""
        if names is not None and not isinstance(names, NameKeys):
            names = NameKeys.from_names(names)
        return replace(self, names=names)

    def with_direction(self, directions: Mapping[int, torch.Tensor]) -> "Eraser":
        """A copy that steers along other directions with the same gates: ``{layer: (d,) or (r, d)}``
        for every steered layer (e.g. another contrastive variant's :class:`~toolkit.direction.Direction`
        ``.vectors``; the paper's map does not depend on the direction, so only the shift changes)."""
        missing = [l for l in self.layers if l not in directions]
        if missing:
            raise ValueError(f"No direction for steered layers {missing}; give one for each of {list(self.layers)}.")
        maps = []
        for m in self.maps:
            d = directions[m.layer].detach().to("cpu", torch.float32)
            d = d[None] if d.ndim == 1 else d
            if d.shape != m.directions.shape:
                raise ValueError(f"The direction for layer {m.layer} has shape {tuple(d.shape)}; this eraser's is "
                                 f"{tuple(m.directions.shape)}.")
            maps.append(replace(m, directions=d))
        return replace(self, maps=tuple(maps))

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Eraser":
        """A copy with every factor on ``device`` (and ``dtype``; keep float32 for the gate's sake)."""
        return replace(self, maps=tuple(m.to(device, dtype) for m in self.maps))

    def check_model(self, model: Any) -> None:
        """Refuse a model that is not the one this eraser was fitted on."""
        if not self.fingerprint:
            return
        have = model.fingerprint()
        diffs = [f"{k}: eraser {self.fingerprint.get(k)!r} vs model {have.get(k)!r}"
                 for k in ("architecture", "num_layers", "hidden_size", "weights_sha256")
                 if self.fingerprint.get(k) != have.get(k)]
        if diffs:
            raise MismatchError("This eraser was fitted on a different model (" + "; ".join(diffs) + "). "
                                "Fit a new eraser for this model (`mllmeraser fit`), or load the model it was "
                                "fitted on.")

    def steers(self, model: Any) -> list[Steer]:
        """The tracing steers that apply this eraser to ``model`` (checked against its fingerprint)."""
        self.check_model(model)
        model.check_layers(list(self.layers))
        out = []
        for m in self.maps:
            if m.width != model.hidden_size:
                raise MismatchError(f"Layer {m.layer} map has width {m.width}, the model {model.hidden_size}.")
            # Moved once, in float32, to the device of the layer it steers (a device_map can spread
            # layers over GPUs); the shift then creates nothing on another device.
            moved = m.to(model.layer_device(m.layer), torch.float32)
            # weights / from_weights: the route computes the gate once and shifts from the layer's own
            # state (a rotation needs it, whatever the gate reads), and a latch holds the weights.
            out.append(Steer(m.layer, lambda x, m=moved: m.shift(x, self.lam, self.threshold, self.edit),
                             self.positions, gate=moved.gate, reads=m.reads, latch=self.latch,
                             weights=lambda x, m=moved: m.weights(x, self.threshold),
                             from_weights=lambda w, h, m=moved: m.shift_from(w, h, self.lam, self.edit),
                             named=self.names.matches if self.names is not None else None))
        return out

    # -- the three routes (toolkit.steering) ---------------------------------------
    def intervene(self, model: Any, *, steps: int | None = None, generating: bool = True,
                  log: GateLog | None = None, mask: torch.Tensor | None = None,
                  inputs: dict | None = None) -> dict[int, torch.Tensor]:
        """Apply this eraser inside your own ``with model.nn.trace(...)`` / ``model.nn.generate(...)`` block.

        See :func:`toolkit.steering.intervene` (with ``positions="all"`` in a
        generate, call it last in its invoke, or pass ``steps=max_new_tokens``;
        in a ``trace``, pass ``generating=False``). ``inputs``: the batch's encoding
        (``enc = model.encode(...)``, the dict you trace with), from which gates that pool
        the prompt (``"last+mean"``, ``"image-max"`` ...) read the attention mask and the
        image tokens; ``mask`` alone (the attention mask) serves gates that read no image part.
        """
        return intervene(model, self, steps=steps, generating=generating, log=log, mask=mask, inputs=inputs)

    def attached(self, model: Any, *, record_gates: bool = False):
        """``with eraser.attached(model) as log:`` every forward/generate of ``model`` (its HF module or
        its nnsight wrapper) is steered by hooks, removed on exit. ``log``: a GateLog if ``record_gates``."""
        return attached(model, self, record_gates=record_gates)

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Safetensors with the factors and JSON metadata (fingerprint, settings, version)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        gate_meta = {}
        for m in self.maps:
            if isinstance(m.gates, torch.Tensor):
                tensors[f"layer{m.layer}.gates"] = m.gates.detach().cpu().contiguous()
            else:
                gate_meta[str(m.layer)] = m.gates.meta()
                for k, v in m.gates.tensors().items():
                    tensors[f"layer{m.layer}.gate.{k}"] = v.detach().cpu().contiguous()
            tensors[f"layer{m.layer}.directions"] = m.directions.detach().cpu().contiguous()
        meta = {"format": "mllmeraser.eraser/1", "toolkit_version": __version__, "lam": json.dumps(self.lam),
                "positions": self.positions, "layers": json.dumps(list(self.layers)),
                "threshold": json.dumps(self.threshold), "edit": self.edit, "gates": json.dumps(gate_meta),
                "latch": json.dumps(self.latch),
                **({"names": json.dumps(self.names.to_json())} if self.names is not None else {}),
                "fingerprint": json.dumps(self.fingerprint), "settings": json.dumps(self.settings, default=str)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> "Eraser":
        """Load an eraser; with ``model``, refuse it unless it was fitted on that model."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Eraser file {str(path)!r} not found.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                # clone: fresh, aligned memory, so kernels (and results) match the saved eraser bit for bit
                tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"Could not read eraser file {str(path)!r}: {err}. Is it truncated or not an "
                             "eraser? Re-save it with Eraser.save or re-run `mllmeraser fit`.") from None
        if meta.get("format") != "mllmeraser.eraser/1":
            raise ValueError(f"{str(path)!r} is a safetensors file but not an mllmeraser eraser "
                             f"(format {meta.get('format')!r}).")
        layers = json.loads(meta["layers"])
        gate_meta = json.loads(meta.get("gates", "{}"))

        def gate_names(l: int) -> set[str]:
            if str(l) not in gate_meta:
                return {f"layer{l}.gates"}
            return {k for k in tensors if k.startswith(f"layer{l}.gate.")}

        missing = [l for l in layers if not (gate_names(l) and gate_names(l) <= set(tensors))
                   or f"layer{l}.directions" not in tensors]
        if missing:
            raise ValueError(f"Eraser file {str(path)!r} lacks the maps of layers {missing}: it is incomplete.")
        expected = {f"layer{l}.directions" for l in layers} | {k for l in layers for k in gate_names(l)}
        stray = sorted(set(tensors) - expected)
        if stray:
            raise ValueError(f"Eraser file {str(path)!r} holds tensors {stray} that its header (layers {layers}) "
                             "does not list: the file was edited or is corrupt. Re-save it with Eraser.save.")

        def gate(l: int) -> torch.Tensor | Gate:
            if str(l) not in gate_meta:
                return tensors[f"layer{l}.gates"]
            prefix = f"layer{l}.gate."
            try:
                return gate_from_parts(gate_meta[str(l)], {k[len(prefix):]: v for k, v in tensors.items()
                                                           if k.startswith(prefix)})
            except KeyError as err:
                raise ValueError(f"Eraser file {str(path)!r}: the gate of layer {l} lacks {err}; the file is "
                                 "incomplete. Re-save it with Eraser.save.") from None

        maps = tuple(EraserLayer(l, gate(l), tensors[f"layer{l}.directions"]) for l in layers)
        eraser = cls(maps, json.loads(meta["lam"]), meta["positions"], json.loads(meta["fingerprint"]),
                     json.loads(meta["settings"]), json.loads(meta.get("threshold", "0.0")), meta.get("edit", "add"),
                     bool(json.loads(meta.get("latch", "false"))),
                     NameKeys.from_json(json.loads(meta["names"])) if "names" in meta else None)
        if model is not None:
            eraser.check_model(model)
        return eraser

    @staticmethod
    def compose(*erasers: "Eraser") -> "Eraser":
        """One eraser equal to applying all of them together (factors concatenated, strengths folded in)."""
        if not erasers:
            raise ValueError("Nothing to compose.")
        fps = {json.dumps(e.fingerprint, sort_keys=True) for e in erasers}
        if len(fps) > 1:
            raise MismatchError("These erasers were fitted on different models; they cannot be composed.")
        modes = {e.positions for e in erasers}
        if len(modes) > 1:
            raise ValueError(f"Erasers with different positions {sorted(modes)} cannot be merged; "
                             "apply them together: generate(..., steers=[e1, e2]) or attached(model, [e1, e2]).")
        thresholds = {e.threshold for e in erasers}
        if len(thresholds) > 1:
            raise ValueError(f"Erasers with different gate thresholds {sorted(thresholds)} cannot be merged; "
                             "apply them together: generate(..., steers=[e1, e2]) or attached(model, [e1, e2]).")
        if len({e.latch for e in erasers}) > 1:
            raise ValueError("Latching and non-latching erasers cannot be merged; apply them together: "
                             "generate(..., steers=[e1, e2]) or attached(model, [e1, e2]).")
        edits = {e.edit for e in erasers}
        if edits != {"add"}:
            # Two rotations applied together add their shifts; one rotation of the summed edit does not equal that.
            raise ValueError("Only additive erasers (edit='add') merge into one; apply rotating ones together: "
                             "generate(..., steers=[e1, e2]) or attached(model, [e1, e2]).")
        by_layer: dict[int, list[tuple[torch.Tensor | Gate, torch.Tensor]]] = {}
        for e in erasers:
            for m in e.maps:
                by_layer.setdefault(m.layer, []).append((m.gates, e.lam * m.directions))

        def merged(gates: list) -> torch.Tensor | Gate:
            if all(isinstance(g, torch.Tensor) for g in gates):
                return torch.cat(gates, 1)  # the paper's maps: still one (d, r) factor
            parts = []
            for g in gates:
                g = LinearGate(g) if isinstance(g, torch.Tensor) else g
                parts.extend(g.parts if isinstance(g, GateStack) else (g,))
            return GateStack(tuple(parts))

        maps = tuple(EraserLayer(l, merged([g for g, _ in parts]), torch.cat([d for _, d in parts], 0))
                     for l, parts in sorted(by_layer.items()))
        names = None
        for e in erasers:  # a named row is steered at full weight by each: the union of the lists
            if e.names is not None:
                names = e.names if names is None else names.union(e.names)
        if names is not None and any(e.names is None for e in erasers):
            raise ValueError("Only some of these erasers have a name gate; a merged one would apply it to every "
                             "eraser's direction. Apply them together: generate(..., steers=[e1, e2]).")
        return Eraser(maps, 1.0, modes.pop(), erasers[0].fingerprint,
                      {"composed_of": [e.settings for e in erasers]}, thresholds.pop(), latch=erasers[0].latch,
                      names=names)


def _need_mean(prompt_mean: torch.Tensor | None, m: EraserLayer) -> torch.Tensor:
    if prompt_mean is None:
        raise ValueError(f"The {m.kind} gate of layer {m.layer} reads the prompt's mean state: pass prompt_mean "
                         "(B, d), the mean of the layer's output over the prompt's tokens.")
    return prompt_mean
