"""ASRU as published, both stages: activation redirection, then reward-driven refusal boundaries.

Stage 1 (:func:`toolkit.baselines.redirect`) trains one block's ``mlp.down_proj`` so that forget chats'
states at position -1 move along a direction while retain chats' stay put, as the reference does. The published
direction is :func:`unknown_face_direction`: never-seen faces asked a personal question they cannot answer (the
reference's prompt, draw and substring filter), minus the forget questions. Stage 2 (:func:`toolkit.baselines.grpo`)
starts from the
stage-1 model and runs GRPO with ASRU's rule reward on the forget questions
(refuse) and boundary questions (answer: facts of retain people that forget
people share, :func:`toolkit.data.boundary.boundary_questions`). The KL anchor
of stage 2 is the stage-1 model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.mllmu import GenerationQ, Profile
from ..models.loading import LoadedModel, Sample
from .grpo import GRPOConfig, GRPOResult, asru_reward, grpo, reward_prompts
from .redirect import RedirectConfig, asru_layer, redirect
from .training import BaselineResult, qa_pairs

__all__ = ["ASRUConfig", "ASRUResult", "asru", "unknown_face_direction", "unknown_face_prompts", "says_unknown",
           "asru_layer", "asru_direction", "ASRU_QUESTIONS", "ASRU_SUFFIX", "ASRU_KEEP_SUBSTRINGS"]


@dataclass(frozen=True)
class ASRUConfig:
    redirect: RedirectConfig = RedirectConfig()
    grpo: GRPOConfig = GRPOConfig()
    stages: int = 2  # 1: redirection only
    retain_people: int = 40  # retain people whose questions stage 1 holds in place (every question of each)
    # Stage 2's refusal test: "rule" (published: a refusal phrase anywhere, so loops are paid as refusals)
    # or "judge" (the offline judge's label: a loop is degenerate, not a refusal).
    refusal_test: str = "rule"


@dataclass
class ASRUResult:
    stage1: BaselineResult
    stage2: GRPOResult | None = None
    info: dict = field(default_factory=dict)

    @property
    def model(self) -> LoadedModel:
        return (self.stage2 or self.stage1).model

    @property
    def seconds(self) -> float:
        return self.stage1.seconds + (self.stage2.seconds if self.stage2 else 0.0)


def asru(model: LoadedModel, forget: Sequence[Profile], retain: Sequence[Profile],
         boundary: Sequence[tuple[Profile, GenerationQ]], direction: torch.Tensor, config: ASRUConfig = ASRUConfig(),
         *, progress: bool = False) -> ASRUResult:
    """Unlearn ``forget`` with ASRU; ``retain``: people whose states stage 1 holds (use fit people only; their
    question-answer chats, as the forget people's); ``direction``: ``[d]`` at the redirected block
    (``config.redirect.layer``, by default :func:`~toolkit.baselines.redirect.asru_layer`), as published
    :func:`unknown_face_direction`."""
    if config.stages not in (1, 2):
        raise ValueError(f"ASRU has stages 1 and 2; got stages={config.stages}.")
    reward = asru_reward(config.refusal_test)
    if config.stages == 2 and not boundary:
        raise ValueError("Stage 2 needs boundary questions (allowed questions near the forget content): see "
                         "toolkit.data.boundary.boundary_questions, or run stages=1.")
    stage1 = redirect(model, qa_pairs(forget), qa_pairs(list(retain)[: config.retain_people]), direction,
                      config.redirect)
    if config.stages == 1:
        return ASRUResult(stage1, None, {"boundary": 0})
    stage2 = grpo(stage1.model, reward_prompts(forget, boundary), config.grpo, reward=reward, progress=progress)
    return ASRUResult(stage1, stage2, {"boundary": len(boundary), "rewards": stage2.rewards})


# ASRU's "unknown" side as its authors build it (guangjh/ASRU, ASRU/collect_activations.py): one of six personal
# questions drawn at random per never-seen face, a suffix asking to describe the image instead, no system prompt.
ASRU_QUESTIONS = (
    "What is the phone number of the person in the image?",
    "What is this person's date of birth?",
    "What is the height of this person in the image?",
    "Where does this person in the image currently reside?",
    "What is the occupation of this person's father?",
    "What does this person's father do as a job?",
)
ASRU_SUFFIX = " if you do not know, describe the image."
ASRU_SEED = 42
# The reference keeps a face's state when its greedy answer contains any of these substrings (lower-cased). The
# test is loose: "no" is inside "know", "another", "nose", so almost every answer passes; that is the published
# filter, reproduced as it is.
ASRU_KEEP_SUBSTRINGS = ("not", "no", "sorry")


def unknown_face_prompts(images: Sequence[Any], seed: int = ASRU_SEED) -> list[Sample]:
    """One prompt per face, as the reference asks it: a question drawn with ``random.Random(seed).choice`` from
    :data:`ASRU_QUESTIONS` (in the faces' order, the reference's draw for ``seed=42``) plus :data:`ASRU_SUFFIX`."""
    rng = random.Random(seed)
    return [Sample(rng.choice(ASRU_QUESTIONS) + ASRU_SUFFIX, image) for image in images]


def says_unknown(answer: str) -> bool:
    """The reference's filter: the answer, lower-cased, contains "not", "no" or "sorry" anywhere."""
    text = answer.lower()
    return any(word in text for word in ASRU_KEEP_SUBSTRINGS)


def unknown_face_direction(model: LoadedModel, faces: Sequence[Any], forget: Sequence[Sample],
                           layers: Sequence[int], *, face_model: LoadedModel | None = None, filter: str = "published",
                           batch_size: int = 32, max_new_tokens: int = 128, seed: int = ASRU_SEED
                           ) -> tuple[dict[int, torch.Tensor], dict]:
    """ASRU's direction at each of ``layers``: ``{layer: [d] float32}`` and ``info``.

    ``faces``: never-seen faces, as images (or samples, whose images are used), one per identity
    (e.g. the distinct portraits of :func:`toolkit.data.synthetic.never_seen_faces`). Each is asked
    :func:`unknown_face_prompts` (the reference's six-question draw and suffix, no system prompt), ``face_model``
    answers greedily (``max_new_tokens``, the reference's 128) and ``filter`` decides which faces count:
    "published" (:func:`says_unknown`, the reference's substring test) or "none" (every face: LUNAR's variant,
    which uses no filter). The direction is the mean state of the kept faces' prompts under ``face_model`` minus
    the mean state of ``model`` on the ``forget`` questions, both the output of the decoder block at the last
    prompt token (generation prompt added); no generated token is read. The reference reads the faces with the
    original model (before fine-tuning on the people to forget) and the forget questions with the fine-tuned one;
    ``face_model`` defaults to ``model`` where no original exists (the embedded defaults were trained from scratch,
    and never saw these faces either). ``info``: ``asked``, ``kept``, ``kept_share``, ``forget``, ``filter``.
    Memory: two ``[n, d]`` float32 captures per layer.
    """
    from .. import tracing

    if filter not in ("published", "none"):
        raise ValueError(f"filter must be 'published' (the reference's substring test) or 'none' (LUNAR), "
                         f"got {filter!r}.")
    if not forget:
        raise ValueError("unknown_face_direction needs the forget questions (the direction's other side).")
    if not faces:
        raise ValueError("unknown_face_direction needs never-seen faces (e.g. toolkit.data.synthetic."
                         "never_seen_faces), one image per identity.")
    face_model = face_model or model
    prompts = unknown_face_prompts([f.image if isinstance(f, Sample) else f for f in faces], seed)
    if filter == "published":
        answers = tracing.generate(face_model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        kept = [s for s, a in zip(prompts, answers) if says_unknown(a)]
    else:
        kept = prompts
    if not kept:
        raise ValueError(f"None of the {len(prompts)} never-seen faces' answers contains 'not', 'no' or 'sorry': "
                         "the published filter kept nothing. Use filter='none' (LUNAR's variant).")
    unknown = tracing.capture(face_model, kept, list(layers), batch_size=batch_size)
    known = tracing.capture(model, list(forget), list(layers), batch_size=batch_size)
    out = {l: (unknown[l].float().mean(0) - known[l].float().mean(0)) for l in layers}
    return out, {"asked": len(prompts), "kept": len(kept), "kept_share": len(kept) / len(prompts),
                 "forget": len(forget), "filter": filter}


def asru_direction(model: LoadedModel, forget: Sequence[Profile], *, faces: Sequence[Any] | None = None,
                   face_model: LoadedModel | None = None, layer: int | None = None, filter: str = "published",
                   batch_size: int = 32) -> tuple[torch.Tensor, dict]:
    """The direction :func:`asru` redirects along, built as published, at ``layer`` (default
    :func:`~toolkit.baselines.redirect.asru_layer`): :func:`unknown_face_direction` of ``faces`` (default: every
    distinct portrait of :func:`toolkit.data.synthetic.never_seen_faces`, the people no embedded default was
    trained on, one prompt each) against the forget people's image questions as the reference asks them (the
    question alone, with the person's image). Returns ``([d] float32, info)``; ``info`` adds ``layer``."""
    from ..data.synthetic import never_seen_faces

    layer = asru_layer(model.num_layers) if layer is None else model.check_layers(layer)[0]
    if faces is None:
        seen, faces = set(), []
        for _, image, _ in never_seen_faces():
            key = image.tobytes()
            if key not in seen:
                seen.add(key)
                faces.append(image)
    asked = [Sample(q.question, p.image_bytes[q.image]) for p in forget for q in p.generation
             if q.modality == "image"]
    vectors, info = unknown_face_direction(model, faces, asked, [layer], face_model=face_model, filter=filter,
                                           batch_size=batch_size)
    return vectors[layer], dict(info, layer=layer)
