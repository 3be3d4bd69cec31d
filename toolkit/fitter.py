"""A streaming fitter for erasers, from activations or from any samples (no benchmark needed).

In the manner of LEACE's fitter: :class:`EraserFitter` accumulates, per layer,
the statistics the closed form needs and nothing else (memory: two ``d x d``
float64 moments and two ``d`` means a layer, whatever the number of rows),
then :meth:`EraserFitter.eraser` solves for the immutable :class:`~toolkit.eraser.Eraser`.

    fitter = EraserFitter(model.hidden_size, layers=[6])
    fitter.update_retain(acts)                  # {layer: (n, d)} from your own traces
    fitter.update_forget(acts)
    fitter.update_contrast(refusal=acts_plus, recall=acts_minus)
    eraser = fitter.eraser(FixedRatio(0.3), gamma=0.1)

or from plain :class:`~toolkit.models.loading.Sample` lists with
:func:`fit_from_samples`. Each layer's retain moment is eigendecomposed once
(:meth:`toolkit.nullspace.SecondMoment.eigh` caches it), and the probes read the
same cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .direction import Direction, MeanAccumulator, erasure_direction
from .eraser import Eraser, EraserLayer, solve_map
from .models.loading import LoadedModel, Sample
from .nullspace import NullSpace, RankPolicy, SecondMoment, null_space
from .tracing import CapturePositions, iter_capture

__all__ = ["EraserFitter", "SampleSet", "fit_from_samples"]


def _rows(acts: Any, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    if isinstance(acts, torch.Tensor):
        if len(layers) != 1:
            raise ValueError(f"A bare tensor is ambiguous for layers {list(layers)}: pass {{layer: (n, d)}}.")
        return {layers[0]: acts}
    missing = [l for l in layers if l not in acts]
    if missing:
        raise ValueError(f"Activations for layers {missing} are missing (got layers {sorted(acts)}).")
    return {l: acts[l] for l in layers}


class EraserFitter:
    """Accumulates retain, forget and contrast statistics per layer; :meth:`eraser` solves.

    Activations may live on any device and dtype (CUDA bf16 included); they are
    accumulated in float64 on the CPU.
    """

    def __init__(self, hidden_size: int, layers: Sequence[int]) -> None:
        if not layers:
            raise ValueError("Give at least one layer to fit.")
        self.hidden_size = hidden_size
        self.layers = tuple(layers)
        self.retain = {l: SecondMoment(hidden_size) for l in self.layers}
        self.forget = {l: SecondMoment(hidden_size) for l in self.layers}
        self.refusal = MeanAccumulator()
        self.recall = MeanAccumulator()
        self.direction_override: Direction | None = None

    # -- from activations -----------------------------------------------------------------
    def update_retain(self, acts: dict[int, torch.Tensor] | torch.Tensor, weight: float = 1.0) -> "EraserFitter":
        """Add retain rows ``{layer: (n, d)}`` (each counted ``weight`` times)."""
        for l, rows in _rows(acts, self.layers).items():
            self.retain[l].update(rows, weight)
        return self

    def update_forget(self, acts: dict[int, torch.Tensor] | torch.Tensor, weight: float = 1.0) -> "EraserFitter":
        """Add forget rows ``{layer: (n, d)}`` (target gate 1, each counted ``weight`` times)."""
        for l, rows in _rows(acts, self.layers).items():
            self.forget[l].update(rows, weight)
        return self

    def update_contrast(self, refusal: dict[int, torch.Tensor] | torch.Tensor | None = None,
                        recall: dict[int, torch.Tensor] | torch.Tensor | None = None) -> "EraserFitter":
        """Add rows to the two contrastive sets: the direction is ``mean(refusal) - mean(recall)``."""
        if refusal is not None:
            self.refusal.update({l: r.detach().cpu() for l, r in _rows(refusal, self.layers).items()})
        if recall is not None:
            self.recall.update({l: r.detach().cpu() for l, r in _rows(recall, self.layers).items()})
        return self

    def set_direction(self, direction: Direction) -> "EraserFitter":
        """Use a direction computed elsewhere (e.g. :func:`~toolkit.direction.erasure_direction` with a variant)."""
        missing = [l for l in self.layers if l not in direction.vectors]
        if missing:
            raise ValueError(f"The direction has no vector for layers {missing}.")
        self.direction_override = direction
        return self

    # -- results ------------------------------------------------------------------------------
    def direction(self) -> Direction:
        if self.direction_override is not None:
            return self.direction_override
        if not self.refusal.count or not self.recall.count:
            raise ValueError(f"No direction yet: the contrastive sets hold {self.refusal.count} refusal and "
                             f"{self.recall.count} recall rows. Call update_contrast (both) or set_direction.")
        plus = {l: self.refusal.mean(l) for l in self.layers}
        minus = {l: self.recall.mean(l) for l in self.layers}
        return Direction({l: plus[l] - minus[l] for l in self.layers}, plus, minus, self.refusal.count,
                         self.recall.count, "custom")

    def null_space(self, layer: int, policy: RankPolicy) -> NullSpace:
        """The retain null space at ``layer`` (the eigendecomposition is computed once and cached)."""
        return null_space(self.retain[layer], policy)

    def solve(self, policy: RankPolicy, gamma: float, retain_weight: float = 0.0
              ) -> tuple[dict[int, EraserLayer], dict[int, NullSpace], dict[int, dict]]:
        """Per-layer maps, null spaces and diagnostics (k, leaked retain energy, gate statistics)."""
        if retain_weight < 0:
            raise ValueError(f"retain_weight must be >= 0, got {retain_weight}.")
        direction = self.direction()
        maps, spaces, stats = {}, {}, {}
        for l in self.layers:
            retain, forget = self.retain[l], self.forget[l]
            if not forget.count:
                raise ValueError(f"No forget rows at layer {l}: call update_forget first.")
            space = self.null_space(l, policy)
            w = solve_map(forget.gram, forget.total, space, gamma, retain_gram=retain.gram,
                          retain_weight=retain_weight * forget.count / retain.count)
            maps[l] = EraserLayer(l, w.to(torch.float32), direction.vectors[l][None].to(torch.float32))
            stats[l] = {"k": space.k, "retain_energy_leaked": space.leaked_energy,
                        "direction_norm": float(direction.vectors[l].norm()),
                        "gate_mean_forget": float(forget.total @ w[:, 0]) / forget.count,
                        "gate_mean_retain": float(retain.total @ w[:, 0]) / retain.count,
                        "gate_rms_retain": float((w[:, 0] @ retain.gram @ w[:, 0] / retain.count) ** 0.5),
                        "gate_rms_forget": float((w[:, 0] @ forget.gram @ w[:, 0] / forget.count) ** 0.5)}
            spaces[l] = space
        return maps, spaces, stats

    def eraser(self, policy: RankPolicy, gamma: float, *, retain_weight: float = 0.0, lam: float = 1.0,
               positions: str = "prompt", fingerprint: dict | None = None, settings: dict | None = None) -> Eraser:
        """The fitted :class:`~toolkit.eraser.Eraser` (``2 d`` numbers a layer)."""
        maps, _, stats = self.solve(policy, gamma, retain_weight)
        return Eraser(tuple(maps[l] for l in self.layers), lam, positions, fingerprint or {},
                      dict(settings or {}, layers_report=stats))

    # -- from samples -----------------------------------------------------------------------
    def add_samples(self, model: LoadedModel, kind: str, samples: Sequence[Sample], *,
                    positions: CapturePositions = "last", weight: float = 1.0, formatted: bool = False,
                    batch_size: int = 32, progress: bool | str = False) -> "EraserFitter":
        """Capture ``samples`` at this fitter's layers and add them as ``kind``: retain, forget, refusal or recall."""
        update = {"retain": lambda a: self.update_retain(a, weight), "forget": lambda a: self.update_forget(a, weight),
                  "refusal": lambda a: self.update_contrast(refusal=a),
                  "recall": lambda a: self.update_contrast(recall=a)}
        if kind not in update:
            raise ValueError(f"kind must be one of {', '.join(update)}, got {kind!r}.")
        if not samples:
            raise ValueError(f"The {kind} set is empty.")
        for _, acts in iter_capture(model, samples, list(self.layers), positions, batch_size=batch_size,
                                    progress=progress, formatted=formatted):
            update[kind](acts)
        return self


