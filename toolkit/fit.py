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

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .adversarial import PGDConfig
from .contrastive import ContrastiveSets, privacy_sets, safety_sets
from .data.mllmu import MLLMUBench, Profile
from .data.splits import PeopleSplit
from .direction import Direction
from .eraser import Eraser
from .data.items import items_from_profiles
from .data.wrappers import wrap_items
from .models.loading import LoadedModel, Sample, join_answer
from .fitter import EraserFitter, SampleSet, fit_from_samples
from .nullspace import FixedRatio, NullSpace, RankPolicy
from .reads import needs_prompt, parse_reads
from .tracing import Trailing

__all__ = ["FitConfig", "FitResult", "fit_eraser", "budget_people", "retain_question_samples", "fit_groups", "refit_forget", "fit_people", "question_samples", "wrapped_samples",
           "answer_samples", "calibration_samples", "eraser_with_gate", "refit_fitter", "rehearsal_eraser"]


@dataclass(frozen=True)
class FitConfig:
    layers: tuple[int, ...] = (-1,)
    forget_ratio: int = 10
    recipe: str = "privacy"  # privacy | safety
    variant: str = "multimodal"  # multimodal | image_only | text_only
    rank_policy: RankPolicy = FixedRatio(0.3)
    gamma: float = 0.1
    # Our extension: weight of the retain rows (target 0) in the least squares, per row relative to
    # the forget rows (alpha; the solver gets alpha * n_f / n_r). 0 is the reference method.
    retain_weight: float = 0.0
    lam: float = 1.0
    # Weight of teacher-forced answer-token rows (see the module docstring); 0 = the reference.
    answer_weight: float = 0.0
    # Where the eraser steers; None: "all" when answer_weight > 0 (the answer gate acts on generated
    # tokens), else "prompt" (the reference).
    positions: str | None = None
    include_real: bool = True
    # "last": retain activations at the last prompt token (the reference); "prompt": at every
    # prompt token, so the null space also avoids what retain prompts use anywhere.
    retain_positions: str = "last"
    # Contrastive questions (None: every image question of every fit person: a stable direction,
    # cosine 0.997 between disjoint halves on the default against 0.93 with 16; docs/results.md).
    n_contrast: int | None = None
    pgd: PGDConfig | None = PGDConfig()
    pgd_limit: int | None = 16  # PGD attacks at most this many refused questions (the costly part)
    batch_size: int = 32
    # Who may enter the fit: the retain / real people whose role is "fit". None: all of them (the reference).
    people: PeopleSplit | None = PeopleSplit()
    # The gate (toolkit.gates): "linear" is the paper's null-space map; "logistic" / "prototype" are
    # membership gates fitted on the forget vs fit-retain question rows and calibrated to gate_fpr on
    # validation people (so they need people=PeopleSplit(...)). gate_reads: what a membership gate reads
    # ("last+mean": the last prompt token and the prompt's mean state; it then steers at prefill only).
    gate: str = "linear"
    gate_reads: str = "last+mean"
    # More reads to keep gate rows in (the selection screens gates reading each; toolkit.reads).
    gate_reads_kept: tuple[str, ...] = ()
    # Hold each row's gate decision through its generation (toolkit.eraser.Eraser.latch; membership gates).
    latch: bool = False
    # Fit-pool wrappers per question (toolkit.data.wrappers) added to the membership gate's forget, retain and
    # calibration rows (not to the map's statistics); 0: the benchmark's phrasings only.
    wrap: int = 0
    gate_fpr: float = 0.05
    gate_softness: float = 0.0  # > 0: a sigmoid around the threshold (temperature = softness x score std)
    edit: str = "add"  # "add" (the paper) or "rotate" (norm-preserving)
    # Keep the rows membership gates need even for a linear gate (the selection compares kinds).
    gate_rows: bool = False
    # Questions about one image run its prompt prefix once (toolkit.prefix; the same states, less compute).
    share_prefix: bool = True
    # How many retain questions the fit reads (statistics and gate rows; None: every question of every fit
    # person). Drawn as whole people in a seeded order (budget_seed), so each image's prefix serves all its
    # questions; the last person drawn gives only as many as the budget has left.
    retain_budget: int | None = None
    budget_seed: int = 0

    @property
    def keeps_gate_rows(self) -> bool:
        return self.gate != "linear" or self.gate_rows

    def steer_positions(self) -> str:
        """Where the eraser steers: ``positions``, else "all" with answer rows and a gate reading the state
        (the answer gate acts on generated tokens), else "prompt" (the reference)."""
        if self.positions:
            return self.positions
        reads_prompt = self.gate != "linear" and needs_prompt(self.gate_reads)
        return "all" if self.answer_weight and not reads_prompt else "prompt"


