"""A streaming fitter for erasers, from activations or from any samples (no benchmark needed).

In the manner of LEACE's fitter: :class:`EraserFitter` accumulates, per layer,
the statistics the closed form needs and nothing else (memory: two ``d x d``
moments and two ``d`` means a layer, whatever the number of rows: float64 on the CPU, or float32
blocks on the model's device, ``2 d^2`` float32 plus one block of rows; see
:class:`~toolkit.nullspace.SecondMoment`),
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

Membership gates (:mod:`toolkit.gates`: logistic, prototype) need rows, not
moments: with ``gate_reads`` set the fitter also keeps, per layer, the forget
rows, up to ``max_retain_rows`` retain rows (a seeded reservoir beyond that) and
calibration rows of people outside the fit, each with its person's id, in the
features the gates read (:mod:`toolkit.reads`: ``f = k d`` for ``k`` parts, the last token always among
them; memory ``4 f (n_f + n_r + n_c)`` bytes a layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .direction import Direction, MeanAccumulator, erasure_direction
from .eraser import Eraser, EraserLayer, solve_map
from .gates import auroc, calibrate, fit_gate
from .reads import read_width, select_read, union_reads
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

    Activations may live on any device and dtype (CUDA bf16 included). ``precision``: how the
    moments are summed (:class:`~toolkit.nullspace.SecondMoment`; ``"auto"``: float32 blocks on the
    model's device for a GPU model, never copied to the host; float64 on the CPU). ``gate_reads``
    (any read of :mod:`toolkit.reads`): also keep the rows membership gates are fitted and calibrated on
    (module docstring), read as ``"last"`` plus that read's and ``keep_reads``' parts (:attr:`gate_reads`),
    so that gates reading any of them can be fitted from one capture (:meth:`gate`'s ``reads``).
    """

    def __init__(self, hidden_size: int, layers: Sequence[int], *, gate_reads: str | None = None,
                 keep_reads: Sequence[str] = (), max_retain_rows: int = 8192, seed: int = 0, precision: str = "auto",
                 block_rows: int = 4096) -> None:
        if not layers:
            raise ValueError("Give at least one layer to fit.")
        # The rows are kept with the last token first (the statistics read it) and every part a gate may read.
        self.default_reads = gate_reads
        if gate_reads is not None:
            gate_reads = union_reads("last", gate_reads, *keep_reads)
        self.hidden_size = hidden_size
        self.layers = tuple(layers)
        self.precision, self.block_rows = precision, block_rows
        self.retain = {l: SecondMoment(hidden_size, precision, block_rows) for l in self.layers}
        self.forget = {l: SecondMoment(hidden_size, precision, block_rows) for l in self.layers}
        self.refusal = MeanAccumulator()
        self.recall = MeanAccumulator()
        self.direction_override: Direction | None = None
        self.gate_reads = gate_reads
        self.max_retain_rows = max_retain_rows
        self._generator = torch.Generator().manual_seed(seed)
        self.gate_rows: dict[str, dict[int, torch.Tensor]] = {"forget": {}, "retain": {}, "calibration": {}}
        self.retain_rows_seen = 0
        self.calibration_people: list[str] = []

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

    def update_gate_rows(self, kind: str, rows: dict[int, torch.Tensor] | torch.Tensor,
                         people: Sequence[str] | None = None) -> "EraserFitter":
        """Keep rows ``{layer: (n, f)}`` for membership gates: ``kind`` forget, retain or calibration
        (rows of people outside the fit, ``people`` their ids, one per row)."""
        if self.gate_reads is None:
            raise ValueError("This fitter keeps no gate rows: create it with gate_reads= (toolkit.reads).")
        width = read_width(self.gate_reads, self.hidden_size)
        rows = {l: r.detach().to("cpu", torch.float32) for l, r in _rows(rows, self.layers).items()}
        n = next(iter(rows.values())).shape[0]
        for l, r in rows.items():
            if r.ndim != 2 or r.shape[1] != width:
                raise ValueError(f"Gate rows must have shape (n, {width}) for reads={self.gate_reads!r}; layer {l} "
                                 f"got {tuple(r.shape)}.")
        store = self.gate_rows[kind]
        if kind == "calibration":
            if people is None or len(people) != n:
                raise ValueError("Calibration rows need one person id per row (people=...).")
            self.calibration_people.extend(people)
        if kind == "retain":
            # A seeded reservoir (algorithm R): at most max_retain_rows rows, every row seen equally likely to stay.
            cap, seen = self.max_retain_rows, self.retain_rows_seen
            room = max(0, cap - seen)
            for l, r in rows.items():
                store[l] = torch.cat([store[l], r[:room]]) if l in store else r[:room].clone()
            for i in range(room, n):
                j = int(torch.randint(0, seen + i + 1, (1,), generator=self._generator))
                if j < cap:
                    for l, r in rows.items():
                        store[l][j] = r[i]
            self.retain_rows_seen += n
            return self
        for l, r in rows.items():
            store[l] = torch.cat([store[l], r]) if l in store else r
        return self

    def rows(self, kind: str, layer: int, reads: str | None = None) -> torch.Tensor:
        """Kept gate rows of ``kind`` (forget, retain, calibration) at ``layer``, in the columns of ``reads``
        (default: the read the fitter was created with)."""
        return select_read(self.gate_rows[kind][layer], self.gate_reads, reads or self.default_reads,
                           self.hidden_size)

    def gate(self, layer: int, kind: str, *, fpr: float = 0.05, softness: float = 0.0,
             exclude: Sequence[str] = (), reads: str | None = None, **options: Any):
        """A calibrated membership gate at ``layer`` reading ``reads`` (default: the fitter's read): fitted
        on the kept forget vs retain rows, its threshold set on the calibration rows of people not in
        ``exclude`` (:func:`toolkit.gates.calibrate`).

        Returns ``(gate, report)``; the report holds the threshold, the calibration false-positive
        rate and the AUROC of forget rows against the calibration rows.
        """
        rows = self.gate_rows
        if self.gate_reads is None or layer not in rows["forget"] or layer not in rows["retain"]:
            raise ValueError(f"No gate rows at layer {layer}: a {kind} gate is fitted on kept rows (EraserFitter("
                             "gate_reads=...), then add_samples(..., gate_rows=True) for forget and retain).")
        if layer not in rows["calibration"]:
            raise ValueError(f"No calibration rows at layer {layer}: the {kind} gate's threshold is set on people "
                             "outside the fit (validation people); add them with kind='calibration'.")
        drop = set(exclude)
        keep = torch.tensor([p not in drop for p in self.calibration_people], dtype=torch.bool)
        reads = reads or self.default_reads
        forget, outside = self.rows("forget", layer, reads), self.rows("calibration", layer, reads)[keep]
        gate = fit_gate(kind, forget, self.rows("retain", layer, reads), reads=reads, **options)
        gate, report = calibrate(gate, outside, fpr, softness)
        report.update(kind=kind, reads=reads, n_forget_rows=int(len(forget)),
                      n_retain_rows=int(len(rows["retain"][layer])),
                      auroc_forget_vs_calibration=auroc(gate.score(forget), gate.score(outside)))
        return gate, report

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
            # Read each moment once: in float32 mode a read rebuilds the d x d float64 moment (one layer at a time).
            retain_gram, forget_gram = retain.gram, forget.gram
            w = solve_map(forget_gram, forget.total, space, gamma, retain_gram=retain_gram,
                          retain_weight=retain_weight * forget.count / retain.count)
            v = w[:, 0].to(retain_gram.device)
            maps[l] = EraserLayer(l, w.to("cpu", torch.float32), direction.vectors[l][None].to("cpu", torch.float32))
            stats[l] = {"k": space.k, "retain_energy_leaked": space.leaked_energy,
                        "direction_norm": float(direction.vectors[l].norm()),
                        "gate_mean_forget": float(forget.total.to(v.device) @ v) / forget.count,
                        "gate_mean_retain": float(retain.total.to(v.device) @ v) / retain.count,
                        "gate_rms_retain": float((v @ retain_gram @ v / retain.count) ** 0.5),
                        "gate_rms_forget": float((v @ forget_gram.to(v.device) @ v / forget.count) ** 0.5)}
            del retain_gram, forget_gram
            spaces[l] = space
        return maps, spaces, stats

    def eraser(self, policy: RankPolicy, gamma: float, *, retain_weight: float = 0.0, lam: float = 1.0,
               positions: str = "prompt", fingerprint: dict | None = None, settings: dict | None = None,
               gate: str = "linear", gate_fpr: float = 0.05, gate_softness: float = 0.0, edit: str = "add",
               exclude_calibration: Sequence[str] = (), gate_reads: str | None = None,
               latch: bool = False) -> Eraser:
        """The fitted :class:`~toolkit.eraser.Eraser`.

        ``gate="linear"``: the paper's map (``2 d`` numbers a layer). ``"logistic"`` / ``"prototype"``:
        a membership gate per layer (:meth:`gate`), calibrated to ``gate_fpr`` on the calibration rows
        of people not in ``exclude_calibration``; the map's direction is the same.
        """
        maps, _, stats = self.solve(policy, gamma, retain_weight) if gate == "linear" else ({}, {}, {})
        if gate != "linear":
            direction = self.direction()
            for l in self.layers:
                g, report = self.gate(l, gate, fpr=gate_fpr, softness=gate_softness, exclude=exclude_calibration,
                                      reads=gate_reads)
                maps[l] = EraserLayer(l, g, direction.vectors[l][None].to(torch.float32))
                stats[l] = dict(report, direction_norm=float(direction.vectors[l].norm()))
        return Eraser(tuple(maps[l] for l in self.layers), lam, positions, fingerprint or {},
                      dict(settings or {}, layers_report=stats), edit=edit, latch=latch and gate != "linear")

    # -- from samples -----------------------------------------------------------------------
    def add_samples(self, model: LoadedModel, kind: str, samples: Sequence[Sample], *,
                    positions: CapturePositions = "last", weight: float = 1.0, formatted: bool = False,
                    batch_size: int = 32, progress: bool | str = False, gate_rows: bool | None = None,
                    people: Sequence[str] | None = None, statistics: bool = True,
                    share_prefix: bool = True) -> "EraserFitter":
        """Capture ``samples`` at this fitter's layers and add them as ``kind``: retain, forget, refusal,
        recall or calibration (gate rows only; ``people``: one id per sample).

        ``gate_rows=True`` (with ``positions="last"``): also keep the rows for membership gates, in
        the features the fitter's gates read (one capture pass for both). ``None`` (default): keep them
        where a fitter with ``gate_reads`` wants them: forget and retain question rows (``positions="last"``,
        not templated), and always with ``statistics=False``: keep the gate rows only (the map's moments are
        left as they are: the fit pool's wrapped questions train the gate, not the null space).
        ``share_prefix``: questions about one image share its prefix's forward (:mod:`toolkit.prefix`).
        """
        if gate_rows is None:
            gate_rows = not statistics or (self.gate_reads is not None and kind in ("forget", "retain")
                                           and positions == "last" and not formatted)
        update = {"retain": lambda a: self.update_retain(a, weight), "forget": lambda a: self.update_forget(a, weight),
                  "refusal": lambda a: self.update_contrast(refusal=a),
                  "recall": lambda a: self.update_contrast(recall=a), "calibration": lambda a: None}
        if not statistics and not gate_rows and kind != "calibration":
            raise ValueError("statistics=False keeps gate rows only: leave gate_rows at its default (True then).")
        if kind not in update:
            raise ValueError(f"kind must be one of {', '.join(update)}, got {kind!r}.")
        if not samples:
            raise ValueError(f"The {kind} set is empty.")
        keep = gate_rows or kind == "calibration"
        if keep and (positions != "last" or kind not in ("forget", "retain", "calibration")):
            raise ValueError("Gate rows are the last prompt token's (positions='last') of forget, retain or "
                             "calibration samples.")
        if kind == "calibration" and (people is None or len(people) != len(samples)):
            raise ValueError("Calibration samples need one person id each (people=...).")
        read = self.gate_reads if keep else positions
        if keep and read is None:
            raise ValueError("This fitter keeps no gate rows: create it with gate_reads= (toolkit.reads).")
        d = self.hidden_size
        # to_cpu=False: rows stay on the model's device; each statistic moves only what it keeps.
        for index, acts in iter_capture(model, samples, list(self.layers), read, batch_size=batch_size,
                                        progress=progress, formatted=formatted, to_cpu=False,
                                        share_prefix=share_prefix):
            if keep:
                self.update_gate_rows(kind, acts, [people[i] for i in index.tolist()] if people else None)
                acts = {l: a[:, :d] for l, a in acts.items()}
            if statistics:
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
    statistics: bool = True  # False: gate rows only (the fit pool's wrapped questions)


