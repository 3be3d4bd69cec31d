"""Fitting an Eraser on a benchmark: direction -> null space -> map.

    contrastive sets (D+, D-) --capture--> erasure direction d_l
    retain questions          --stream---> H_r^T H_r --eigh--> Q_l (null space)
    forget questions          --stream---> H_f^T H_f, H_f^T 1 --solve--> w_l
    Eraser(maps = {l: (w_l, d_l)}, lam, positions)

Retain activations: every question of every task type of the retain people
whose role is ``fit`` in ``config.people`` (a :class:`~toolkit.data.splits.PeopleSplit`),
plus the real people (``Retain_Set``) with that role (``include_real=False``
leaves them all out). The other people (validation: settings are chosen on them;
evaluation: utility is reported on them) never reach the fit, nor do they give
contrastive pairs. ``people=None`` fits on every retain and real person, as the
reference does (its utility figures are then in-fit figures). Forget
activations: every forget-split question of every task type. All at the last
prompt token, in the prompt formats the evaluation uses.

Answer tokens (our extension, ``answer_weight > 0``; 0 is the reference). A
fact often surfaces only after the first generated words: "What is the name
of the person in the image?" is answered "This is <name>.", so at the last
prompt token a forget face and a retain face look alike (both say "This"),
and a gate read there cannot tell them apart (measured on the first default: mean
gate 0.1 on forget name questions against 0.35-0.5 on the other forget
questions). With ``answer_weight`` the fit also reads the teacher-forced states
that predict each answer token of every generation question: forget ones join
the least squares with target 1 (each row weighted ``answer_weight``), retain
ones join the null space and the retain penalty. Steer with
``positions="all"`` so the gate is recomputed at every generated token; that is
where those rows pay off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import FitConfig
from .contrastive import ContrastiveSets, privacy_sets, safety_sets
from .data.items import items_from_profiles
from .data.mllmu import MLLMUBench, Profile
from .data.samples import (budget_people, budget_samples, calibration_samples, fit_groups, fit_people,
                           question_samples, wrapped_samples)
from .direction import Direction
from .eraser import Eraser
from .fitter import EraserFitter
from .models.loading import LoadedModel, Sample, join_answer
from .nullspace import NullSpace
from .pipeline import SampleSet, add_samples, fit_from_samples
from .reads import parse_reads
from .tracing import Trailing

__all__ = ["FitResult", "fit_eraser", "answer_samples", "refit_fitter", "refit_forget", "rehearsal_eraser",
           "eraser_with_gate"]


@dataclass
class FitResult:
    eraser: Eraser
    direction: Direction
    spaces: dict[int, NullSpace]
    contrast: ContrastiveSets
    report: dict = field(default_factory=dict)
    fitter: EraserFitter | None = field(default=None, repr=False)


def answer_samples(model: LoadedModel, profiles: Sequence[Profile], split: str) -> tuple[list[Sample], Trailing]:
    """Teacher-forced generation answers: formatted "prompt + ground truth" texts, and the
    positions that predict each answer token (capture with ``formatted=True``)."""
    samples, counts = [], []
    for it in items_from_profiles(profiles, split, tasks=("generation",)):
        prompt = model.format_prompt(it.prompt, image=it.image is not None)
        try:
            counts.append(len(model.continuation_ids(prompt, it.reference)))
        except ValueError as err:
            raise ValueError(f"{err} Use answer_weight=0 for this model.") from None
        samples.append(Sample(join_answer(prompt, it.reference), it.image))
    return samples, Trailing(tuple(counts))


def _forget_sets(model: LoadedModel, forget: Sequence[Profile], config: FitConfig) -> list[SampleSet]:
    sets = [SampleSet(question_samples(forget, "forget"), label="forget")]
    if config.wrap and config.keeps_gate_rows:
        sets.append(SampleSet(wrapped_samples(forget, "forget", config), label="forget, fit pool", statistics=False))
    if config.answer_weight:
        samples, where = answer_samples(model, forget, "forget")
        sets.append(SampleSet(samples, where, config.answer_weight, formatted=True, label="forget answers"))
    return sets


def fit_eraser(model: LoadedModel, bench: MLLMUBench | Any, config: FitConfig = FitConfig(), *,
               contrast: ContrastiveSets | None = None, forget: Sequence[Profile] | None = None,
               progress: bool = False) -> FitResult:
    """Fit an Eraser for ``bench``'s forget split ``config.forget_ratio`` (or for the people ``forget``).

    Args:
        model: the model to steer (any family, any device and dtype).
        bench: an :class:`~toolkit.data.mllmu.MLLMUBench` (or its folder), or a
            :class:`~toolkit.data.request.ForgetRequest`.
        config: what the fit reads and solves (:class:`~toolkit.config.FitConfig`; ``layers=None``: every layer).
        contrast: ready contrastive sets (``None``: built from the fit people with ``config.recipe``, PGD included).
        forget: the people to forget, instead of the benchmark's forget split.
        progress: progress bars.

    Retain statistics, gate rows and contrastive pairs come from the fit people only
    (:func:`toolkit.data.samples.fit_people`); validation people give the membership gates' calibration rows.

    Returns a :class:`FitResult`: the eraser, the direction, the null spaces, the contrastive sets, a report (rows
    read, people, seconds) and the fitter with its statistics (for refits and probes). Memory: the model, plus two
    ``d x d`` moments per fitted layer and the gates' rows (:class:`~toolkit.fitter.EraserFitter`).
    """
    start = time.time()
    bench = MLLMUBench(bench) if isinstance(bench, (str, Path)) else bench
    layers = model.check_layers(config.layers)
    config = replace(config, layers=tuple(layers))
    forget = list(bench.forget(config.forget_ratio) if forget is None else forget)
    retain_people = fit_people(bench, config)
    if not forget:
        raise ValueError(f"The forget split forget_{config.forget_ratio} is empty: nothing to erase.")
    if not retain_people:
        raise ValueError("No retain person has the role 'fit' in config.people: nothing to build the null space "
                         "from. Raise PeopleSplit.fit or give the benchmark more people.")
    overlap = {p.id for p in forget} & {p.id for p in retain_people}
    if overlap:
        raise ValueError(f"Forget and retain splits share people {sorted(overlap)[:5]}: the null space would "
                         "contain the forget activations. Fix the splits.")
    if config.answer_weight < 0:
        raise ValueError(f"answer_weight must be >= 0, got {config.answer_weight}.")
    if config.keeps_gate_rows and config.people is None:
        raise ValueError(f"A {config.gate} gate sets its threshold on validation people: fit with "
                         "FitConfig(people=PeopleSplit(...)), not people=None.")
    # The retain budget (checked before anything runs): the people read, the last one's questions cut to it.
    groups = fit_groups(bench, config)
    retain_people, take = budget_people(groups, config.retain_budget, config.budget_seed)
    retain_samples = budget_samples(retain_people, take)
    if contrast is None:
        # Contrastive pairs from fit people only (never validation or evaluation people).
        contrast_people = fit_people(bench, config, real=False)
        # The text-only variant drops the images, so adversarial ones would be computed for nothing.
        pgd = None if config.variant == "text_only" else config.pgd
        if config.recipe == "privacy":
            contrast = privacy_sets(model, contrast_people, n=config.n_contrast, pgd=pgd, pgd_limit=config.pgd_limit,
                                    progress=progress)
        elif config.recipe == "safety":
            contrast = safety_sets(model, [p.image_bytes[0] for p in contrast_people[:15]], pgd=pgd,
                                   progress=progress)
        else:
            raise ValueError(f"Unknown recipe {config.recipe!r}: privacy or safety.")
    plus, minus = contrast.for_variant(config.variant)
    retain_sets = [SampleSet(retain_samples, config.retain_positions, label="retain")]
    if config.wrap and config.keeps_gate_rows:
        retain_sets.append(SampleSet(wrapped_samples(retain_people, "retain", config, seed=1),
                                     label="retain, fit pool", statistics=False))
    if config.answer_weight:
        samples, where = answer_samples(model, retain_people, "retain")
        retain_sets.append(SampleSet(samples, where, formatted=True, label="retain answers"))
    eraser, fitter = fit_from_samples(model, config, forget=_forget_sets(model, forget, config), retain=retain_sets,
                                      contrast=(plus, minus), progress=progress,
                                      calibration=calibration_samples(bench, config) if config.keeps_gate_rows
                                      else None)
    direction = fitter.direction()
    spaces = {l: fitter.null_space(l, config.rank_policy) for l in layers}
    report = {"layers": eraser.settings["layers_report"], "contrast": contrast.info,
              "n_retain": fitter.retain[layers[0]].count, "n_forget": fitter.forget[layers[0]].count,
              "fit_people": [p.id for g in groups for p in g], "retain_read": [p.id for p in retain_people],
              "retain_budget": config.retain_budget, "forget_people": [p.id for p in forget],
              "direction_variant": config.variant, "fit_seconds": round(time.time() - start, 2)}
    if contrast.pgd is not None:
        report["pgd_success_rate"] = contrast.pgd.success_rate
    eraser = replace(eraser, settings=_settings(config, report))
    return FitResult(eraser, direction, spaces, contrast, report, fitter)


# The fit report's lists of person ids (the eraser file stores their lengths under gate_pool="people").
_ID_LISTS = ("fit_people", "retain_read", "forget_people")


def _settings(config: FitConfig, report: dict) -> dict:
    settings = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in asdict(config).items()}
    settings["rank_policy"] = repr(config.rank_policy)
    if config.gate_pool == "people":
        # The mode that keeps no individual row keeps no names either: the file says how many, not who.
        report = {k: (len(v) if k in _ID_LISTS and isinstance(v, list) else v) for k, v in report.items()}
    settings["report"] = report
    return settings


def refit_fitter(model: LoadedModel, result: FitResult, forget: Sequence[Profile], config: FitConfig,
                 *, progress: bool = False) -> EraserFitter:
    """The fit's statistics with another forget group (only its forget rows are captured anew):
    what :func:`refit_forget` solves, kept so that several gates can be read off one capture."""
    if result.fitter is None:
        raise ValueError("This FitResult keeps no fitter statistics; refit with fit_eraser.")
    fitted = set(result.report.get("fit_people", []))
    clash = sorted(fitted & {p.id for p in forget})
    if clash:
        raise ValueError(f"People {clash[:5]} are in the fit's retain set; they cannot be forgotten by it.")
    old = result.fitter
    fitter = EraserFitter(old.hidden_size, old.layers, gate_reads=old.default_reads, keep_reads=(old.gate_reads,)
                          if old.gate_reads else (), precision=old.precision, block_rows=old.block_rows)
    fitter.retain = old.retain  # shared, read-only: solve() never changes them (eigh cache included)
    # Shared likewise: the retain and calibration rows of membership gates (forget rows are new).
    fitter.gate_rows["retain"], fitter.gate_rows["calibration"] = old.gate_rows["retain"], old.gate_rows["calibration"]
    fitter.calibration_people = old.calibration_people
    fitter.gate_groups["retain"] = old.gate_groups["retain"]
    fitter.set_direction(result.direction)
    for part in _forget_sets(model, list(forget), config):
        add_samples(fitter, model, "forget", part.samples, positions=part.positions, weight=part.weight,
                    formatted=part.formatted, batch_size=config.batch_size,
                    progress=progress and f"{part.label} activations", statistics=part.statistics,
                    share_prefix=config.share_prefix)
    return fitter


def _eraser(model: LoadedModel, fitter: EraserFitter, config: FitConfig, report: dict,
            exclude: Sequence[str] = ()) -> Eraser:
    """``fitter``'s eraser with ``config``'s gate, map and edit; ``exclude``: people left out of the calibration."""
    if config.keeps_gate_rows and (fitter.gate_reads is None or not set(parse_reads(config.gate_reads))
                                   <= set(parse_reads(fitter.gate_reads))):
        raise ValueError(f"The fit kept {'no' if fitter.gate_reads is None else repr(fitter.gate_reads)} gate rows; "
                         f"a {config.gate} gate reading {config.gate_reads!r} needs FitConfig(gate_rows=True, "
                         f"gate_reads={config.gate_reads!r}) (or gate_reads_kept) at fit time.")
    eraser = fitter.eraser(config, fingerprint=model.fingerprint(), exclude_calibration=exclude)
    return replace(eraser, settings=_settings(config, dict(report, layers=eraser.settings["layers_report"])))


def rehearsal_eraser(model: LoadedModel, result: FitResult, fitter: EraserFitter, forget: Sequence[Profile],
                     config: FitConfig) -> Eraser:
    """The eraser of a :func:`refit_fitter` for ``forget`` under ``config`` (any gate kind). The people
    now "forgotten" are validation people: they leave the calibration rows."""
    report = dict(result.report, forget_people=[p.id for p in forget], rehearsal=True)
    return _eraser(model, fitter, config, report, exclude=[p.id for p in forget])


def refit_forget(model: LoadedModel, result: FitResult, forget: Sequence[Profile], config: FitConfig,
                 *, progress: bool = False) -> Eraser:
    """The same fit (retain statistics, null spaces, direction) with another forget group.

    Only the forget rows are captured anew; used by the rehearsal (settings chosen by
    "forgetting" validation people, see :mod:`toolkit.data.splits`).
    """
    fitter = refit_fitter(model, result, forget, config, progress=progress)
    return rehearsal_eraser(model, result, fitter, forget, config)


def eraser_with_gate(model: LoadedModel, result: FitResult, config: FitConfig, gate: str) -> Eraser:
    """The same fit's eraser with another gate kind (no new capture; the fit must have kept gate rows
    for a membership kind: ``FitConfig(gate_rows=True)``)."""
    if result.fitter is None:
        raise ValueError("This FitResult keeps no fitter statistics; refit with fit_eraser.")
    return _eraser(model, result.fitter, replace(config, gate=gate), result.report)
