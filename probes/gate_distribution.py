"""Where a fitted eraser's gate fires: its distribution per group of people, per layer.

The utility claim of the method rests on the gate ``h . w`` being ~0 on every
input that is not about a forget person. Inside the fit that holds by
construction (the null space and the retain penalty are built from those very
rows), so the question is what the gate does on people the fit never saw.
:func:`gate_distribution` reads the gate of a fitted :class:`~toolkit.eraser.Eraser`
(penalty and answer rows included: the gate is the eraser's own, not a refit)
at the last prompt token of each group's questions; :func:`gate_summary` gives
per group and layer the mean, the 90th percentile and the share of questions
the gate fires on (``gate > threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from toolkit.models.loading import LoadedModel, Sample
from toolkit.tracing import capture

__all__ = ["gate_distribution", "gate_summary"]


def gate_distribution(model: LoadedModel, eraser, groups: Mapping[str, Sequence[Sample]],
                      layers: Sequence[int] | None = None, *, batch_size: int = 48) -> pd.DataFrame:
    """Long table, one row per (group, layer, sample): the gate (first gate column; the sum of
    columns for a composed eraser) at the last prompt token."""
    layers = list(layers or eraser.layers)
    rows = []
    reads = {eraser.layer_map(l).reads for l in layers}
    for name, samples in groups.items():
        # What each layer's gate reads: the last prompt token, or it and the prompt's mean state.
        acts = {r: capture(model, list(samples), layers, r, batch_size=batch_size) for r in reads}
        for layer in layers:
            m = eraser.layer_map(layer)
            gate = m.gate(acts[m.reads][layer]).sum(-1)
            rows += [{"group": name, "layer": layer, "gate": float(g)} for g in gate]
    return pd.DataFrame(rows)


def gate_summary(gates: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per (group, layer): n, mean, 90th percentile and the share with ``gate > threshold``."""
    g = gates.groupby(["group", "layer"], sort=False).gate
    out = pd.DataFrame({"n": g.size(), "mean": g.mean(), "q90": g.quantile(0.9),
                        f"fires(>{threshold:g})": g.apply(lambda s: float((s > threshold).mean()))})
    return out.reset_index()
