"""The pipeline that feeds the fitter: samples -> activations -> :class:`~toolkit.fitter.EraserFitter`.

The fitter and the direction are maths on tensors; capture happens here, with the toolkit's tracing
(:func:`toolkit.tracing.iter_capture`, shared prompt prefixes included):

    fitter = EraserFitter(model.hidden_size, layers=[7])
    add_samples(fitter, model, "retain", retain)      # or fitter.update_retain(acts) from your own traces
    add_samples(fitter, model, "forget", forget)
    add_samples(fitter, model, "refusal", refusal)
    add_samples(fitter, model, "recall", recall)
    eraser = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.9), lam=4.0))

:func:`fit_from_samples` does all of it from plain lists under one :class:`~toolkit.config.FitConfig`;
:func:`erasure_direction` captures the two contrastive sets alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import FitConfig
from .direction import Direction, MeanAccumulator
from .eraser import Eraser
from .fitter import EraserFitter
from .models.loading import LoadedModel, Sample
from .tracing import CapturePositions, iter_capture

__all__ = ["SampleSet", "add_samples", "erasure_direction", "fit_from_samples"]

KINDS = ("retain", "forget", "refusal", "recall", "calibration")


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


def add_samples(fitter: EraserFitter, model: LoadedModel, kind: str, samples: Sequence[Sample], *,
                positions: CapturePositions = "last", weight: float = 1.0, formatted: bool = False,
                batch_size: int = 32, progress: bool | str = False, gate_rows: bool | None = None,
                people: Sequence[str] | None = None, statistics: bool = True,
                share_prefix: bool = True) -> EraserFitter:
    """Capture ``samples`` at ``fitter``'s layers and add them as ``kind``: retain, forget, refusal,
    recall or calibration (gate rows only; ``people``: one id per sample). Returns the fitter.

    ``gate_rows=True`` (with ``positions="last"``): also keep the rows for membership gates, in
    the features the fitter's gates read (one capture pass for both). ``None`` (default): keep them
    where a fitter with ``gate_reads`` wants them: forget and retain question rows (``positions="last"``,
    not templated), and always with ``statistics=False``: keep the gate rows only (the map's moments are
    left as they are: the fit pool's wrapped questions train the gate, not the null space).
    ``share_prefix``: questions about one image share its prefix's forward (:mod:`toolkit.prefix`).

    Memory: one batch of ``(batch_size, len(fitter.layers), width)`` activations on the model's device at a time.
    """
    if gate_rows is None:
        gate_rows = not statistics or (fitter.gate_reads is not None and kind in ("forget", "retain")
                                       and positions == "last" and not formatted)
    update = {"retain": lambda a: fitter.update_retain(a, weight), "forget": lambda a: fitter.update_forget(a, weight),
              "refusal": lambda a: fitter.update_contrast(refusal=a),
              "recall": lambda a: fitter.update_contrast(recall=a), "calibration": lambda a: None}
    if not statistics and not gate_rows and kind != "calibration":
        raise ValueError("statistics=False keeps gate rows only: leave gate_rows at its default (True then).")
    if kind not in update:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if not samples:
        raise ValueError(f"The {kind} set is empty.")
    keep = gate_rows or kind == "calibration"
    if keep and (positions != "last" or kind not in ("forget", "retain", "calibration")):
        raise ValueError("Gate rows are the last prompt token's (positions='last') of forget, retain or "
                         "calibration samples.")
    if kind == "calibration" and (people is None or len(people) != len(samples)):
        raise ValueError("Calibration samples need one person id each (people=...).")
    read = fitter.gate_reads if keep else positions
    if keep and read is None:
        raise ValueError("This fitter keeps no gate rows: create it with gate_reads= (toolkit.reads).")
    d = fitter.hidden_size
    # Each gate row's person and question kind, where the samples name the person (FitConfig.gate_pool).
    groups = [f"{s.person}|{'image' if s.image is not None else 'text'}" if s.person is not None else None
              for s in samples] if keep and kind != "calibration" else None
    # to_cpu=False: rows stay on the model's device; each statistic moves only what it keeps.
    for index, acts in iter_capture(model, samples, list(fitter.layers), read, batch_size=batch_size,
                                    progress=progress, formatted=formatted, to_cpu=False,
                                    share_prefix=share_prefix):
        if keep:
            rows = index.tolist()
            fitter.update_gate_rows(kind, acts, [people[i] for i in rows] if people else None,
                                    [groups[i] for i in rows] if groups else None)
            acts = {l: a[:, :d] for l, a in acts.items()}
        if statistics:
            update[kind](acts)
    return fitter


def erasure_direction(model: LoadedModel, refusal: Sequence[Sample], recall: Sequence[Sample],
                      layers: Sequence[int], *, variant: str = "multimodal", batch_size: int = 32,
                      progress: bool = False, share_prefix: bool = True) -> Direction:
    """``d_l = mean(refusal) - mean(recall)`` at the last prompt token, per layer, streamed in batches
    (:mod:`toolkit.direction`). Memory: two ``d`` float64 sums a layer plus one batch.

    ``variant="text_only"`` drops the images of both sets; ``"image_only"``
    requires both sets to share their texts (pairs differing only in the image).
    """
    if not refusal or not recall:
        raise ValueError(f"Both contrastive sets need samples (D+: {len(refusal)}, D-: {len(recall)}).")
    if variant == "text_only":
        refusal = [Sample(s.text) for s in refusal]
        recall = [Sample(s.text) for s in recall]
    elif variant == "image_only":
        if [s.text for s in refusal] != [s.text for s in recall]:
            raise ValueError("The image-only direction needs pairs that share their text and differ in the image.")
        if any(s.image is None for s in list(refusal) + list(recall)):
            raise ValueError("The image-only direction needs an image on every sample.")
    elif variant != "multimodal":
        raise ValueError(f"variant must be multimodal, text_only or image_only, got {variant!r}.")
    layers = model.check_layers(layers)
    plus, minus = MeanAccumulator(), MeanAccumulator()
    for acc, samples, name in ((plus, refusal, "D+ (refusal)"), (minus, recall, "D- (recall)")):
        for _, acts in iter_capture(model, samples, layers, "last", batch_size=batch_size,
                                    progress=progress and name, share_prefix=share_prefix):
            acc.update(acts)
    vectors = {l: plus.mean(l) - minus.mean(l) for l in layers}
    return Direction(vectors, {l: plus.mean(l) for l in layers}, {l: minus.mean(l) for l in layers},
                     plus.count, minus.count, variant)


def _sets(value: Any, name: str) -> list[SampleSet]:
    if isinstance(value, SampleSet):
        return [value]
    if value and all(isinstance(v, SampleSet) for v in value):
        return list(value)
    return [SampleSet(list(value), label=name)]


def fit_from_samples(model: LoadedModel, config: FitConfig, *, forget: Any, retain: Any, contrast: Any,
                     calibration: tuple[Sequence[Sample], Sequence[str]] | None = None,
                     settings: dict | None = None, progress: bool = False,
                     max_retain_rows: int = 8192) -> tuple[Eraser, EraserFitter]:
    """Fit an Eraser from plain sample lists under ``config`` (a :class:`~toolkit.config.FitConfig`: its layers,
    variant, map, gate and edit; ``layers=None``: every decoder layer).

    Args:
        forget, retain: ``Sample`` lists, or :class:`SampleSet`\\ s (to add answer-token rows
            with their own positions and weights).
        contrast: ``(refusal_samples, recall_samples)`` (direction by :func:`erasure_direction`
            with ``config.variant``), or a ready :class:`~toolkit.direction.Direction`.
        calibration: ``(samples, person ids)`` of people outside the fit and the forget list
            (validation people): membership gates set their threshold on them.

    With ``config.keeps_gate_rows``, the rows of the forget and retain sets read at the last prompt token are
    kept for membership gates in ``config.gate_reads`` and ``config.gate_reads_kept`` (whatever ``config.gate``,
    so another kind can be fitted from the same fitter).

    Returns ``(eraser, fitter)``; the fitter keeps the statistics (for the probes).
    """
    layers = model.check_layers(config.layers)
    gate_reads = config.gate_reads if config.keeps_gate_rows else None
    fitter = EraserFitter(model.hidden_size, layers, gate_reads=gate_reads,
                          keep_reads=config.gate_reads_kept if gate_reads else (), max_retain_rows=max_retain_rows)
    batch, share = config.batch_size, config.share_prefix
    if isinstance(contrast, Direction):
        direction = contrast
    else:
        refusal, recall = contrast
        direction = erasure_direction(model, refusal, recall, layers, variant=config.variant, batch_size=batch,
                                      progress=progress, share_prefix=share)
    fitter.set_direction(direction)
    for kind, value in (("retain", retain), ("forget", forget)):
        for part in _sets(value, kind):
            add_samples(fitter, model, kind, part.samples, positions=part.positions, weight=part.weight,
                        formatted=part.formatted, batch_size=batch,
                        progress=progress and f"{part.label or kind} activations",
                        statistics=part.statistics, share_prefix=share)
    if calibration is not None and gate_reads is not None:
        samples, people = calibration[:2]
        if len(samples):
            add_samples(fitter, model, "calibration", list(samples), people=list(people), batch_size=batch,
                        progress=progress and "calibration activations", share_prefix=share)
    eraser = fitter.eraser(config, fingerprint=model.fingerprint(), settings=settings)
    return eraser, fitter
