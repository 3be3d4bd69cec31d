"""Differentiable image preprocessing, per pixel layout, for attacks in pixel space.

PGD perturbs the image the model sees, in [0, 1] at the processor's resolution,
before normalisation; the model input must then be rebuilt from it by
differentiable operations that equal the family's processor. Two layouts:

* ``"image"``: ``pixel_values`` is one normalised ``(3, H, W)`` image per prompt
  (LLaVA-1.5, Gemma3, PaliGemma).
* ``"patches"``: Qwen2/2.5/3-VL flatten the normalised image into
  ``(grid_h * grid_w, 3 * temporal * patch * patch)`` rows, merge-window by
  merge-window, the single frame repeated ``temporal`` times.

* ``"anyres"``: LLaVA-NeXT pads the aspect-preserving resize of the image to the
  best of its grid pinpoints and cuts it into ``crop x crop`` tiles, after one
  view of the whole image resized to ``crop x crop``.
* ``"split"``: Idefics3 resizes the image to multiples of ``max_image_size``,
  cuts it into tiles of that size and appends the whole image resized to one
  tile (no splitting: only the resized whole).

For the last two, the canvas is the image at the size the processor tiles (an
8-bit image of that size is processed into exactly these views again), and the
one view that is a *resize* of the canvas is computed by PIL itself on the
canvas rounded to 8 bits (so the forward value is the processor's, bit for bit,
on 8-bit canvases) with the gradient of PIL's own float kernel (a straight-through
estimator for the rounding). That needs the processor's PIL backend: the
torchvision backend resizes with other kernels and is refused.

All four are checked against the real processor's output in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import functools

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["LAYOUTS", "attack_canvas", "canvas_image", "pil_resized"]


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


def _require_pil_backend(ip: Any, family_layout: str) -> None:
    from transformers.image_processing_backends import PilBackend

    if not isinstance(ip, PilBackend):
        raise NotImplementedError(
            f"PGD through the {family_layout!r} layout needs the PIL image processor (its resize is re-implemented "
            f"with PIL's own kernels), but this one is {type(ip).__name__}. Load it with the PIL backend "
            "(`--image-backend pil`; load_model(..., image_backend=\"pil\")), or fit without PGD (`--pgd-steps 0`).")


def canvas_image(canvas: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> the 8-bit RGB image a user would save (and a processor reads)."""
    pixels = (canvas.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def _tiles(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, H, W) -> (rows * cols, 3, size, size)``: the whole ``size x size`` tiles, row by row
    (as transformers' ``divide_to_patches`` and Idefics3's ``split_images`` cut them)."""
    rows, cols = x.shape[1] // size, x.shape[2] // size
    grid = x[:, :rows * size, :cols * size].reshape(3, rows, size, cols, size).permute(1, 3, 0, 2, 4)
    return grid.reshape(rows * cols, 3, size, size)


@functools.lru_cache(maxsize=64)
def _pil_kernel(n_in: int, n_out: int, resample: int) -> torch.Tensor:
    """``(n_out, n_in)``: PIL's 1-D resampling weights for ``n_in -> n_out`` pixels, read off by
    resizing the identity in float mode (``"F"``), where PIL neither rounds nor clips."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    rows = np.asarray(eye.resize((n_out, n_in), resample=resample), dtype=np.float32)  # (n_in, n_out)
    return torch.from_numpy(rows.T.copy())


def pil_resized(canvas: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """``(3, h, w) -> (3, height, width)`` in [0, 1], as a PIL-backend processor resizes.

    Forward: PIL's 8-bit resize of the canvas rounded to 8 bits (bit-identical to the
    processor on 8-bit canvases; PIL rounds after each of its two passes, which no
    float map reproduces). Gradient: PIL's float kernel ``R_h x R_w^T``."""
    h, w = canvas.shape[-2:]
    if (h, w) == (height, width):
        return canvas  # PIL copies an image resized to its own size
    r_h = _pil_kernel(h, height, int(resample)).to(canvas)
    r_w = _pil_kernel(w, width, int(resample)).to(canvas)
    linear = r_h @ canvas @ r_w.T
    with torch.no_grad():
        exact = np.asarray(canvas_image(canvas).resize((width, height), resample=resample))
        exact = torch.from_numpy(exact.copy()).permute(2, 0, 1).to(canvas) / 255
    return linear + (exact - linear).detach()


def _chw_uint8(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()


def _anyres_layout(ip: Any, image: Image.Image) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    _require_pil_backend(ip, "anyres")
    crop = ip.crop_size.height if ip.crop_size and ip.crop_size.height else None
    base = (ip.size.height, ip.size.width) if ip.size.height and ip.size.width else (ip.size.shortest_edge,) * 2
    if crop is None or base != (crop, crop) or (ip.crop_size.width or crop) != crop:
        raise NotImplementedError(
            f"PGD for LLaVA-NeXT assumes square views whose size equals the crop size (as in the released "
            f"checkpoints); this processor has size {ip.size} and crop_size {ip.crop_size}. Fit with `--pgd-steps 0`.")
    arr = _chw_uint8(image)
    best_h, best_w = select_best_resolution(arr.shape[-2:], ip.image_grid_pinpoints)
    new_h, new_w = get_patch_output_size(arr, (best_h, best_w), ChannelDimension.FIRST)
    views = ip(images=[image], do_normalize=False, return_tensors="pt")["pixel_values"][0].float()
    rows, cols = best_h // crop, best_w // crop
    # The tiles after the first (whole-image) view, row by row, are the padded canvas.
    grid = views[1:1 + rows * cols].reshape(rows, cols, 3, crop, crop).permute(2, 0, 3, 1, 4)
    top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
    canvas = grid.reshape(3, best_h, best_w)[:, top:top + new_h, left:left + new_w].contiguous()
    mean, std = _stats(ip)

    def to_pixel_values(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (left, best_w - new_w - left, top, best_h - new_h - top))  # zeros, as the processor
        whole = pil_resized(x, crop, crop, ip.resample)
        return ((torch.cat([whole[None], _tiles(padded, crop)]) - mean) / std)[None]

    return canvas, {"image_sizes": torch.tensor([[new_h, new_w]])}, to_pixel_values


def _split_layout(ip: Any, image: Image.Image) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    from transformers.image_utils import SizeDict

    _require_pil_backend(ip, "split")
    if not hasattr(ip, "resize_for_vision_encoder") or not ip.do_resize:
        raise NotImplementedError(f"PGD through the 'split' layout assumes Idefics3's image processor, resizing "
                                  f"(do_resize=True); this is {type(ip).__name__}. "
                                  "Fit with `--pgd-steps 0`.")
    tile = int(ip.max_image_size["longest_edge"])
    # The processor's own sizing steps (its public methods), on the 8-bit image.
    arr = ip.resize(_chw_uint8(image), SizeDict(longest_edge=ip.size.longest_edge), resample=ip.resample)
    if ip.do_image_splitting:
        arr = ip.resize_for_vision_encoder(arr, tile, resample=ip.resample)
    canvas = torch.from_numpy(np.asarray(arr, dtype=np.float32) / 255)
    mean, std = _stats(ip)

    def to_pixel_values(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not ip.do_image_splitting:
            frames = pil_resized(x, tile, tile, ip.resample)[None]
        elif h > tile or w > tile:  # Idefics3 cuts (h - tile) // tile + 1 = h // tile rows, likewise columns
            frames = torch.cat([_tiles(x, tile), pil_resized(x, tile, tile, ip.resample)[None]])
        else:
            frames = x[None]
        return ((frames - mean) / std)[None]

    return canvas, {}, to_pixel_values


LAYOUTS: dict[str, Callable] = {"image": _image_layout, "patches": _patch_layout, "anyres": _anyres_layout,
                                "split": _split_layout}


def attack_canvas(layout: str, image_processor: Any, image: Image.Image
                  ) -> tuple[torch.Tensor, dict, Callable[[torch.Tensor], torch.Tensor]]:
    """``(canvas, extra inputs, to_pixel_values)``: the image as the model sees it, in [0, 1],
    ``(3, H, W)`` at the processor's resolution (the size it tiles, for "anyres"/"split"); the
    processor outputs that go with an 8-bit image of the canvas (``image_grid_thw``,
    ``image_sizes``); and a differentiable map from a canvas to ``pixel_values``, shaped as the
    processor's for one image.

    An 8-bit image of the canvas is processed into the same canvas again, so an attack's
    image can be handed back at this size and measured as it was optimised."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown pixel layout {layout!r}; known: {', '.join(LAYOUTS)}.")
    return LAYOUTS[layout](image_processor, image)
