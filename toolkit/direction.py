"""Erasure directions: ``d_l = mean_{D+} h_l - mean_{D-} h_l``.

``D+`` (knowledge erasure): requests the model refuses. ``D-`` (knowledge
recall): the same requests where the model complies (in the multimodal recipe,
the same prompts with adversarially perturbed images). ``h_l`` is the output of
decoder block ``l`` at the last prompt token. The direction points from recall
toward refusal, so a positive ``lam`` steers toward refusal.

Variants (compare them with the probes): ``multimodal`` (the pairs as given),
``text_only`` (both sides without images) and ``image_only`` (``D+`` and ``D-``
share the text; only the image differs: clean vs adversarial).

Tensors only: :func:`toolkit.pipeline.erasure_direction` captures the two sets and averages them here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MeanAccumulator", "Direction"]


class MeanAccumulator:
    """Streaming mean of activations per layer."""

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0

    def update(self, acts: dict[int, torch.Tensor]) -> None:
        n = None
        for layer, rows in acts.items():
            rows = rows.to(torch.float64)
            self.sums[layer] = self.sums.get(layer, 0) + rows.sum(0)
            n = rows.shape[0]
        self.count += n or 0

    def mean(self, layer: int) -> torch.Tensor:
        return self.sums[layer] / self.count


@dataclass(frozen=True)
class Direction:
    """Per-layer erasure directions with the two set means they came from."""

    vectors: dict[int, torch.Tensor]  # layer -> (d,) float64, refusal mean - recall mean
    refusal_mean: dict[int, torch.Tensor]
    recall_mean: dict[int, torch.Tensor]
    n_refusal: int
    n_recall: int
    variant: str = "multimodal"

    def unit(self, layer: int) -> torch.Tensor:
        v = self.vectors[layer]
        return v / v.norm()

    def norms(self) -> dict[int, float]:
        return {l: float(v.norm()) for l, v in self.vectors.items()}
