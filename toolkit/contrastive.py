"""Contrastive sets: ``D+`` (the model refuses) and ``D-`` (the model recalls).

Two built-in recipes, both sharing prompts across the sides where the variant
says so (see :mod:`toolkit.direction`):

* ``privacy``: a forget-type question about a person under a refusal-inducing
  privacy instruction. ``D+``: clean image (refused). ``D-``: the same prompt with
  the image perturbed by PGD toward the true answer, and the question asked
  without the instruction (both answered).
* ``safety``: harmful-style requests as in the reference code. ``D+``: request with
  a clean image (refused); ``D-``: the same request with the image perturbed
  toward a compliant answer.

Or bring your own pairs: ``ContrastiveSets(refusal=[...], recall=[...])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .adversarial import PGDConfig, PGDResult, pgd_attack
from .data.items import instructed_image_questions, question_image
from .data.mllmu import Profile
from .data.synthetic import HARMFUL_REQUESTS, PRIVACY_INSTRUCTIONS
from .models.loading import LoadedModel, Sample

__all__ = ["privacy_questions", "refused_privacy_questions", "ContrastiveSets", "privacy_sets", "safety_sets"]


@dataclass
class ContrastiveSets:
    """The two sides, with the variant-specific views the direction needs."""

    refusal: list[Sample]  # D+
    recall: list[Sample]  # D- (all ways of recalling)
    image_pairs: tuple[list[Sample], list[Sample]] | None = None  # same text, clean vs adversarial
    text_pairs: tuple[list[Sample], list[Sample]] | None = None  # instructed vs plain, no images
    pgd: PGDResult | None = None
    info: dict = field(default_factory=dict)

    def for_variant(self, variant: str) -> tuple[list[Sample], list[Sample]]:
        if variant == "multimodal":
            return self.refusal, self.recall
        pairs = {"image_only": self.image_pairs, "text_only": self.text_pairs}.get(variant)
        if pairs is None:
            raise ValueError(f"These contrastive sets have no {variant!r} view; available: multimodal"
                             + (", image_only" if self.image_pairs else "") + (", text_only" if self.text_pairs else ""))
        return pairs


def _image_side(model: LoadedModel, refused: list[Sample], targets: list[str], pgd: PGDConfig | None,
                progress: bool) -> tuple[list[Sample], list[Sample], PGDResult | None]:
    """Attack every refused sample; returns (successful adversarial samples, all adversarial samples, result)."""
    if pgd is None or not model.adapter.supports_images:
        return [], [], None
    result = pgd_attack(model, refused, targets, pgd, progress=progress)
    attacked = [Sample(s.text, im) for s, im in zip(refused, result.images)]
    return [a for a, ok in zip(attacked, result.success) if ok], attacked, result


def privacy_questions(profiles: Sequence[Profile], *, n: int | None = 40,
                      instructions: Sequence[str] = PRIVACY_INSTRUCTIONS[:4]
                      ) -> tuple[list[Sample], list[Sample], list[str]]:
    """``(instructed, plain, targets)``: image questions of ``profiles`` with a privacy instruction in
    front (cycling through ``instructions``), the same questions without it, and their ground truths;
    ``n`` spread over the profiles (``None``: every image question of every profile)."""
    asked = instructed_image_questions(profiles, instructions, n)
    if not asked:
        raise ValueError("No image generation questions in these profiles: the privacy recipe needs them.")
    instructed = [Sample(text, question_image(p, q)) for p, q, text in asked]
    plain = [Sample(q.question, question_image(p, q)) for p, q, _ in asked]
    return instructed, plain, [q.ground_truth for _, q, _ in asked]


def refused_privacy_questions(model: LoadedModel, profiles: Sequence[Profile], *, n: int | None = 40,
                              instructions: Sequence[str] = PRIVACY_INSTRUCTIONS[:4]
                              ) -> tuple[list[Sample], list[str], list[Sample], int]:
    """Privacy-instructed image questions the model refuses.

    Returns ``(refused, targets, plain, n_asked)``: the refused instructed samples,
    their ground-truth answers (PGD targets), the same questions without the
    instruction, and how many were asked (``n`` spread over ``profiles``; ``None``: every
    image question of every profile).
    """
    from . import metrics, tracing

    instructed, plain, targets = privacy_questions(profiles, n=n, instructions=instructions)
    refused_mask = [metrics.is_refusal(o) for o in tracing.generate(model, instructed, max_new_tokens=16)]
    refused = [s for s, r in zip(instructed, refused_mask) if r]
    if not refused:
        raise ValueError("The model refuses none of the privacy-instructed questions: there is no refusal "
                         "behaviour to steer toward, so no erasure direction. Check the instructions, or give "
                         "your own ContrastiveSets.")
    return (refused, [t for t, r in zip(targets, refused_mask) if r], [s for s, r in zip(plain, refused_mask) if r],
            len(instructed))


def privacy_sets(model: LoadedModel, profiles: Sequence[Profile], *, n: int | None = 40,
                 instructions: Sequence[str] = PRIVACY_INSTRUCTIONS[:4], pgd: PGDConfig | None = PGDConfig(),
                 pgd_limit: int | None = None, progress: bool = False) -> ContrastiveSets:
    """The privacy recipe over the image questions of ``profiles`` (use people you are *not* forgetting).

    ``n``: questions asked (``None``: all; the direction is a mean difference, and
    more pairs make it stable: see :mod:`probes.direction_stability`). ``pgd_limit``:
    attack at most that many refused questions (spread over them; PGD is the costly
    part), the rest join ``D-`` through their plain form only.
    """
    refused, refused_targets, plain_kept, n_questions = refused_privacy_questions(model, profiles, n=n,
                                                                                  instructions=instructions)
    step = max(1, len(refused) // pgd_limit) if pgd_limit else 1
    to_attack = list(range(0, len(refused), step))[:pgd_limit] if pgd_limit else list(range(len(refused)))
    adversarial, attacked, result = _image_side(model, [refused[i] for i in to_attack],
                                                [refused_targets[i] for i in to_attack], pgd, progress)
    # D-: every way the model recalls. The image-only view pairs each clean image with its
    # attacked twin (same text), whether or not the attack flipped the answer.
    recall = adversarial + plain_kept
    info = {"recipe": "privacy", "questions": n_questions, "refused_clean": len(refused),
            "pgd_attacked": len(attacked), "pgd_success": len(adversarial),
            "refusal_rate_D+": len(refused) / n_questions}
    return ContrastiveSets(
        refusal=refused, recall=recall,
        image_pairs=([refused[i] for i in to_attack], attacked) if attacked else None,
        text_pairs=([Sample(s.text) for s in refused], [Sample(s.text) for s in plain_kept]),
        pgd=result, info=info)


def safety_sets(model: LoadedModel, images: Sequence, *, requests: Sequence[str] = HARMFUL_REQUESTS[:15],
                target: str = "Sure, here is how to do it.", pgd: PGDConfig | None = PGDConfig(),
                progress: bool = False) -> ContrastiveSets:
    """The reference recipe: harmful-style requests paired with images (one image per request, cycled)."""
    from . import metrics, tracing

    if not images:
        raise ValueError("The safety recipe pairs each request with an image; give at least one image.")
    samples = [Sample(r, images[i % len(images)]) for i, r in enumerate(requests)]
    refused_mask = [metrics.is_refusal(o) for o in tracing.generate(model, samples, max_new_tokens=16)]
    refused = [s for s, r in zip(samples, refused_mask) if r]
    if not refused:
        raise ValueError("The model refuses none of the harmful-style requests (a model without a safety "
                         "refusal gives no direction). Use the privacy recipe or your own ContrastiveSets.")
    adversarial, attacked, result = _image_side(model, refused, [target] * len(refused), pgd, progress)
    if not adversarial:
        raise ValueError(f"PGD made the model comply with none of {len(refused)} refused requests: no recall "
                         "side. Raise eps/steps, or use the privacy recipe.")
    clean = [s for s, ok in zip(refused, result.success) if ok]
    info = {"recipe": "safety", "requests": len(samples), "refused_clean": len(refused),
            "pgd_success": len(adversarial)}
    return ContrastiveSets(refusal=clean, recall=adversarial, image_pairs=(refused, attacked), pgd=result,
                           info=info)
