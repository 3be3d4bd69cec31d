"""PGD on images: make the model give a target answer instead of refusing.

The attack works in pixel space, before the processor's normalisation: the
image is resized by the processor (no normalisation) to a canvas ``x`` in
[0, 1], the model sees ``pixel_values(x)`` (normalised, and patchified for
Qwen-VL: :mod:`toolkit.models.pixels`), and ``x' = x + delta`` with
``||delta||_inf <= eps`` maximises ``log p(target | x', prompt)`` (teacher
forced, target tokens only) by signed-gradient steps; or, with
``PGDConfig(objective="avoid")``, minimises the log-probability of the model's
own clean answer's first token (no target: away from the refusal). The returned images are
quantised to 8 bits at the processor's resolution, and success is measured on
those, i.e. on what a user would actually feed the model.

Supported where the adapter names a pixel layout: every image family here
(LLaVA-1.5, LLaVA-NeXT's any-res tiles, Qwen2/2.5/3-VL patches, Gemma3,
PaliGemma, Idefics3's splitting; the last two kinds through the processor's PIL
backend). The attack starts from the canvas, i.e. the image at the size the
processor tiles or patchifies; for LLaVA-NeXT that is the aspect-preserving
resize of the user's image, whose whole-image view then differs from the
original's by one resize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from . import metrics, tracing
from .models.adapters import ADAPTERS
from .models.loading import LoadedModel, Sample, load_image
from .models.pixels import attack_canvas, canvas_image

__all__ = ["OBJECTIVES", "PGDConfig", "PGDResult", "pgd_attack", "target_loss", "frozen"]


# What the attack optimises. "target" (the paper): make ``targets[i]`` likely, teacher forced. "avoid": make the
# model's own clean answer's first token unlikely (untargeted: it pushes away from the refusal where refusing
# and answering part). On a default whose refusal depends on the face (docs/results.md), "target" flips 2 of 16 refused
# questions at 16/255 and "avoid" 9: every benchmark answer begins with the person's name, so the target's
# first token asks the image to stay recognisable as the private person, which is what is refused.
OBJECTIVES = ("target", "avoid")


@dataclass(frozen=True)
class PGDConfig:
    """Projected gradient descent on the images of the contrastive pairs (:func:`toolkit.adversarial.pgd_attack`)."""

    eps: float = 16 / 255
    """L-infinity budget of the perturbation, in [0, 1] pixel units (the paper: 16/255)."""
    step: float = 2 / 255
    """Size of one signed-gradient step."""
    steps: int = 30
    """Steps per attacked image (on the command line, 0: no PGD and no adversarial images)."""
    random_start: bool = False
    """Start from a random point of the eps-ball instead of the clean image."""
    seed: int = 0
    """Seed of the random start."""
    objective: str = "target"
    """"target": make the true answer likely (the paper); "avoid": make the refusal's first token unlikely
    (:data:`OBJECTIVES`)."""


@dataclass
class PGDResult:
    images: list[Image.Image]
    outputs_clean: list[str]
    outputs_adversarial: list[str]
    loss_clean: list[float]
    loss_adversarial: list[float]
    linf: list[float] = field(default_factory=list)

    @property
    def refused_clean(self) -> list[bool]:
        return [metrics.is_refusal(o) for o in self.outputs_clean]

    @property
    def success(self) -> list[bool]:
        """The model refused the clean image and answers (does not refuse) the adversarial one."""
        return [c and not metrics.is_refusal(a) for c, a in zip(self.refused_clean, self.outputs_adversarial)]

    @property
    def success_rate(self) -> float:
        refused = sum(self.refused_clean)
        return sum(self.success) / refused if refused else float("nan")


def _check_supported(model: LoadedModel) -> None:
    if model.adapter.pixel_layout is None:
        ok = ", ".join(a.family for a in ADAPTERS if a.pixel_layout)
        raise NotImplementedError(
            f"PGD in pixel space is not implemented for {model.adapter.family}: its adapter names no pixel layout "
            f"(no differentiable re-implementation of its image preprocessing, toolkit.models.pixels). "
            f"Supported: {ok}. Fit without adversarial images instead (pgd=None; `mllmeraser fit --pgd-steps 0`): "
            "the direction then contrasts refusals with recalls on clean images.")


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Within the block, no parameter of ``module`` takes a gradient (flags restored after)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def target_loss(model: LoadedModel, batch: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the target tokens given the prompt, with ``pixels`` as the image.

    ``batch``: the family's teacher-forcing batch with ``labels`` (-100 outside the target). Equal to
    the model's own ``.loss``, but the LM head projects only the positions that predict a target token
    (``logits_to_keep``), not every image and prompt token: the loss reads nothing else.
    """
    inputs = dict(batch, pixel_values=pixels.to(model.device, model.dtype))
    labels = inputs.pop("labels")
    labelled = (labels != -100).any(0).nonzero()
    if not len(labelled) or int(labelled[0]) < 1:
        raise ValueError("The PGD batch has no target tokens after the prompt (labels are all -100).")
    first = int(labelled[0])
    n_keep = labels.shape[1] - first + 1  # positions first-1 .. T-1; the last predicts nothing labelled
    # Index positions, not an int: transformers slices hidden_states[:, -n:] for an int, and on CPU the
    # backward through that strided view into the head is 20-30x slower than through a gathered copy
    # (measured at Qwen2.5-VL-7B's 152k head: 6.3-9.1 s against 0.31 s for 8 positions; docs/results.md, Performance).
    keep = torch.arange(first - 1, labels.shape[1], device=labels.device)
    extra = {"logits_to_keep": keep} if tracing.keeps_last_logits(model) else {}
    logits = model.module(**inputs, **extra).logits[:, -n_keep:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, first:].flatten(),
                                             ignore_index=-100)


