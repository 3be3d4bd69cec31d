"""ASRU as published, both stages: activation redirection, then reward-driven refusal boundaries.

Stage 1 (:func:`toolkit.baselines.redirect`) trains one middle layer's MLP so
that forget prompts' last-token states move along the refusal direction while
retain states stay put. Stage 2 (:func:`toolkit.baselines.grpo`) starts from the
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
from ..fit import question_samples
from ..models.loading import LoadedModel
from .grpo import GRPOConfig, GRPOResult, asru_reward, grpo, reward_prompts
from .redirect import RedirectConfig, redirect
from .training import BaselineResult

__all__ = ["ASRUConfig", "ASRUResult", "asru"]


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
