"""Benchmark rows as items: one question each, in the evaluation's prompt formats, ready to generate.

The data layer's job (the evaluation, the fit, the selection and the studies all read these):
:class:`Item` and :func:`items_from_profiles`; :func:`instructed_image_questions` for the privacy
recipe and the acceptance table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .mllmu import Profile
from .prompts import cloze_prompt, generation_prompt, mcq_prompt

__all__ = ["Item", "items_from_profiles", "instructed_image_questions", "question_image"]


@dataclass(frozen=True)
class Item:
    """One benchmark question, ready to generate."""

    split: str
    person: str
    task: str  # classification | generation | cloze | refusal
    modality: str  # image | text
    prompt: str  # the user message (before the chat template)
    reference: str  # correct letter, or ground-truth text
    image: Any = field(default=None, repr=False)  # bytes or PIL image
    answer_key: str | None = None  # the fact, for leakage
    options: dict | None = field(default=None, compare=False)
    question: str = ""


def items_from_profiles(profiles: Sequence[Profile], split: str,
                        tasks: Sequence[str] = ("classification", "generation", "cloze"),
                        all_images: bool = False) -> list[Item]:
    """Benchmark items for ``profiles``. ``all_images``: one item per image (Test_Set)."""
    out: list[Item] = []
    for p in profiles:
        # One pass per image with all_images (Test_Set: every question on every image), else one pass in
        # which each image question shows its own image (a hand-written list may give several).
        passes = range(len(p.image_bytes)) if all_images and p.image_bytes else [None]
        for view in passes:
            def add(task, q, prompt, ref, key=None, options=None):
                if q.modality == "text":
                    if view:
                        return  # text questions do not depend on the image: once per person
                    image = None
                else:
                    image = p.image_bytes[q.image if view is None else view]
                out.append(Item(split, p.id, task, q.modality, prompt, ref, image, key, options, q.question))

            if "classification" in tasks:
                for q in p.classification:
                    add("classification", q, mcq_prompt(q.question, q.options), q.answer, q.options.get(q.answer),
                        q.options)
            if "generation" in tasks:
                for q in p.generation:
                    add("generation", q, generation_prompt(q.question, q.modality == "image"), q.ground_truth,
                        q.answer_key)
            if "cloze" in tasks:
                for q in p.cloze:
                    add("cloze", q, cloze_prompt(q.question), q.ground_truth, q.ground_truth)
    return out


def instructed_image_questions(profiles: Sequence[Profile], instructions: Sequence[str], n: int | None = None
                               ) -> list[tuple[Profile, Any, str]]:
    """``(profile, question, instructed text)`` for the image generation questions of ``profiles``, each
    with an instruction in front (cycling through ``instructions``); ``n`` spread evenly over them
    (``None``: all). Empty when the profiles have no image question."""
    questions = [(p, q) for p in profiles for q in p.generation if q.modality == "image"]
    if n is not None:
        questions = questions[:: max(1, len(questions) // n)][:n]
    return [(p, q, f"{instructions[i % len(instructions)]} {q.question}") for i, (p, q) in enumerate(questions)]


def question_image(profile: Profile, question) -> Any:
    """The image an image question about ``profile`` shows (its own, where a list gives several)."""
    return profile.image_bytes[question.image]
