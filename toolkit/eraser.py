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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .nullspace import NullSpace
from .steering import POSITIONS, GateLog, Steer, attached, intervene

__all__ = ["solve_map", "dead_zone", "Eraser", "EraserLayer", "MismatchError"]


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
    zz = q.T @ forget_gram.to(torch.float64) @ q
    if retain_weight:
        if retain_gram is None:
            raise ValueError("retain_weight > 0 needs retain_gram (H_r^T H_r).")
        zz = zz + retain_weight * (q.T @ retain_gram.to(torch.float64) @ q)
    rhs = q.T @ (targets_cross if targets_cross is not None else forget_sum[:, None]).to(torch.float64)
    system = zz + gamma * torch.eye(q.shape[1], dtype=torch.float64)
    return q @ torch.linalg.solve(system, rhs)


class MismatchError(ValueError):
    """An eraser applied to a model it was not fitted on."""


@dataclass(frozen=True)
class EraserLayer:
    """One steered layer: shift = lam * (h @ gates) @ directions.

    ``gates``: (d, r); ``directions``: (r, d). r = 1 for the shared target.
    """

    layer: int
    gates: torch.Tensor
    directions: torch.Tensor

    def shift(self, h: torch.Tensor, lam: float, threshold: float = 0.0) -> torch.Tensor:
        """``(..., d) -> (..., d)`` in ``h``'s dtype; O(r d) per row.

        The gate is computed in float32 whatever ``h``'s dtype: in bf16 the rounding
        of ``w`` (8 bits of mantissa) destroys the cancellation ``h_retain . w ~ 0``.
        ``threshold`` > 0: the gate passes through :func:`dead_zone` first.
        """
        gate = self.gate(h)
        if threshold:
            gate = dead_zone(gate, threshold)
        return (lam * (gate @ self.directions.to(h.device, torch.float32))).to(h.dtype)

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """Gate values ``h @ gates`` in float32: ``(..., r)``."""
        return h.float() @ self.gates.to(h.device, torch.float32)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "EraserLayer":
        return EraserLayer(self.layer, self.gates.to(device, dtype or self.gates.dtype),
                           self.directions.to(device, dtype or self.directions.dtype))


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
        threshold: gate dead zone in [0, 1) (:func:`dead_zone`); 0 is the paper's linear map.
        fingerprint: identity of the model it was fitted on.
        settings: the fit settings and diagnostics (JSON-serialisable).
    """

    maps: tuple[EraserLayer, ...]
    lam: float = 1.0
    positions: str = "prompt"
    fingerprint: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    threshold: float = 0.0

    def __post_init__(self) -> None:
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
            if not (torch.isfinite(m.gates).all() and torch.isfinite(m.directions).all()):
                raise ValueError(f"The map of layer {m.layer} contains NaN/inf: refit the eraser.")
            if m.gates.ndim != 2 or m.directions.ndim != 2 or m.gates.shape[1] != m.directions.shape[0] \
                    or m.gates.shape[0] != m.directions.shape[1]:
                raise ValueError(f"The map of layer {m.layer} has gates {tuple(m.gates.shape)} and directions "
                                 f"{tuple(m.directions.shape)}; expected (d, r) and (r, d).")
        layers = [m.layer for m in self.maps]
        if len(set(layers)) != len(layers):
            raise ValueError(f"An eraser steers each layer once; got layers {layers}.")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(m.layer for m in self.maps)

    @property
    def rank(self) -> int:
        return max(m.gates.shape[1] for m in self.maps)

    def layer_map(self, layer: int) -> EraserLayer:
        for m in self.maps:
            if m.layer == layer:
                return m
        raise KeyError(f"This eraser steers layers {list(self.layers)}, not {layer}.")

    def __call__(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The steered state ``h + lam * (h @ w) d`` for layer ``layer``; ``h``: (..., d)."""
        return h + self.layer_map(layer).shift(h, self.lam, self.threshold)

    def with_options(self, *, lam: float | None = None, positions: str | None = None,
                     layers: Sequence[int] | None = None, threshold: float | None = None) -> "Eraser":
        """A copy with another strength, position mode, gate threshold or subset of layers."""
        maps = self.maps if layers is None else tuple(self.layer_map(l) for l in layers)
        return replace(self, maps=maps, lam=self.lam if lam is None else lam,
                       positions=self.positions if positions is None else positions,
                       threshold=self.threshold if threshold is None else threshold)

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
            if m.gates.shape[0] != model.hidden_size:
                raise MismatchError(f"Layer {m.layer} map has width {m.gates.shape[0]}, the model {model.hidden_size}.")
            # Moved once, in float32, to the device of the layer it steers (a device_map can spread
            # layers over GPUs); the shift then creates nothing on another device.
            moved = m.to(model.layer_device(m.layer), torch.float32)
            out.append(Steer(m.layer, lambda h, m=moved: m.shift(h, self.lam, self.threshold), self.positions,
                             gate=moved.gate))
        return out

    # -- the three routes (toolkit.steering) ---------------------------------------
    def intervene(self, model: Any, *, steps: int | None = None, generating: bool = True,
                  log: GateLog | None = None) -> dict[int, torch.Tensor]:
        """Apply this eraser inside your own ``with model.nn.trace(...)`` / ``model.nn.generate(...)`` block.

        See :func:`toolkit.steering.intervene` (with ``positions="all"`` in a
        generate, call it last in its invoke, or pass ``steps=max_new_tokens``;
        in a ``trace``, pass ``generating=False``).
        """
        return intervene(model, self, steps=steps, generating=generating, log=log)

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
        for m in self.maps:
            tensors[f"layer{m.layer}.gates"] = m.gates.detach().cpu().contiguous()
            tensors[f"layer{m.layer}.directions"] = m.directions.detach().cpu().contiguous()
        meta = {"format": "mllmeraser.eraser/1", "toolkit_version": __version__, "lam": json.dumps(self.lam),
                "positions": self.positions, "layers": json.dumps(list(self.layers)),
                "threshold": json.dumps(self.threshold),
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
        missing = [l for l in layers if f"layer{l}.gates" not in tensors or f"layer{l}.directions" not in tensors]
        if missing:
            raise ValueError(f"Eraser file {str(path)!r} lacks the maps of layers {missing}: it is incomplete.")
        stray = sorted(set(tensors) - {f"layer{l}.{part}" for l in layers for part in ("gates", "directions")})
        if stray:
            raise ValueError(f"Eraser file {str(path)!r} holds tensors {stray} that its header (layers {layers}) "
                             "does not list: the file was edited or is corrupt. Re-save it with Eraser.save.")
        maps = tuple(EraserLayer(l, tensors[f"layer{l}.gates"], tensors[f"layer{l}.directions"]) for l in layers)
        eraser = cls(maps, json.loads(meta["lam"]), meta["positions"], json.loads(meta["fingerprint"]),
                     json.loads(meta["settings"]), json.loads(meta.get("threshold", "0.0")))
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
        by_layer: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for e in erasers:
            for m in e.maps:
                by_layer.setdefault(m.layer, []).append((m.gates, e.lam * m.directions))
        maps = tuple(EraserLayer(l, torch.cat([g for g, _ in parts], 1), torch.cat([d for _, d in parts], 0))
                     for l, parts in sorted(by_layer.items()))
        return Eraser(maps, 1.0, modes.pop(), erasers[0].fingerprint,
                      {"composed_of": [e.settings for e in erasers]}, thresholds.pop())
