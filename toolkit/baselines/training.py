"""The shared unlearning loop for the training-based baselines."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..data.mllmu import Profile
from ..data.prompts import generation_prompt
from ..data.synthetic import TrainExample
from ..memory import PeakMemory
from ..models.loading import LoadedModel, load_image, load_model
from .losses import ga_loss, kl_to_reference, npo_loss, sequence_logprob

__all__ = ["METHODS", "BaselineConfig", "BaselineResult", "qa_pairs", "unlearn", "layout_batches", "chat_batch"]

METHODS = ("GA", "GA_Diff", "KL_Min", "NPO")


@dataclass(frozen=True)
class BaselineConfig:
    """MLLMU-Bench's defaults (a few epochs of the forget QA at a small learning rate, AdamW),
    scaled to the default model: its 5.6M parameters take a larger rate than a 7B model's 1e-5."""

    method: str = "GA"
    epochs: int = 4
    lr: float = 5e-5
    batch_size: int = 16
    beta: float = 0.1  # NPO
    retain_weight: float = 1.0  # GA_Diff, KL_Min
    seed: int = 0


@dataclass
class BaselineResult:
    model: LoadedModel
    seconds: float
    peak_added_mb: float  # peak resident memory over the start of training
    losses: list[float] = field(default_factory=list)
    config: BaselineConfig | None = None


def qa_pairs(profiles: Sequence[Profile]) -> list[TrainExample]:
    """The generation questions of ``profiles`` with their ground truths (what the baselines train on)."""
    out = []
    for p in profiles:
        for q in p.generation:
            image = load_image(p.image_bytes[0]) if q.modality == "image" else None
            out.append(TrainExample(generation_prompt(q.question, q.modality == "image"), q.ground_truth, image, "qa"))
    return out


def layout_batches(examples: Sequence[TrainExample], size: int, rng: random.Random) -> list[list[TrainExample]]:
    """Shuffled batches of at most ``size`` examples, image and text-only examples apart (one processor layout a
    batch), the batches shuffled too; ``rng`` decides both orders."""
    groups = [[e for e in examples if e.image is not None], [e for e in examples if e.image is None]]
    out = []
    for g in groups:
        g = g[:]
        rng.shuffle(g)
        out += [g[i:i + size] for i in range(0, len(g), size)]
    rng.shuffle(out)
    return out


def unlearn(model: LoadedModel, forget: Sequence[TrainExample], retain: Sequence[TrainExample] = (),
            config: BaselineConfig = BaselineConfig(), *, progress: bool = False) -> BaselineResult:
    """Train an unlearned copy of ``model`` with ``config.method``; ``model`` itself is left as it was."""
    from tqdm.auto import tqdm

    if config.method not in METHODS:
        raise ValueError(f"Unknown baseline {config.method!r}; choose one of {', '.join(METHODS)}.")
    if not forget:
        raise ValueError("The forget set is empty: nothing to unlearn.")
    if config.method in ("GA_Diff", "KL_Min") and not retain:
        raise ValueError(f"{config.method} needs retain examples.")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    reference = model.module  # frozen, never stepped
    retain = list(retain)
    losses: list[float] = []
    steps = [b for _ in range(config.epochs) for b in layout_batches(list(forget), config.batch_size, rng)]
    with PeakMemory() as meter:  # counts the trainable copy and the optimiser state too
        start = time.time()
        student = copy.deepcopy(model.module).train()
        opt = torch.optim.AdamW(student.parameters(), lr=config.lr)
        for batch_examples in tqdm(steps, desc=config.method, disable=not progress, leave=False):
            loss = _step_loss(config, student, reference, model, batch_examples, retain, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        seconds = time.time() - start
    unlearned = load_model(student.eval(), model.processor)
    return BaselineResult(unlearned, seconds, meter.added_mb, losses, config)


def chat_batch(model: LoadedModel, examples: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
    """The family's teacher-forcing batch of whole chats (templated prompt + answer + EOS, right-padded; grids,
    image sizes, token types and ``labels`` included), on the model's device; one layout (all with an image or
    none)."""
    has_image = examples[0].image is not None
    prompts = [model.format_prompt(ex.text, image=has_image) for ex in examples]
    batch = model.adapter.training_batch(model.processor, prompts, [ex.answer for ex in examples],
                                         [ex.image for ex in examples] if has_image else None)
    return {k: v.to(model.device) for k, v in batch.items()}


def _step_loss(config: BaselineConfig, student, reference, model: LoadedModel, batch_examples, retain,
               rng) -> torch.Tensor:
    batch = chat_batch(model, batch_examples)
    labels = batch.pop("labels")
    logp = sequence_logprob(student(**batch).logits, labels)
    if config.method == "NPO":
        with torch.no_grad():
            ref_logp = sequence_logprob(reference(**batch).logits, labels)
        loss = npo_loss(logp, ref_logp, config.beta)
    else:
        loss = ga_loss(logp)
    if config.method in ("GA_Diff", "KL_Min"):
        rbatch = _retain_batch(model, retain, config.batch_size, rng)
        rlabels = rbatch.pop("labels")
        rlogits = student(**rbatch).logits
        if config.method == "GA_Diff":
            loss = loss - config.retain_weight * sequence_logprob(rlogits, rlabels).mean()
        else:
            with torch.no_grad():
                ref_logits = reference(**rbatch).logits
            loss = loss + config.retain_weight * kl_to_reference(rlogits, ref_logits, rlabels)
    return loss


def _retain_batch(model: LoadedModel, retain: Sequence[TrainExample], size: int, rng) -> dict[str, torch.Tensor]:
    """A random retain batch of one layout (the image or the text-only examples, chosen in proportion)."""
    pick = rng.sample(list(retain), min(size, len(retain)))
    has_image = pick[0].image is not None
    return chat_batch(model, [ex for ex in pick if (ex.image is not None) == has_image])
