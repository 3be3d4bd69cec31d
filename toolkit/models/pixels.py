"""Differentiable image preprocessing, per pixel layout, for attacks in pixel space.

PGD perturbs the image the model sees, in [0, 1] at the processor's resolution,
before normalisation; the model input must then be rebuilt from it by
differentiable operations that equal the family's processor. Two layouts:

* ``"image"``: ``pixel_values`` is one normalised ``(3, H, W)`` image per prompt
  (LLaVA-1.5, Gemma3, PaliGemma).
* ``"patches"``: Qwen2/2.5/3-VL flatten the normalised image into
  ``(grid_h * grid_w, 3 * temporal * patch * patch)`` rows, merge-window by
  merge-window, the single frame repeated ``temporal`` times.

Both are checked against the real processor's output in the tests. Families whose
processors crop or tile the image into several views (LLaVA-NeXT any-res,
Idefics3 splitting) have no layout here yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

__all__ = ["LAYOUTS", "attack_canvas"]


def _stats(ip: Any, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    def vec(v: Any) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float32).flatten()
        return t.expand(channels) if t.numel() == 1 else t

    return vec(ip.image_mean).view(channels, 1, 1), vec(ip.image_std).view(channels, 1, 1)


def _image_layout(ip: Any, image: Image.Image) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    x = ip(images=[image], do_normalize=False, return_tensors="pt")["pixel_values"][0].float()
    mean, std = _stats(ip)
    return x, {}, lambda canvas: ((canvas - mean) / std)[None]


def _patch_geometry(ip: Any) -> tuple[int, int, int]:
    return int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """``(C, H, W) -> (gh * gw, C * temporal * patch * patch)`` in the Qwen-VL processors' order."""
    c, h, w = x.shape
    gh, gw = h // patch, w // patch
    p = x.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch).permute(1, 4, 2, 5, 0, 3, 6)
    p = p[:, :, :, :, :, None].expand(*p.shape[:5], temporal, *p.shape[5:])
    return p.reshape(gh * gw, c * temporal * patch * patch)


def unpatchify(rows: torch.Tensor, grid_h: int, grid_w: int, patch: int, merge: int, temporal: int,
               channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` (first temporal copy): ``(C, H, W)``."""
    p = rows.reshape(grid_h // merge, grid_w // merge, merge, merge, channels, temporal, patch, patch)[:, :, :, :, :, 0]
    return p.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, grid_h * patch, grid_w * patch)


def _patch_layout(ip: Any, image: Image.Image) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    patch, merge, temporal = _patch_geometry(ip)
    out = ip(images=[image], do_normalize=False, return_tensors="pt")
    (t, gh, gw), = out["image_grid_thw"].tolist()
    if t != 1:
        raise ValueError(f"Expected one frame for an image, the processor made {t}.")
    x = unpatchify(out["pixel_values"].float(), gh, gw, patch, merge, temporal)
    mean, std = _stats(ip)
    return x, {"image_grid_thw": out["image_grid_thw"]}, lambda canvas: patchify((canvas - mean) / std, patch,
                                                                                  merge, temporal)


LAYOUTS: dict[str, Callable] = {"image": _image_layout, "patches": _patch_layout}


def attack_canvas(layout: str, image_processor: Any, image: Image.Image
                  ) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    """``(canvas, extra inputs, to_pixel_values)``: the image as the model sees it, in [0, 1],
    ``(3, H, W)`` at the processor's resolution; the processor outputs that go with it
    (``image_grid_thw``); and a differentiable map from a canvas to ``pixel_values``."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown pixel layout {layout!r}; known: {', '.join(LAYOUTS)}.")
    return LAYOUTS[layout](image_processor, image)