@dataclass(frozen=True)
class SampleSet:
    """Samples plus how to read them: capture ``positions`` (e.g. a Trailing window of answer tokens),
    per-row ``weight``, and whether the texts are already templated (``formatted``)."""

    samples: Sequence[Sample]
    positions: Any = "last"
    weight: float = 1.0
    formatted: bool = False
    label: str = field(default="", compare=False)


def _sets(value: Any, name: str) -> list[SampleSet]:
    if isinstance(value, SampleSet):
        return [value]
    if value and all(isinstance(v, SampleSet) for v in value):
        return list(value)
    return [SampleSet(list(value), label=name)]


def fit_from_samples(model: LoadedModel, *, forget: Any, retain: Any, contrast: Any, layers: Sequence[int],
                     policy: RankPolicy, gamma: float, retain_weight: float = 0.0, lam: float = 1.0,
                     positions: str = "prompt", variant: str = "multimodal", batch_size: int = 32,
                     settings: dict | None = None, progress: bool = False) -> tuple[Eraser, EraserFitter]:
    """Fit an Eraser from plain sample lists.

    Args:
        forget, retain: ``Sample`` lists, or :class:`SampleSet`\\ s (to add answer-token rows
            with their own positions and weights).
        contrast: ``(refusal_samples, recall_samples)`` (direction by :func:`erasure_direction`
            with ``variant``), or a ready :class:`~toolkit.direction.Direction`.
        policy, gamma, retain_weight, lam, positions: as :class:`~toolkit.fit.FitConfig`.

    Returns ``(eraser, fitter)``; the fitter keeps the statistics (for the probes).
    """
    layers = model.check_layers(list(layers))
    fitter = EraserFitter(model.hidden_size, layers)
    if isinstance(contrast, Direction):
        direction = contrast
    else:
        refusal, recall = contrast
        direction = erasure_direction(model, refusal, recall, layers, variant=variant, batch_size=batch_size,
                                      progress=progress)
    fitter.set_direction(direction)
    for kind, value in (("retain", retain), ("forget", forget)):
        for part in _sets(value, kind):
            fitter.add_samples(model, kind, part.samples, positions=part.positions, weight=part.weight,
                               formatted=part.formatted, batch_size=batch_size,
                               progress=progress and f"{part.label or kind} activations")
    eraser = fitter.eraser(policy, gamma, retain_weight=retain_weight, lam=lam, positions=positions,
                           fingerprint=model.fingerprint(), settings=settings)
    return eraser, fitter