@dataclass
class FitResult:
    eraser: Eraser
    direction: Direction
    spaces: dict[int, NullSpace]
    contrast: ContrastiveSets
    report: dict = field(default_factory=dict)
    fitter: EraserFitter | None = field(default=None, repr=False)


def question_samples(profiles: Sequence[Profile], split: str) -> list[Sample]:
    """Every question of every task type as the evaluation asks it."""
    return [Sample(it.prompt, it.image) for it in items_from_profiles(profiles, split)]


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


def budget_people(people: Sequence[Profile] | Sequence[Sequence[Profile]], budget: int | None, seed: int = 0
                  ) -> tuple[list[Profile], dict[str, int]]:
    """The people a retain budget reads and how many of each one's questions: ``(people, {id: questions})``.

    ``people``: one list, or several groups (the fit's fictitious and real people): the budget is shared among
    the groups in proportion to their questions (largest remainders), so a small budget still holds each kind
    of person. Within a group, people are drawn whole in the order of ``sha256(f"{seed}:{id}")`` until its share
    of questions (every task type, as :func:`question_samples` asks them); the last one drawn gives what is
    left. ``None``: everyone, every question. Refuses a budget larger than the questions there are, with one line.
    """
    groups = [list(g) for g in people] if people and not isinstance(people[0], Profile) else [list(people)]
    counts = {p.id: len(items_from_profiles([p], "retain")) for g in groups for p in g}
    everyone = [p for g in groups for p in g]
    total = sum(counts.values())
    if budget is None:
        return everyone, counts
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"retain_budget must be a positive number of questions or None (all), got {budget!r}.")
    if budget > total:
        raise ValueError(f"retain_budget={budget} is more than the {total} retain questions of the "
                         f"{len(everyone)} fit people; give at most {total}, or None for all of them.")
    sizes = [sum(counts[p.id] for p in g) for g in groups]
    exact = [budget * n / total for n in sizes]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(groups)), key=lambda i: exact[i] - shares[i], reverse=True)[:budget - sum(shares)]:
        shares[i] += 1
    chosen, take = [], {}
    for group, left in zip(groups, shares):
        for p in sorted(group, key=lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()):
            if left == 0:
                break
            take[p.id] = min(counts[p.id], left)
            left -= take[p.id]
            chosen.append(p)
    return chosen, take


def retain_question_samples(people: Sequence[Profile] | Sequence[Sequence[Profile]], budget: int | None,
                            seed: int = 0) -> list[Sample]:
    """The retain questions a fit with ``budget`` reads (:func:`budget_people`), in the people's order."""
    return _budget_samples(*budget_people(people, budget, seed))


def _budget_samples(chosen: Sequence[Profile], take: dict[str, int]) -> list[Sample]:
    return [Sample(it.prompt, it.image) for p in chosen for it in items_from_profiles([p], "retain")[:take[p.id]]]


def fit_groups(bench: MLLMUBench, config: FitConfig) -> list[list[Profile]]:
    """:func:`fit_people` as its two groups, fictitious retain people and real ones (a retain budget is shared
    between them)."""
    retain = fit_people(bench, config, real=False)
    return [retain, fit_people(bench, config)[len(retain):]]


