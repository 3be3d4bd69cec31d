"""What a membership gate reads: one feature row per prompt, pooled from one layer's states.

A gate's ``reads`` names one or more *parts*, joined by ``+``; its feature row is
the parts side by side, so a gate reading ``k`` parts sees ``(B, k d)`` rows
(float32). The parts, for a layer output ``h`` (B, T, d) of a left-padded batch:

* ``last``: the last prompt token, ``h[:, -1]``: the paper's read, and what a
  decoding step sees (the new token).
* ``mean``: the mean over the prompt's real tokens (``"last+mean"``: the read
  earlier versions offered).
* ``image-mean`` / ``image-max``: the mean / element-wise max over the **image
  tokens**. In every supported chat template the image comes before the
  question, so under causal attention these states do not depend on the
  question's wording at all: a template, a role-play or a second turn cannot
  move them. They are keyed to the person shown, not to the phrasing. A row
  without image tokens (a text-only question that names the person) pools
  over its prompt tokens after the first (the first is a BOS or chat marker
  whose outsized states would dominate a max), where the name is.
  Max pooling keeps a distinctive token from being diluted by a long
  template (the fix production probes report for long and multi-turn prompts).

Memory per kept row: ``k d`` float32 numbers (d = 4096: 16 KiB a part). The
read is the same in the fit's captures (:func:`toolkit.tracing.capture` with
``positions=reads``) and in the three steering routes (:mod:`toolkit.steering`),
through :func:`pool`.
"""

from __future__ import annotations

import torch

__all__ = ["PARTS", "READS", "parse_reads", "read_width", "needs_prompt", "needs_image_mask", "pool", "union_reads",
           "select_read", "masked_mean"]

PARTS = ("last", "mean", "image-mean", "image-max")
# The reads the toolkit's fits, selection and CLI offer (any "+" join of PARTS is accepted).
READS = ("last", "last+mean", "image-mean", "image-max", "last+image-max")


def parse_reads(reads: str) -> tuple[str, ...]:
    """``"last+image-max"`` -> ``("last", "image-max")``; one clear error for anything else."""
    parts = tuple(p.strip() for p in str(reads).split("+")) if isinstance(reads, str) else ()
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"A gate reads {reads!r}: give parts from {', '.join(PARTS)} joined by '+', each once "
                         "(e.g. 'last', 'image-max', 'last+image-max').")
    return parts


def read_width(reads: str, hidden_size: int) -> int:
    """Features per row: ``k d`` for ``k`` parts."""
    return len(parse_reads(reads)) * hidden_size


def needs_prompt(reads: str) -> bool:
    """Whether the read needs the whole prompt (anything but ``"last"``): such a gate decides at prefill."""
    return parse_reads(reads) != ("last",)


def needs_image_mask(reads: str) -> bool:
    return any(p.startswith("image-") for p in parse_reads(reads))


def union_reads(*reads: str | None) -> str:
    """One read holding every part of ``reads`` (None skipped), in the canonical order of :data:`PARTS`:
    what a fit keeps so that gates reading any of them can be fitted from one capture."""
    parts = {p for r in reads if r is not None for p in parse_reads(r)}
    if not parts:
        raise ValueError("No read given.")
    return "+".join(p for p in PARTS if p in parts)


def select_read(rows: torch.Tensor, have: str, want: str, hidden_size: int) -> torch.Tensor:
    """The columns of ``want`` out of rows read as ``have`` ((n, k d) -> (n, k' d)); ``want``'s parts in its order."""
    held = parse_reads(have)
    missing = [p for p in parse_reads(want) if p not in held]
    if missing:
        raise ValueError(f"Rows read as {have!r} hold no {missing}: keep {union_reads(have, want)!r} at fit time.")
    if rows.shape[-1] != len(held) * hidden_size:
        raise ValueError(f"Rows of width {rows.shape[-1]} are not read as {have!r} at d = {hidden_size}.")
    if want == have:
        return rows
    return torch.cat([rows[..., held.index(p) * hidden_size:(held.index(p) + 1) * hidden_size]
                      for p in parse_reads(want)], -1)


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``h`` (B, T, d) over the tokens where ``mask`` (B, T) is set, float32 (B, d); all tokens
    without a mask."""
    if mask is None:
        return h.float().mean(1)
    w = mask.to(h.device, torch.float32)[:, :, None]
    return (h.float() * w).sum(1) / w.sum(1).clamp_min(1.0)


def _entity_mask(mask: torch.Tensor, image_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: the image tokens of rows that have some, else the real prompt tokens after the first."""
    mask = mask.bool()
    first = mask.int().argmax(1)  # left padding: the first real token
    after_first = mask.clone()
    after_first[torch.arange(mask.shape[0], device=mask.device), first] = False
    if image_mask is None:
        return after_first
    image = image_mask.to(mask.device).bool() & mask
    has = image.any(1, keepdim=True)
    return torch.where(has, image, after_first)


def pool(h: torch.Tensor, reads: str, mask: torch.Tensor | None = None,
         image_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The feature rows a gate reading ``reads`` sees: ``h`` (B, T, d) -> (B, k d) float32.

    ``mask`` (B, T): 1 for real prompt tokens (None: every token is real);
    ``image_mask`` (B, T): 1 at image tokens (None: no row has any, so the image
    parts pool over the prompt, see the module docstring).
    """
    parts = parse_reads(reads)
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    mask = mask.to(h.device).bool()
    out = []
    entity = None
    for part in parts:
        if part == "last":
            out.append(h[:, -1].float())
        elif part == "mean":
            out.append(masked_mean(h, mask))
        else:
            if entity is None:
                entity = _entity_mask(mask, image_mask)
                # A one-token prompt has nothing after its first token: pool that token then.
                entity = torch.where(entity.any(1, keepdim=True), entity, mask)
            if part == "image-mean":
                out.append(masked_mean(h, entity))
            else:
                filled = h.float().masked_fill(~entity[:, :, None], float("-inf"))
                out.append(filled.max(1).values)
    return torch.cat(out, -1)
