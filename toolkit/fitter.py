"""A streaming fitter for erasers: tensors in, an :class:`~toolkit.eraser.Eraser` out. It never sees a model.

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
    eraser = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1))

Capture lives in the pipeline that feeds it: :func:`toolkit.pipeline.add_samples` captures plain
:class:`~toolkit.models.loading.Sample` lists into a fitter, :func:`toolkit.pipeline.fit_from_samples` does the
whole fit from lists. Each layer's retain moment is eigendecomposed once
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
from typing import Any

import torch

from .direction import Direction, MeanAccumulator
from .eraser import Eraser, EraserLayer, solve_map
from .gates import auroc, calibrate, fit_gate
from .nullspace import NullSpace, RankPolicy, SecondMoment, null_space
from .reads import read_width, select_read, union_reads

__all__ = ["EraserFitter"]


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
        # One group label per kept forget / retain row (its person and question kind, "person|image"), or None
        # where the caller gave none: what FitConfig.gate_pool="people" pools the exemplars by.
        self.gate_groups: dict[str, list[str | None]] = {"forget": [], "retain": []}

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
                         people: Sequence[str] | None = None, groups: Sequence[str | None] | None = None
                         ) -> "EraserFitter":
        """Keep rows ``{layer: (n, f)}`` for membership gates: ``kind`` forget, retain or calibration
        (rows of people outside the fit, ``people`` their ids, one per row). ``groups``: for forget and retain
        rows, one label per row naming its person and question kind (``"person|image"``), which a gate pooled
        per person reads (:meth:`gate`'s ``pool``)."""
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
        if groups is not None and len(groups) != n:
            raise ValueError(f"groups= needs one label per row ({n}), got {len(groups)}.")
        labels = list(groups) if groups is not None else [None] * n
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
            kept = self.gate_groups["retain"]
            kept.extend(labels[:room])
            for i in range(room, n):
                j = int(torch.randint(0, seen + i + 1, (1,), generator=self._generator))
                if j < cap:
                    for l, r in rows.items():
                        store[l][j] = r[i]
                    kept[j] = labels[i]
            self.retain_rows_seen += n
            return self
        for l, r in rows.items():
            store[l] = torch.cat([store[l], r]) if l in store else r
        if kind == "forget":
            self.gate_groups["forget"].extend(labels)
        return self

    def rows(self, kind: str, layer: int, reads: str | None = None) -> torch.Tensor:
        """Kept gate rows of ``kind`` (forget, retain, calibration) at ``layer``, in the columns of ``reads``
        (default: the read the fitter was created with)."""
        return select_read(self.gate_rows[kind][layer], self.gate_reads, reads or self.default_reads,
                           self.hidden_size)

    def gate(self, layer: int, kind: str, *, fpr: float = 0.05, softness: float = 0.0,
             exclude: Sequence[str] = (), reads: str | None = None, pool: str = "rows", **options: Any):
        """A calibrated membership gate at ``layer`` reading ``reads`` (default: the fitter's read): fitted
        on the kept forget vs retain rows, its threshold set on the calibration rows of people not in
        ``exclude`` (:func:`toolkit.gates.calibrate`). ``pool="people"``: a prototype gate keeps one exemplar per
        person and question kind (the mean of that group's rows, :func:`toolkit.gates.fit_prototype`) instead of
        one per row; the other kinds keep no rows either way.

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
        if pool not in ("rows", "people"):
            raise ValueError(f"pool must be 'rows' or 'people', got {pool!r}.")
        if pool == "people" and kind.startswith("prototype"):
            for side in ("forget", "retain"):
                if None in self.gate_groups[side] or len(self.gate_groups[side]) != len(rows[side][layer]):
                    raise ValueError(f"gate_pool='people' needs the person of every {side} row: give each Sample its "
                                     "person (Sample(text, image, person)), as toolkit's sample builders do.")
            options = dict(options, forget_groups=self.gate_groups["forget"],
                           retain_groups=self.gate_groups["retain"])
        gate = fit_gate(kind, forget, self.rows("retain", layer, reads), reads=reads, **options)
        gate, report = calibrate(gate, outside, fpr, softness)
        report.update(kind=kind, reads=reads, pool=pool, n_forget_rows=int(len(forget)),
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

    def eraser(self, config: Any, *, fingerprint: dict | None = None, settings: dict | None = None,
               exclude_calibration: Sequence[str] = ()) -> Eraser:
        """The fitted :class:`~toolkit.eraser.Eraser` under ``config`` (a :class:`~toolkit.config.FitConfig`, read and
        never imported, so the fitter depends on no model code: its
        ``rank_policy``, ``gamma``, ``retain_weight``, ``lam``, steering positions, ``gate``, ``gate_fpr``,
        ``gate_softness``, ``gate_reads``, ``edit`` and ``latch``; what it reads and captures is the pipeline's).

        ``gate="linear"``: the paper's map (``2 d`` numbers a layer). A membership kind: a gate per layer
        (:meth:`gate`), calibrated to ``gate_fpr`` on the calibration rows of people not in
        ``exclude_calibration``; the map's direction is the same. ``fingerprint``: the model's, checked on load.
        """
        if not hasattr(config, "rank_policy") or not hasattr(config, "steer_positions"):
            raise TypeError(f"EraserFitter.eraser takes a FitConfig (got {type(config).__name__}): "
                            "fitter.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1, lam=4.0)).")
        gate = config.gate
        reads = config.gate_reads if config.keeps_gate_rows and self.gate_reads is not None else None
        maps, _, stats = self.solve(config.rank_policy, config.gamma, config.retain_weight) if gate == "linear" \
            else ({}, {}, {})
        if gate != "linear":
            direction = self.direction()
            for l in self.layers:
                g, report = self.gate(l, gate, fpr=config.gate_fpr, softness=config.gate_softness,
                                      exclude=exclude_calibration, reads=reads,
                                      pool=config.gate_pool)
                maps[l] = EraserLayer(l, g, direction.vectors[l][None].to(torch.float32))
                stats[l] = dict(report, direction_norm=float(direction.vectors[l].norm()))
        return Eraser(tuple(maps[l] for l in self.layers), config.lam, config.steer_positions(), fingerprint or {},
                      dict(settings or {}, layers_report=stats), edit=config.edit,
                      latch=config.latch and gate != "linear")

    def add_samples(self, *args, **kwargs) -> None:
        raise TypeError("EraserFitter takes tensors only (update_retain, update_forget, update_contrast): capture "
                        "samples into it with toolkit.add_samples(fitter, model, kind, samples).")
