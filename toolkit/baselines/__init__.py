"""Training-based unlearning baselines the field compares against (run on the same model and data).

``GA`` (gradient ascent on forget), ``GA_Diff`` (ascent on forget, descent on
retain), ``KL_Min`` (ascent on forget, KL to the vanilla model on retain), ``NPO``
(negative preference optimisation against the vanilla model as reference), and
ASRU's two stages: activation redirection (``redirect``, one block's ``down_proj`` as published) and reward-driven
refusal boundaries by GRPO (``grpo``, from the stage-1 model). Each returns an
unlearned *copy*; the vanilla weights, in memory and on disk, are never touched.
"""

from .asru import ASRUConfig, ASRUResult, asru, asru_direction, unknown_face_direction
from .grpo import (REFUSAL_TESTS, GRPOConfig, GRPOResult, RewardPrompt, asru_reward, asru_rule_reward, grpo,
                   judged_reward, reward_prompts)
from .redirect import RedirectConfig, asru_layer, redirect
from .training import METHODS, BaselineConfig, BaselineResult, qa_pairs, unlearn

__all__ = ["METHODS", "BaselineConfig", "BaselineResult", "qa_pairs", "unlearn", "RedirectConfig", "redirect",
           "GRPOConfig", "GRPOResult", "RewardPrompt", "asru_rule_reward", "judged_reward", "asru_reward",
           "REFUSAL_TESTS", "grpo", "reward_prompts", "ASRUConfig",
           "ASRUResult", "asru", "asru_layer", "asru_direction", "unknown_face_direction"]
