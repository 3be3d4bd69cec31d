"""ASRU as published, both stages: activation redirection, then reward-driven refusal boundaries.

Stage 1 (:func:`toolkit.baselines.redirect`) trains one middle layer's MLP so
that forget prompts' last-token states move along a direction while retain
states stay put. The published direction is :func:`unknown_face_direction`
(toward "a face I do not know"); the refusal-minus-recall difference of the
eraser's contrastive pairs is this package's earlier stand-in for it. Stage 2 (:func:`toolkit.baselines.grpo`) starts from the
stage-1 model and runs GRPO with ASRU's rule reward on the forget questions
(refuse) and boundary questions (answer: facts of retain people that forget
people share, :func:`toolkit.data.boundary.boundary_questions`). The KL anchor
of stage 2 is the stage-1 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..data.mllmu import GenerationQ, Profile
from ..data.samples import question_samples
from ..models.loading import LoadedModel, Sample
from .grpo import GRPOConfig, GRPOResult, asru_reward, grpo, reward_prompts
from .redirect import RedirectConfig, redirect
from .training import BaselineResult

__all__ = ["ASRUConfig", "ASRUResult", "asru", "unknown_face_direction"]


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
    """Unlearn ``forget`` with ASRU; ``retain``: people whose states stage 1 holds (use fit people only);
    ``direction``: refusal minus recall at the redirected layer (middle layer by default)."""
    if config.stages not in (1, 2):
        raise ValueError(f"ASRU has stages 1 and 2; got stages={config.stages}.")
    reward = asru_reward(config.refusal_test)
    if config.stages == 2 and not boundary:
        raise ValueError("Stage 2 needs boundary questions (allowed questions near the forget content): see "
                         "toolkit.data.boundary.boundary_questions, or run stages=1.")
    stage1 = redirect(model, question_samples(forget, "forget"),
                      question_samples(list(retain)[: config.retain_people], "retain"), direction, config.redirect)
    if config.stages == 1:
        return ASRUResult(stage1, None, {"boundary": 0})
    stage2 = grpo(stage1.model, reward_prompts(forget, boundary), config.grpo, reward=reward, progress=progress)
    return ASRUResult(stage1, stage2, {"boundary": len(boundary), "rewards": stage2.rewards})


def unknown_face_direction(model: LoadedModel, faces: Sequence[Sample], forget: Sequence[Sample],
                           layers: Sequence[int], *, face_model: LoadedModel | None = None, batch_size: int = 32,
                           max_new_tokens: int = 16) -> tuple[dict[int, torch.Tensor], dict]:
    """ASRU's published direction VL* at each of ``layers``: ``{layer: [d] float32}`` and ``info``.

    The mean last-token state of ``face_model`` on never-seen faces, kept only where its greedy answer says it
    cannot tell (:func:`toolkit.metrics.is_refusal`: "I do not recognize this person.", a refusal), minus the
    mean last-token state of ``model`` on the ``forget`` questions. The reference reads the faces with the
    original model (before fine-tuning on the people to forget) and the forget questions with the fine-tuned
    one; where no original exists (the embedded defaults are trained from scratch), ``face_model`` defaults to
    ``model``, which never saw these faces either. ``faces``: e.g.
    :func:`toolkit.data.synthetic.never_seen_faces`. ``info``: ``asked``, ``kept``, ``forget``.
    Memory: two ``[n, d]`` float32 captures per layer.
    """
    from .. import metrics, tracing

    if not forget:
        raise ValueError("unknown_face_direction needs the forget questions (the direction's other side).")
    face_model = face_model or model
    answers = tracing.generate(face_model, list(faces), max_new_tokens=max_new_tokens, batch_size=batch_size)
    kept = [s for s, a in zip(faces, answers) if metrics.is_refusal(a)]
    if not kept:
        raise ValueError(f"The model says it cannot tell none of the {len(faces)} never-seen faces' questions: "
                         "ASRU's direction has no 'unknown face' side. Give faces it does not know.")
    unknown = tracing.capture(face_model, kept, list(layers), batch_size=batch_size)
    known = tracing.capture(model, list(forget), list(layers), batch_size=batch_size)
    out = {l: (unknown[l].float().mean(0) - known[l].float().mean(0)) for l in layers}
    return out, {"asked": len(faces), "kept": len(kept), "forget": len(forget)}
