"""ASRU's first stage (arXiv 2605.15687): activation redirection by training one MLP.

Only the MLP of one middle decoder layer is trained, so that on forget prompts
the layer's last-token output moves to ``h + c * v`` (``v``: the unit
refusal-minus-recall direction at that layer, ``c``: a scale, by default
``forget_scale`` (the reference's flag, default 1) times the norm of the mean
difference) while on retain prompts it stays where it was; mean squared error on
both. Returns an unlearned copy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..memory import PeakMemory
from ..models.loading import LoadedModel, Sample, load_model
from ..tracing import capture
from .training import BaselineResult

__all__ = ["RedirectConfig", "redirect"]


@dataclass(frozen=True)
class RedirectConfig:
    layer: int | None = None  # default: the middle layer
    scale: float | None = None  # c, absolute; default: forget_scale times the norm of the direction given
    # The reference's --forget_scale: the target is h + forget_scale * direction (the unnormalised
    # refusal-minus-recall difference); its default is 1.
    forget_scale: float = 1.0
    epochs: int = 30
    lr: float = 1e-3
    retain_weight: float = 1.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale is not None and self.forget_scale != 1.0:
            raise ValueError("RedirectConfig: give scale (absolute) or forget_scale (times the direction's norm), "
                             "not both.")


def redirect(model: LoadedModel, forget: Sequence[Sample], retain: Sequence[Sample], direction: torch.Tensor,
             config: RedirectConfig = RedirectConfig()) -> BaselineResult:
    """Train the layer's MLP on ``forget``/``retain`` prompts; ``direction``: refusal minus recall at that layer."""
    torch.manual_seed(config.seed)
    layer = model.num_layers // 2 if config.layer is None else model.check_layers(config.layer)[0]
    scale = config.forget_scale * float(direction.norm()) if config.scale is None else config.scale
    v = (direction / direction.norm()).float()
    h_f = capture(model, forget, [layer])[layer]
    h_r = capture(model, retain, [layer])[layer]
    device = model.layer_device(layer)
    targets = torch.cat([h_f + scale * v, h_r]).to(device)
    samples = list(forget) + list(retain)
    weights = torch.cat([torch.ones(len(forget)), torch.full((len(retain),), config.retain_weight)]).to(device)
    losses = []
    with PeakMemory() as meter:
        start = time.time()
        student = copy.deepcopy(model.module)
        for p in student.parameters():
            p.requires_grad_(False)
        mlp = model.adapter.layer_modules(student)[layer].mlp
        for p in mlp.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(mlp.parameters(), lr=config.lr)
        wrapped = load_model(student, model.processor)
        grabbed = {}
        hook = model.adapter.layer_modules(student)[layer].register_forward_hook(
            lambda mod, i, o: grabbed.__setitem__("h", (o[0] if isinstance(o, tuple) else o)[:, -1]))
        try:
            g = torch.Generator().manual_seed(config.seed)
            for _ in range(config.epochs):
                order = torch.randperm(len(samples), generator=g)
                # Image and text-only prompts are encoded apart.
                for has_image in (True, False):
                    idx = [int(i) for i in order if (samples[int(i)].image is not None) == has_image]
                    for s in range(0, len(idx), config.batch_size):
                        chunk = idx[s:s + config.batch_size]
                        enc = wrapped.encode([samples[i] for i in chunk], device=wrapped.device)
                        student(**enc)
                        err = (grabbed["h"].float() - targets[chunk]).pow(2).mean(1)
                        loss = (err * weights[chunk]).sum() / weights[chunk].sum()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        losses.append(float(loss.detach()))
        finally:
            hook.remove()
        seconds = time.time() - start
    for p in student.parameters():
        p.requires_grad_(False)
    return BaselineResult(load_model(student.eval(), model.processor), seconds, meter.added_mb, losses, None)
