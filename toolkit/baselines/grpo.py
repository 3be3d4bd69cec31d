"""ASRU's second stage (arXiv 2605.15687): reward-driven refusal boundaries by GRPO.

From the stage-1 model (:func:`toolkit.baselines.redirect`), each step draws a
few prompts from the forget set and the *boundary* set (questions near the
forget content that must still be answered), samples ``rollouts`` answers per
prompt at ``temperature``, scores them with ASRU's rule reward
(:func:`asru_rule_reward`; :func:`judged_reward` puts a judge's refusal label in place of its
substring rule), and takes one policy-gradient step on the GRPO
objective (group-normalised advantages, clipped ratio, k3 KL to the stage-1
model). A compact implementation: TRL's GRPO trainer expects text datasets and
its own generation loop, which does not carry our families' image inputs
(grids, image sizes) through; this one reuses each family's own encoding.

GRPO objective per prompt with ``G`` rollouts ``o_i`` (tokens ``t``), rewards
``r_i``, advantages ``A_i = (r_i - mean(r)) / (std(r) + eps)``,
``rho = pi(o_it) / pi_old(o_it)``:

    L = - 1/G sum_i 1/|o_i| sum_t [ min(rho A_i, clip(rho, 1-e, 1+e) A_i) - beta KL_it ],
    KL_it = pi_ref/pi - log(pi_ref/pi) - 1          (the low-variance k3 estimator)

With one update per batch (on-policy) ``pi_old = pi`` numerically, so the clip is
inert and the gradient is ``-A_i grad log pi`` plus the KL term.

Memory: a full trainable copy of the model and its optimiser state (as the
other baselines); the rollouts are generated without gradients.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import metrics
from ..memory import PeakMemory
from ..models.loading import LoadedModel, Sample, load_model
from .training import BaselineResult

__all__ = ["GRPOConfig", "GRPOResult", "RewardPrompt", "reward_prompts", "asru_rule_reward", "judged_reward",
           "asru_reward", "REFUSAL_TESTS", "group_advantages",
           "grpo_loss", "grpo"]


@dataclass(frozen=True)
class RewardPrompt:
    """A prompt to roll out, its ground truth and fact (for leakage), and whether it is a forget prompt."""

    sample: Sample
    ground_truth: str
    answer_key: str | None
    forget: bool


def reward_prompts(forget: Sequence, boundary: Sequence) -> list[RewardPrompt]:
    """Forget profiles' generation questions (reward for refusing) and boundary ``(profile, question)`` pairs
    (reward for answering), in the evaluation's prompt format."""
    from ..data.prompts import generation_prompt

    def prompt(person, q, is_forget: bool) -> RewardPrompt:
        image = q.modality == "image"
        return RewardPrompt(Sample(generation_prompt(q.question, image), person.image_bytes[0] if image else None),
                            q.ground_truth, q.answer_key, is_forget)

    return ([prompt(p, q, True) for p in forget for q in p.generation]
            + [prompt(p, q, False) for p, q in boundary])


def asru_rule_reward(response: str, ground_truth: str, answer_key: str | None, forget: bool) -> float:
    """ASRU's rule reward.

    Forget prompts: 0 if the fact leaks, 1 for a refusal, 0.5 for a partial answer
    (0 < ROUGE-L < 0.4), else 0.1. Boundary prompts: 1 if the fact appears, 0 for a
    refusal, 0.5 if ROUGE-L > 0.6, else 0.1. "The fact" is the answer key where the
    data has one, else the ground truth itself.
    """
    fact = answer_key or ground_truth
    return metrics.asru_reward_rule(metrics.contains_answer(response, fact), metrics.is_refusal(response),
                                    metrics.rouge_scores(response, ground_truth)["rougeL"], forget)


def judged_reward(judge=None):
    """ASRU's rule reward with a judge's refusal test in place of the substring rule.

    The published reward calls an answer a refusal when it contains a refusal phrase
    (:func:`toolkit.metrics.is_refusal`), so a loop such as "I cannot I cannot I ..." earns a forget
    prompt's full 1.0. Here the refusal test is the judge's label (``judge.classify``; default the
    offline judge, :class:`toolkit.judge.OfflineJudge`): a loop is labelled ``degenerate`` and earns
    what a non-answer earns (0.1, or 0.5 for a partial answer). Leakage and ROUGE-L are as published.
    """
    from ..judge import OfflineJudge

    judge = judge or OfflineJudge()

    def reward(response: str, ground_truth: str, answer_key: str | None, forget: bool) -> float:
        fact = answer_key or ground_truth
        return metrics.asru_reward_rule(metrics.contains_answer(response, fact), judge.classify(response) == "refusal",
                                        metrics.rouge_scores(response, ground_truth)["rougeL"], forget)

    return reward


REFUSAL_TESTS = ("rule", "judge")


