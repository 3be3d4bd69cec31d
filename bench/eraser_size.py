"""Eraser file size against the dense d x d-per-layer map, for LLaVA-1.5-7B shapes (32 layers x 4096).

    .venv/bin/python bench/eraser_size.py

The factored eraser is written for real (random factors, float32) and its file
measured; the dense size is computed (32 * 4096 * 4096 * 4 bytes), never
allocated. Goal: factored / dense <= 1/1000.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import quiet_torch  # noqa: E402

torch = quiet_torch()
from toolkit.eraser import Eraser, EraserLayer  # noqa: E402

LAYERS, WIDTH = 32, 4096
maps = tuple(EraserLayer(l, torch.randn(WIDTH, 1), torch.randn(1, WIDTH)) for l in range(LAYERS))
eraser = Eraser(maps, 0.3, "prompt", {"architecture": "LlavaForConditionalGeneration", "num_layers": LAYERS,
                                      "hidden_size": WIDTH}, {"bench": True})
with tempfile.TemporaryDirectory() as tmp:
    size = eraser.save(Path(tmp) / "e.safetensors").stat().st_size
dense = LAYERS * WIDTH * WIDTH * 4
print(f"LLaVA-1.5-7B shapes: {LAYERS} layers x {WIDTH}")
print(f"factored eraser file: {size:,} bytes; dense d x d per layer (float32): {dense:,} bytes")
print(f"ratio factored/dense: {size / dense:.2e} = 1/{dense / size:,.0f} (goal <= 1/1000)")
