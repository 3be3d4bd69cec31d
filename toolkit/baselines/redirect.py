"""ASRU's first stage (arXiv 2605.15687) as its authors run it: activation redirection by training one weight.

Reference: ``guangjh/ASRU``, ``ASRU/act_steering.py`` and ``ASRU/rmu/utils.py``. Only one decoder block's
``mlp.down_proj.weight`` is trained (block 17 of Qwen3-VL-8B's 36; here the block at the same relative depth,
:func:`asru_layer`). Its inputs are whole question-answer chats, right-padded, and the state read is the block's
output at position -1: the answer's end, or a pad for a shorter chat in the batch, as in the reference. With
``frozen`` the model as it was:

* forget loss: ``MSE(h_updated[:, -1], h_frozen[:, -1] + forget_scale * direction)`` on a batch of forget chats;
* retain loss: ``alpha * MSE(h_updated[:, -1], h_frozen[:, -1])`` on a batch of retain chats;

each its own AdamW step, a forget step every ``len(retain batches) // len(forget batches)`` retain steps (one
epoch is one pass over the retain batches), the learning rate decayed linearly once an epoch over
``(forget + retain batches) x epochs`` steps. The defaults are the reference's published run: lr 1e-4, batches of
2, 3 epochs, ``forget_scale`` 3, ``alpha`` 1. Returns an unlearned copy; the model given is left as it was.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.synthetic import TrainExample
from ..memory import PeakMemory
from ..models.loading import LoadedModel, load_model
from .training import BaselineResult, chat_batch, layout_batches

__all__ = ["RedirectConfig", "redirect", "redirect_losses", "asru_layer", "ASRU_REFERENCE_LAYER",
           "ASRU_REFERENCE_DEPTH"]

# The reference redirects decoder block 17 of Qwen3-VL-8B's 36; other depths take the same relative place.
ASRU_REFERENCE_LAYER, ASRU_REFERENCE_DEPTH = 17, 36


def asru_layer(num_layers: int) -> int:
    """The decoder block at the reference's relative depth (17 of 36): ``int(17 / 36 x num_layers)``; 3 of 8
    (the embedded defaults), 13 of 28 (Qwen2.5-VL-7B), 15 of 32 (LLaVA-1.5-7B)."""
    if num_layers < 1:
        raise ValueError(f"asru_layer: a model has at least one decoder layer, got {num_layers}.")
    return int(ASRU_REFERENCE_LAYER / ASRU_REFERENCE_DEPTH * num_layers)


@dataclass(frozen=True)
class RedirectConfig:
    """ASRU's first stage; every default is the reference's published run."""

    layer: int | None = None
    """The decoder block redirected; None: the reference's relative depth (:func:`asru_layer`)."""
    forget_scale: float = 3.0
    """The target is ``h + forget_scale * direction`` (the reference's ``--forget_scale``; its run script: 3)."""
    scale: float | None = None
    """Instead of ``forget_scale``: the target ``h + scale * direction / |direction|`` (an absolute shift)."""
    epochs: int = 3
    lr: float = 1e-4
    retain_weight: float = 1.0
    """The reference's ``alpha``: the retain loss's weight."""
    batch_size: int = 2
    params: str = "down_proj"
    """What is trained: "down_proj" (the block's ``mlp.down_proj.weight``, the reference) or "mlp" (every weight
    of the block's MLP: this package's earlier form)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale is not None and self.forget_scale != RedirectConfig.forget_scale:
            raise ValueError("RedirectConfig: give scale (absolute) or forget_scale (times the direction), not both.")
        if self.params not in ("down_proj", "mlp"):
            raise ValueError(f"RedirectConfig.params is 'down_proj' (the reference) or 'mlp', got {self.params!r}.")


def redirect_losses(updated: torch.Tensor, frozen: torch.Tensor, direction: torch.Tensor, *, forget: bool,
                    forget_scale: float = 3.0, alpha: float = 1.0) -> torch.Tensor:
    """One step's loss on position -1 states ``(B, d)``: forget ``MSE(updated, frozen + forget_scale * direction)``,
    retain ``alpha * MSE(updated, frozen)`` (``torch.nn.functional.mse_loss``: the mean over rows and dims)."""
    if forget:
        return F.mse_loss(updated, frozen + forget_scale * direction.to(frozen)[None])
    return alpha * F.mse_loss(updated, frozen)


def redirect(model: LoadedModel, forget: Sequence[TrainExample], retain: Sequence[TrainExample],
             direction: torch.Tensor, config: RedirectConfig = RedirectConfig()) -> BaselineResult:
    """Train the block's ``down_proj`` (module docstring) on ``forget`` / ``retain`` chats
    (:func:`toolkit.baselines.training.qa_pairs`); ``direction``: ``[d]`` at that block (e.g.
    :func:`toolkit.baselines.asru.unknown_face_direction`). ``losses``: every step's loss, in order."""
    if not forget or not retain:
        raise ValueError(f"ASRU's redirection needs forget and retain chats (got {len(forget)} and {len(retain)}).")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    layer = asru_layer(model.num_layers) if config.layer is None else model.check_layers(config.layer)[0]
    if config.scale is None:
        shift, factor = direction.float(), config.forget_scale
    else:
        shift, factor = (direction / direction.norm()).float(), config.scale
    losses: list[float] = []
    with PeakMemory() as meter:
        start = time.time()
        frozen = model.module
        student = copy.deepcopy(frozen)
        for p in student.parameters():
            p.requires_grad_(False)
        mlp = model.adapter.layer_modules(student)[layer].mlp
        trained = [mlp.down_proj.weight] if config.params == "down_proj" else list(mlp.parameters())
        for p in trained:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(trained, lr=config.lr)
        grabbed: dict[str, torch.Tensor] = {}

        def grab(name):
            return lambda mod, i, o: grabbed.__setitem__(name, (o[0] if isinstance(o, tuple) else o)[:, -1])

        hooks = [model.adapter.layer_modules(student)[layer].register_forward_hook(grab("updated")),
                 model.adapter.layer_modules(frozen)[layer].register_forward_hook(grab("frozen"))]
        try:
            for epoch in range(config.epochs):
                forget_batches, retain_batches = (layout_batches(forget, config.batch_size, rng),
                                                  layout_batches(retain, config.batch_size, rng))
                total = (len(forget_batches) + len(retain_batches)) * config.epochs
                for group in opt.param_groups:  # the reference's linear schedule, stepped once an epoch
                    group["lr"] = config.lr * max(0.0, 1 - epoch / total)
                every = max(1, len(retain_batches) // len(forget_batches))
                pending = iter(forget_batches)
                for it, retain_batch in enumerate(retain_batches):
                    # A forget step every `every` retain steps while forget batches last, then the retain step.
                    forget_batch = next(pending, None) if it % every == 0 else None
                    steps = ([(True, forget_batch)] if forget_batch is not None else []) + [(False, retain_batch)]
                    for is_forget, examples in steps:
                        batch = chat_batch(model, examples)
                        batch.pop("labels")
                        with torch.no_grad():
                            frozen(**batch)
                        student(**batch)
                        loss = redirect_losses(grabbed["updated"].float(), grabbed["frozen"].float(), shift,
                                               forget=is_forget, forget_scale=factor, alpha=config.retain_weight)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        losses.append(float(loss.detach()))
        finally:
            for h in hooks:
                h.remove()
        seconds = time.time() - start
    for p in student.parameters():
        p.requires_grad_(False)
    return BaselineResult(load_model(student.eval(), model.processor), seconds, meter.added_mb, losses, None)
