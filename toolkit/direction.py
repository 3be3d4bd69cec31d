"""Erasure directions: ``d_l = mean_{D+} h_l - mean_{D-} h_l``.

``D+`` (knowledge erasure): requests the model refuses. ``D-`` (knowledge
recall): the same requests where the model complies (in the multimodal recipe,
the same prompts with adversarially perturbed images). ``h_l`` is the output of
decoder block ``l`` at the last prompt token. The direction points from recall
toward refusal, so a positive ``lam`` steers toward refusal.

Variants (compare them with the probes): ``multimodal`` (the pairs as given),
``text_only`` (both sides without images) and ``image_only`` (``D+`` and ``D-``
share the text; only the image differs: clean vs adversarial).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .models.loading import LoadedModel, Sample
from .tracing import iter_capture

__all__ = ["MeanAccumulator", "Direction", "erasure_direction"]


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


def erasure_direction(model: LoadedModel, refusal: Sequence[Sample], recall: Sequence[Sample],
                      layers: Sequence[int], *, variant: str = "multimodal", batch_size: int = 32,
                      progress: bool = False, share_prefix: bool = True) -> Direction:
    """Mean difference at the last prompt token, per layer, streamed in batches.

    ``variant="text_only"`` drops the images of both sets; ``"image_only"``
    requires both sets to share their texts (pairs differing only in the image).
    """
    if not refusal or not recall:
        raise ValueError(f"Both contrastive sets need samples (D+: {len(refusal)}, D-: {len(recall)}).")
    if variant == "text_only":
        refusal = [Sample(s.text) for s in refusal]
        recall = [Sample(s.text) for s in recall]
    elif variant == "image_only":
        if [s.text for s in refusal] != [s.text for s in recall]:
            raise ValueError("The image-only direction needs pairs that share their text and differ in the image.")
        if any(s.image is None for s in list(refusal) + list(recall)):
            raise ValueError("The image-only direction needs an image on every sample.")
    elif variant != "multimodal":
        raise ValueError(f"variant must be multimodal, text_only or image_only, got {variant!r}.")
    layers = model.check_layers(layers)
    plus, minus = MeanAccumulator(), MeanAccumulator()
    for acc, samples, name in ((plus, refusal, "D+ (refusal)"), (minus, recall, "D- (recall)")):
        for _, acts in iter_capture(model, samples, layers, "last", batch_size=batch_size,
                                    progress=progress and name, share_prefix=share_prefix):
            acc.update(acts)
    vectors = {l: plus.mean(l) - minus.mean(l) for l in layers}
    return Direction(vectors, {l: plus.mean(l) for l in layers}, {l: minus.mean(l) for l in layers},
                     plus.count, minus.count, variant)
