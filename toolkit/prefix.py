"""Shared-prefix batches: compute an image's prompt prefix once and reuse its key/value cache.

Every question about a person repeats that person's image, and in the chat
templates of the image families the image comes before the question. Under
causal attention the states of the tokens up to where the questions differ
(the image tokens, hundreds of them: 576 for LLaVA-1.5) are the same for each
question. :func:`toolkit.tracing.iter_capture` therefore orders the samples by
image and, for each batch,

1. runs the common prefix once per distinct image in the batch (with its pixels):
   the prefixes' layer outputs and their key/value cache;
2. runs the questions' remaining tokens (the suffixes) as one right-padded batch
   on that cache, each row on its own image's rows of it, at the positions that
   follow the prefix;

and puts each sample's states back together into the left-padded ``(B, T, d)``
layout a plain forward of the batch's encoding gives. What is read from them
(a gate read, a mask, teacher-forced answers) is then computed as before.
The states equal a plain forward's up to float rounding (tests/test_prefix.py,
every image family, left-padded groups).

Costs: the prefix's ``p`` tokens go through the layers once per image and batch
instead of once a sample; attention still reads them for every suffix token. The
cache, expanded to the batch, is ``B x layers x 2 x p x d`` numbers (keys and
values) in the model's dtype for a batch of ``B``.

Where it cannot apply, the plain forward is used (the caller falls back):
a family whose prefix is bidirectional (PaliGemma: the image tokens attend to the
question), groups of one, text-only samples, steered captures (a gate reading the
whole prompt decides at prefill), and remote execution.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .models.loading import Sample

__all__ = ["image_key", "prefix_groups", "SharedPrefix", "split_prefix", "suffix_inputs", "assemble"]


def image_key(image: Any) -> Any:
    """A key equal for equal images: the bytes' digest (PIL images: mode, size and pixels), a path as given."""
    if image is None:
        return None
    if isinstance(image, dict) and "bytes" in image:
        image = image["bytes"]
    if isinstance(image, (bytes, bytearray)):
        return ("bytes", hashlib.blake2b(bytes(image), digest_size=16).hexdigest())
    if hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode"):
        return ("pixels", image.mode, tuple(image.size), hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())
    return ("path", str(image))


def prefix_groups(samples: Sequence[Sample], min_size: int = 2, keys: Sequence[Any] | None = None
                  ) -> tuple[list[list[int]], list[int]]:
    """``(groups, rest)``: indices of image samples sharing an image (groups of at least ``min_size``, in first-seen
    order) and the indices of every other sample. Batches are cut from the groups in order, so a batch holds a
    few images' questions and each of its images' prefixes runs once. ``keys``: the samples' :func:`image_key`\ s,
    if the caller has them."""
    keys = [image_key(s.image) for s in samples] if keys is None else keys
    by_image: dict[Any, list[int]] = {}
    rest = []
    for i, key in enumerate(keys):
        if key is None:
            rest.append(i)
        else:
            by_image.setdefault(key, []).append(i)
    groups = []
    for idx in by_image.values():
        if len(idx) >= min_size:
            groups.append(idx)
        else:
            rest.extend(idx)
    return groups, sorted(rest)


@dataclass(frozen=True)
class SharedPrefix:
    """How one left-padded batch splits into shared prefixes and per-sample suffixes.

    Attributes:
        length: ``p``, the prefix's tokens: the same ids in every row, every image token among them, and at
            least one token of each row after them.
        source: ``(G,)`` the batch row whose image each of the ``G`` prefixes shows (one per distinct image).
        index: ``(B,)`` which prefix each row continues.
        prefix: the inputs of the prefix forward (``G`` rows of ``p`` tokens, their images' pixel inputs).
        lengths: each row's real tokens.
    """

    length: int
    source: torch.Tensor
    index: torch.Tensor
    prefix: dict[str, torch.Tensor]
    lengths: tuple[int, ...]


