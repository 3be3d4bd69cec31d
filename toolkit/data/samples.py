"""The sample lists the fit reads, built from benchmark people: questions, retain budgets, calibration rows.

Plain data (:class:`~toolkit.models.loading.Sample` lists and :class:`~toolkit.data.mllmu.Profile` lists); who
enters the fit is decided by a :class:`~toolkit.config.FitConfig`'s ``people``, ``forget_ratio``, ``include_real``
and ``wrap`` (read here, never imported: the configuration sits above the data).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..models.loading import Sample
from .items import items_from_profiles
from .mllmu import MLLMUBench, Profile
from .wrappers import wrap_items

if TYPE_CHECKING:  # the configuration sits above the data path; only its fields are read here
    from ..config import FitConfig

__all__ = ["question_samples", "budget_people", "retain_question_samples", "budget_samples", "fit_groups",
           "fit_people", "calibration_samples", "wrapped_samples"]


def question_samples(profiles: Sequence[Profile], split: str) -> list[Sample]:
    """Every question of every task type as the evaluation asks it."""
    return [Sample(it.prompt, it.image, it.person) for it in items_from_profiles(profiles, split)]


def budget_people(people: Sequence[Profile] | Sequence[Sequence[Profile]], budget: int | None, seed: int = 0,
                  what: str = "retain") -> tuple[list[Profile], dict[str, int]]:
    """The people a retain budget reads and how many of each one's questions: ``(people, {id: questions})``.

    ``people``: one list, or several groups (the fit's fictitious and real people): the budget is shared among
    the groups in proportion to their questions (largest remainders), so a small budget still holds each kind
    of person. Within a group, people are drawn whole in the order of ``sha256(f"{seed}:{id}")`` until its share
    of questions (every task type, as :func:`question_samples` asks them); the last one drawn gives what is
    left. ``None``: everyone, every question. Refuses a budget larger than the questions there are, with one line
    (``what``: which budget, for that line: "retain" or "calibration").
    """
    groups = [list(g) for g in people] if people and not isinstance(people[0], Profile) else [list(people)]
    counts = {p.id: len(items_from_profiles([p], "retain")) for g in groups for p in g}
    everyone = [p for g in groups for p in g]
    total = sum(counts.values())
    if budget is None:
        return everyone, counts
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"{what}_budget must be a positive number of questions or None (all), got {budget!r}.")
    if budget > total:
        whose = "fit" if what == "retain" else "validation"
        raise ValueError(f"{what}_budget={budget} is more than the {total} {what} questions of the "
                         f"{len(everyone)} {whose} people; give at most {total}, or None for all of them.")
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
    return budget_samples(*budget_people(people, budget, seed))


def budget_samples(chosen: Sequence[Profile], take: dict[str, int]) -> list[Sample]:
    return [Sample(it.prompt, it.image, it.person) for p in chosen
            for it in items_from_profiles([p], "retain")[:take[p.id]]]


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
    ids: the rows membership gates set their threshold on (and the gate screening counts false fires on).
    Empty without ``config.people``. ``config.calibration_budget``: at most that many questions, as whole people
    (:func:`budget_people`, seed ``config.budget_seed``)."""
    if config.people is None:
        return [], []
    retain = config.people.people(bench.retain(config.forget_ratio), "validation")
    real = config.people.people(bench.real(), "validation") if config.include_real else []
    drop = set(exclude)
    groups = [[p for p in retain if p.id not in drop], [p for p in real if p.id not in drop]]
    people, take = budget_people([g for g in groups if g], config.calibration_budget, config.budget_seed,
                                 "calibration")
    # A budget reads whole people in a seeded order (the last one cut), shared between fictitious and real ones
    # as the retain budget is; their wrapped copies follow the questions read.
    items = [it for p in people for it in items_from_profiles([p], "calibration")[:take[p.id]]]
    if config.wrap:  # the fit pool's phrasings too: the threshold must hold under them
        items += wrap_items([it for it in items if it.task == "generation"], per_question=config.wrap,
                            seed=2, half="fit")
    return [Sample(it.prompt, it.image, it.person) for it in items], [it.person for it in items]


def wrapped_samples(profiles: Sequence[Profile], split: str, config: FitConfig, seed: int = 0) -> list[Sample]:
    """The fit pool's wrapped copies of every generation question of ``profiles`` (``config.wrap`` each)."""
    items = wrap_items(items_from_profiles(profiles, split, ("generation",)), per_question=config.wrap, seed=seed,
                       half="fit")
    return [Sample(it.prompt, it.image, it.person) for it in items]