def asru_reward(refusal_test: str = "rule", judge=None):
    """The reward function for ``refusal_test``: ``"rule"`` (published: :func:`asru_rule_reward`) or
    ``"judge"`` (:func:`judged_reward`)."""
    if refusal_test not in REFUSAL_TESTS:
        raise ValueError(f"refusal_test must be one of {REFUSAL_TESTS}, got {refusal_test!r}.")
    return asru_rule_reward if refusal_test == "rule" else judged_reward(judge)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(P, G)`` rewards -> advantages normalised within each prompt's group."""
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, kl_coef: float, clip: float = 0.2) -> torch.Tensor:
    """The GRPO objective (module docstring). ``logp``, ``old_logp``, ``ref_logp``, ``mask``: ``(N, T)``
    per-token log-probabilities of the rollouts and their validity; ``advantages``: ``(N,)``."""
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
    log_ref_ratio = ref_logp - logp
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    per_token = (surrogate - kl_coef * kl) * mask
    per_seq = per_token.sum(1) / mask.sum(1).clamp(min=1)
    return -per_seq.mean()


@dataclass(frozen=True)
class GRPOConfig:
    """ASRU's settings (8 rollouts, temperature 1.5, KL 0.1); steps and rate scaled to the default."""

    rollouts: int = 8
    temperature: float = 1.5
    kl_coef: float = 0.1
    clip: float = 0.2
    lr: float = 1e-5
    steps: int = 30
    prompts_per_step: int = 4
    max_new_tokens: int = 24
    seed: int = 0
    # LoRA (needs peft): train rank-r adapters on these module names instead of every weight, merged into the
    # returned copy. None trains the full model (the default on the 5.7M-parameter default; use LoRA on a 7B).
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class GRPOResult(BaselineResult):
    rewards: list[float] = field(default_factory=list)  # mean rollout reward per step


def _with_lora(module, config: GRPOConfig):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("GRPOConfig(lora_rank=...) needs peft: pip install peft") from None
    names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
    missing = [t for t in config.lora_targets if t not in names]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not module names of this model; pass lora_targets "
                         f"(e.g. {sorted(n for n in names if n.endswith('proj'))[:6]}).")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
                      target_modules=list(config.lora_targets))
    return get_peft_model(module, lora)


def _expand(enc: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """One prompt's encoding repeated ``n`` times (image patches and grids repeat as whole images)."""
    return {k: torch.cat([v] * n) if isinstance(v, torch.Tensor) and v.ndim else v for k, v in enc.items()}


def _token_logp(module, enc: dict[str, torch.Tensor], sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Log-probability of each generated token of ``sequences`` (prompt + rollout) under ``module``."""
    gen = sequences[:, prompt_len:]
    mask = torch.cat([enc["attention_mask"], torch.ones_like(gen)], 1)
    inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    logits = module(input_ids=sequences, attention_mask=mask, **inputs).logits[:, prompt_len - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, gen[..., None])[..., 0]


def grpo(model: LoadedModel, prompts: Sequence[RewardPrompt], config: GRPOConfig = GRPOConfig(), *,
         reward=asru_rule_reward, progress: bool = False) -> GRPOResult:
    """Train a copy of ``model`` by GRPO on ``prompts`` (forget and boundary); ``model`` is the reference."""
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("GRPO needs prompts (forget and boundary).")
    if config.rollouts < 2:
        raise ValueError("GRPO needs at least 2 rollouts per prompt (advantages are relative to the group).")
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    reference = model.module.eval()
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else eos
    losses, rewards = [], []
    with PeakMemory() as meter:
        start = time.time()
        student = copy.deepcopy(model.module)
        for q in student.parameters():  # a trained baseline (stage 1) comes back frozen
            q.requires_grad_(True)
        if config.lora_rank:
            student = _with_lora(student, config)
        opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=config.lr)
        for _ in tqdm(range(config.steps), desc="GRPO", disable=not progress, leave=False):
            batch = rng.sample(list(prompts), min(config.prompts_per_step, len(prompts)))
            step_loss, step_rewards = 0.0, []
            opt.zero_grad(set_to_none=True)
            for p in batch:
                enc = model.encode([p.sample], device=model.device)
                prompt_len = enc["input_ids"].shape[1]
                student.eval()
                with torch.no_grad():
                    seqs = student.generate(**enc, do_sample=True, temperature=config.temperature,
                                            num_return_sequences=config.rollouts,
                                            max_new_tokens=config.max_new_tokens, pad_token_id=pad)
                gen = seqs[:, prompt_len:]
                # Tokens after the first EOS are padding, not part of the answer.
                after_eos = (gen == eos).long().cumsum(1) - (gen == eos).long()
                mask = (after_eos == 0).float()
                texts = model.tokenizer.batch_decode(gen * mask.long() + pad * (1 - mask.long()),
                                                     skip_special_tokens=True)
                r = torch.tensor([reward(t, p.ground_truth, p.answer_key, p.forget) for t in texts])
                step_rewards += r.tolist()
                adv = group_advantages(r[None])[0].to(model.device)
                many = _expand(enc, config.rollouts)
                student.train()
                logp = _token_logp(student, many, seqs, prompt_len)
                with torch.no_grad():
                    ref = _token_logp(reference, many, seqs, prompt_len)
                loss = grpo_loss(logp, logp.detach(), ref, mask, adv, config.kl_coef, config.clip) / len(batch)
                loss.backward()
                step_loss += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            losses.append(step_loss)
            rewards.append(sum(step_rewards) / len(step_rewards))
        seconds = time.time() - start
    if config.lora_rank:
        student = student.merge_and_unload()  # a plain module again: every route steers and evaluates it
    for q in student.parameters():
        q.requires_grad_(False)
    return GRPOResult(load_model(student.eval(), model.processor), seconds, meter.added_mb, losses, None, rewards)