def _rows(enc: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    attn = enc["attention_mask"].bool()
    return [enc["input_ids"][i][attn[i]] for i in range(attn.shape[0])]


def _per_token(enc: dict[str, torch.Tensor]) -> list[str]:
    """The per-token inputs of a left-padded encoding besides the ids and the mask (token types)."""
    shape = enc["input_ids"].shape
    return [k for k, v in enc.items() if k not in ("input_ids", "attention_mask") and v.shape == shape]


def split_prefix(enc: dict[str, torch.Tensor], keys: Sequence[Any], image_mask: Callable[[torch.Tensor], torch.Tensor],
                 image_rows: Callable[[dict, torch.Tensor], dict]) -> SharedPrefix | None:
    """The longest token prefix common to every row of ``enc`` (left padded; ``keys``: each row's image key),
    or None when it does not hold every image token of each row (nothing would be shared that matters, or the
    rows' images differ in size).

    ``image_mask``: ``input_ids -> (B, T) bool``, True at image tokens; ``image_rows``: ``(enc, rows) -> the
    batch-level image inputs of those rows`` (the family adapter's :meth:`~toolkit.models.adapters.Adapter.image_rows`).
    """
    rows = _rows(enc)
    shortest = min(len(r) for r in rows)
    first = rows[0]
    same = torch.ones(shortest - 1, dtype=torch.bool)  # at least one token of each row stays in its suffix
    for r in rows[1:]:
        same &= r[:shortest - 1] == first[:shortest - 1]
    p = int(same.int().cumprod(0).sum())
    width = enc["input_ids"].shape[1]
    images = image_mask(enc["input_ids"])
    starts = [width - len(r) for r in rows]
    if p == 0 or any(not bool(images[i, s:s + p].any()) or bool(images[i, s + p:].any())
                     for i, s in enumerate(starts)):
        return None
    first_row: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first_row.setdefault(k, i)
    source = torch.tensor(list(first_row.values()))
    index = torch.tensor([list(first_row).index(k) for k in keys])
    prefix = dict(image_rows(enc, source))
    prefix["input_ids"] = torch.stack([enc["input_ids"][i, starts[i]:starts[i] + p] for i in source.tolist()])
    prefix["attention_mask"] = torch.ones(len(source), p, dtype=enc["attention_mask"].dtype,
                                          device=enc["attention_mask"].device)
    for k in _per_token(enc):
        prefix[k] = torch.stack([enc[k][i, starts[i]:starts[i] + p] for i in source.tolist()])
    return SharedPrefix(p, source, index, prefix, tuple(len(r) for r in rows))


def suffix_inputs(enc: dict[str, torch.Tensor], split: SharedPrefix, pad_id: int) -> dict[str, torch.Tensor]:
    """The suffixes of a batch, right padded (real tokens first, so no real token attends to a pad), and their
    attention mask over prefix and suffix."""
    rows = _rows(enc)
    p = split.length
    width = max(len(r) for r in rows) - p
    batch = len(rows)
    attn = enc["attention_mask"].bool()
    ids = torch.full((batch, width), pad_id, dtype=enc["input_ids"].dtype, device=enc["input_ids"].device)
    mask = torch.zeros(batch, p + width, dtype=enc["attention_mask"].dtype, device=ids.device)
    per_token = _per_token(enc)
    extra = {k: torch.zeros(batch, width, dtype=enc[k].dtype, device=ids.device) for k in per_token}
    for i, r in enumerate(rows):
        n = len(r) - p
        ids[i, :n] = r[p:]
        mask[i, :p + n] = 1
        for k in per_token:
            extra[k][i, :n] = enc[k][i][attn[i]][p:]
    return dict(input_ids=ids, attention_mask=mask, **extra)


def assemble(prefix_h: torch.Tensor, suffix_h: torch.Tensor, split: SharedPrefix, width: int) -> torch.Tensor:
    """Each row's states in the left-padded layout of its encoding: ``prefix_h`` (G, p, d) and ``suffix_h``
    (B, S, d) -> (B, width, d), zeros at pads."""
    p = split.length
    out = suffix_h.new_zeros(len(split.lengths), width, suffix_h.shape[-1])
    for i, (n, g) in enumerate(zip(split.lengths, split.index.tolist())):
        out[i, width - n: width - n + p] = prefix_h[g]
        out[i, width - n + p:] = suffix_h[i, : n - p]
    return out