def fit_people(bench: MLLMUBench, config: FitConfig, *, real: bool = True) -> list[Profile]:
    """The retain (and, unless ``real=False`` or ``config.include_real`` is off, real) people whose
    activations enter the fit under ``config``. ``real=False``: the retain split's only (the people
    contrastive pairs and training baselines draw on)."""
    retain = list(bench.retain(config.forget_ratio))
    real = list(bench.real()) if config.include_real and real else []
    if config.people is None:
        return retain + real
    return config.people.people(retain, "fit") + config.people.people(real, "fit")


def calibration_samples(bench: MLLMUBench, config: FitConfig, exclude: Sequence[str] = ()
                        ) -> tuple[list[Sample], list[str]]:
    """Every question of every validation person (retain and real, not in ``exclude``), with their
    ids: the rows membership gates set their threshold on. Empty without ``config.people``."""
    if config.people is None:
        return [], []
    retain = config.people.people(bench.retain(config.forget_ratio), "validation")
    real = config.people.people(bench.real(), "validation") if config.include_real else []
    drop = set(exclude)
    people = [p for p in retain + real if p.id not in drop]
    items = items_from_profiles(people, "calibration")
    if config.wrap:  # the fit pool's phrasings too: the threshold must hold under them
        items += wrap_items(items_from_profiles(people, "calibration", ("generation",)), per_question=config.wrap,
                            seed=2, half="fit")
    return [Sample(it.prompt, it.image) for it in items], [it.person for it in items]


def wrapped_samples(profiles: Sequence[Profile], split: str, config: FitConfig, seed: int = 0) -> list[Sample]:
    """The fit pool's wrapped copies of every generation question of ``profiles`` (``config.wrap`` each)."""
    items = wrap_items(items_from_profiles(profiles, split, ("generation",)), per_question=config.wrap, seed=seed,
                       half="fit")
    return [Sample(it.prompt, it.image) for it in items]


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

    Retain statistics and contrastive pairs come from :func:`fit_people` only.
    """
    start = time.time()
    bench = MLLMUBench(bench) if isinstance(bench, (str, Path)) else bench
    layers = model.check_layers(list(config.layers))
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
    retain_samples = _budget_samples(retain_people, take)
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
    positions = config.steer_positions()
    eraser, fitter = fit_from_samples(model, forget=_forget_sets(model, forget, config), retain=retain_sets,
                                      contrast=(plus, minus), layers=layers, policy=config.rank_policy,
                                      gamma=config.gamma, retain_weight=config.retain_weight, lam=config.lam,
                                      positions=positions, variant=config.variant, batch_size=config.batch_size,
                                      progress=progress, gate=config.gate,
                                      gate_reads=config.gate_reads if config.keeps_gate_rows else None,
                                      calibration=calibration_samples(bench, config) if config.keeps_gate_rows
                                      else None, gate_fpr=config.gate_fpr, gate_softness=config.gate_softness,
                                      edit=config.edit, keep_reads=config.gate_reads_kept, latch=config.latch,
                                      share_prefix=config.share_prefix)
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


def _settings(config: FitConfig, report: dict) -> dict:
    settings = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in asdict(config).items()}
    settings["rank_policy"] = repr(config.rank_policy)
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
    fitter.set_direction(result.direction)
    for part in _forget_sets(model, list(forget), config):
        fitter.add_samples(model, "forget", part.samples, positions=part.positions, weight=part.weight,
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
    eraser = fitter.eraser(config.rank_policy, config.gamma, retain_weight=config.retain_weight, lam=config.lam,
                           positions=config.steer_positions(), fingerprint=model.fingerprint(), gate=config.gate,
                           gate_fpr=config.gate_fpr, gate_softness=config.gate_softness, edit=config.edit,
                           exclude_calibration=exclude, gate_reads=config.gate_reads if config.keeps_gate_rows
                           else None, latch=config.latch)
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