def pgd_attack(model: LoadedModel, samples: Sequence[Sample], targets: Sequence[str], config: PGDConfig = PGDConfig(),
               *, progress: bool = False, max_new_tokens: int = 24) -> PGDResult:
    """Perturb each sample's image so that the model answers ``targets[i]`` (``config.objective="target"``),
    or so that its clean answer's first token becomes unlikely (``"avoid"``; ``targets`` are then unused).

    Returns the adversarial images (8-bit, processor resolution), the model's
    answers on clean and adversarial images, and the objective's NLL before/after
    (``"target"``: of the target, lower is the attack's aim; ``"avoid"``: of the clean
    answer's first token, higher is).
    """
    _check_supported(model)
    if len(samples) != len(targets):
        raise ValueError(f"{len(samples)} samples but {len(targets)} targets.")
    if any(s.image is None for s in samples):
        raise ValueError("PGD needs an image on every sample.")
    if not 0 < config.eps <= 1 or config.step <= 0 or config.steps < 1:
        raise ValueError(f"Bad PGD settings {config}: need 0 < eps <= 1, step > 0, steps >= 1.")
    if config.objective not in OBJECTIVES:
        raise ValueError(f"PGD objective must be one of {OBJECTIVES}, got {config.objective!r}.")
    clean = None
    if config.objective == "avoid":
        clean = tracing.generate(model, list(samples), max_new_tokens=max_new_tokens)
        if any(not o.strip() for o in clean):
            raise ValueError("The model's clean answer is empty for some sample: the 'avoid' objective has no "
                             "first token to push away from. Use objective='target'.")
        targets = clean
    sign = -1.0 if config.objective == "avoid" else 1.0
    gen = torch.Generator().manual_seed(config.seed)
    layout, ip = model.adapter.pixel_layout, model.processor.image_processor
    adv_images, lin, loss0, loss1 = [], [], [], []
    with frozen(model.module), torch.enable_grad():
        for sample, target in tqdm(list(zip(samples, targets)), desc="PGD", disable=not progress, leave=False):
            x, _, to_pixels = attack_canvas(layout, ip, load_image(sample.image))
            start = canvas_image(x)
            again, _, _ = attack_canvas(layout, ip, start)
            if again.shape != x.shape:
                raise ValueError(
                    f"PGD hands back the image at the size the processor gives it ({x.shape[1]}x{x.shape[2]}), but "
                    f"the processor resizes an image of that size again (to {again.shape[1]}x{again.shape[2]}), so the "
                    "attack's image would not be the one measured. Give images of a size this processor keeps, "
                    "or widen its min_pixels/max_pixels.")
            # The family's own teacher-forcing batch (grids, image sizes, token types...) for the
            # canvas as an 8-bit image, i.e. for what the attack hands back; target tokens labelled.
            batch = model.adapter.training_batch(model.processor, [model.format_prompt(sample.text, image=True)],
                                                 [target], [start], eos=False)
            batch = {k: v.to(model.device) for k, v in batch.items() if k != "pixel_values"}
            if clean is not None:  # "avoid": only the first answer token, where refusing and answering part
                labels = batch["labels"]
                first = int((labels != -100).any(0).nonzero()[0])
                batch["labels"] = torch.where(torch.arange(labels.shape[1], device=labels.device) == first,
                                              labels, torch.full_like(labels, -100))
            delta = torch.zeros_like(x)
            if config.random_start:
                delta.uniform_(-config.eps, config.eps, generator=gen)
            with torch.no_grad():
                loss0.append(float(target_loss(model, batch, to_pixels(x))))
            for _ in range(config.steps):
                delta.requires_grad_(True)
                loss = sign * target_loss(model, batch, to_pixels((x + delta).clamp(0, 1)))
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = (delta - config.step * grad.sign()).clamp(-config.eps, config.eps)
                    delta = (x + delta).clamp(0, 1) - x
            adv_img = canvas_image(x + delta.detach())
            x_q, _, _ = attack_canvas(layout, ip, adv_img)  # the same size as x: checked above
            with torch.no_grad():
                loss1.append(float(target_loss(model, batch, to_pixels(x_q))))
            lin.append(float((x_q - x).abs().max()))
            adv_images.append(adv_img)
    clean = clean if clean is not None else tracing.generate(model, list(samples), max_new_tokens=max_new_tokens)
    attacked = tracing.generate(model, [Sample(s.text, im) for s, im in zip(samples, adv_images)],
                                max_new_tokens=max_new_tokens)
    return PGDResult(adv_images, clean, attacked, loss0, loss1, lin)
