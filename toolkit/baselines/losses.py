"""Per-method losses. Each takes per-example answer log-likelihoods (and reference ones)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sequence_logprob", "ga_loss", "npo_loss", "kl_to_reference"]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the labelled tokens per example: ``(B,)``. Labels -100 are ignored."""
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(1) / mask.sum(1).clamp(min=1)


def ga_loss(forget_logp: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minimise the forget log-likelihood (= maximise its NLL)."""
    return forget_logp.mean()


def npo_loss(forget_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): ``-(2/beta) log sigmoid(-beta (log pi - log pi_ref))``, mean over examples."""
    return (-2.0 / beta * F.logsigmoid(-beta * (forget_logp - reference_logp))).mean()


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions on the labelled positions."""
    mask = (labels[:, 1:] != -100)
    p_ref = torch.log_softmax(reference_logits[:, :-1].float(), -1)
    p = torch.log_softmax(logits[:, :-1].float(), -1)
    kl = (p_ref.exp() * (p_ref - p)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