def _sets(value: Any, name: str) -> list[SampleSet]:
    if isinstance(value, SampleSet):
        return [value]
    if value and all(isinstance(v, SampleSet) for v in value):
        return list(value)
    return [SampleSet(list(value), label=name)]


def fit_from_samples(model: LoadedModel, *, forget: Any, retain: Any, contrast: Any, layers: Sequence[int],
                     policy: RankPolicy, gamma: float, retain_weight: float = 0.0, lam: float = 1.0,
                     positions: str = "prompt", variant: str = "multimodal", batch_size: int = 32,
                     settings: dict | None = None, progress: bool = False, gate: str = "linear",
                     gate_reads: str | None = None, calibration: tuple[Sequence[Sample], Sequence[str]] | None = None,
                     gate_fpr: float = 0.05, gate_softness: float = 0.0, edit: str = "add",
                     max_retain_rows: int = 8192, keep_reads: Sequence[str] = (),
                     latch: bool = False, share_prefix: bool = True) -> tuple[Eraser, EraserFitter]:
    """Fit an Eraser from plain sample lists.

    Args:
        forget, retain: ``Sample`` lists, or :class:`SampleSet`\\ s (to add answer-token rows
            with their own positions and weights).
        contrast: ``(refusal_samples, recall_samples)`` (direction by :func:`erasure_direction`
            with ``variant``), or a ready :class:`~toolkit.direction.Direction`.
        policy, gamma, retain_weight, lam, positions: as :class:`~toolkit.fit.FitConfig`.
        gate, gate_reads, gate_fpr, gate_softness, edit, latch: the gate kind and its features, its
            calibration target and softness, the edit and the latch (as :class:`~toolkit.fit.FitConfig`);
            ``keep_reads``: more reads to keep rows in (gates reading them can be fitted later). With ``gate_reads``
            set, the rows of the forget and retain sets read at the last prompt token are kept for
            membership gates (whatever ``gate``, so another kind can be fitted from the same fitter).
        calibration: ``(samples, person ids)`` of people outside the fit and the forget list
            (validation people): membership gates set their threshold on them.
        share_prefix: questions about one image share its prefix's forward (:mod:`toolkit.prefix`; equal states).

    Returns ``(eraser, fitter)``; the fitter keeps the statistics (for the probes).
    """
    layers = model.check_layers(list(layers))
    if gate != "linear" and gate_reads is None:
        raise ValueError(f"A {gate} gate is fitted on kept rows: give gate_reads ('last', 'image-max', ...: toolkit.reads).")
    fitter = EraserFitter(model.hidden_size, layers, gate_reads=gate_reads, keep_reads=keep_reads,
                          max_retain_rows=max_retain_rows)
    if isinstance(contrast, Direction):
        direction = contrast
    else:
        refusal, recall = contrast
        direction = erasure_direction(model, refusal, recall, layers, variant=variant, batch_size=batch_size,
                                      progress=progress, share_prefix=share_prefix)
    fitter.set_direction(direction)
    for kind, value in (("retain", retain), ("forget", forget)):
        for part in _sets(value, kind):
            fitter.add_samples(model, kind, part.samples, positions=part.positions, weight=part.weight,
                               formatted=part.formatted, batch_size=batch_size,
                               progress=progress and f"{part.label or kind} activations",
                               statistics=part.statistics, share_prefix=share_prefix)
    if calibration is not None and gate_reads is not None:
        samples, people = calibration[:2]
        if len(samples):
            fitter.add_samples(model, "calibration", list(samples), people=list(people), batch_size=batch_size,
                               progress=progress and "calibration activations", share_prefix=share_prefix)
    eraser = fitter.eraser(policy, gamma, retain_weight=retain_weight, lam=lam, positions=positions,
                           fingerprint=model.fingerprint(), settings=settings, gate=gate, gate_fpr=gate_fpr,
                           gate_softness=gate_softness, edit=edit, latch=latch)
    return eraser, fitter
