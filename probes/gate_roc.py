"""Each gate kind's ROC per layer on validation people, before any erasure (no generation).

The rehearsal's stand-ins (validation people, :mod:`toolkit.selection`) play the
forget list: each kind's gate is fitted on their questions against the fit
people's, as the real gate is fitted on the forget questions, and is scored on
the stand-ins' questions (positives) and on the other validation people's
(negatives: never in the fit nor "forgotten"). The linear kind is the same fit's
null-space map refitted for the stand-ins (:func:`toolkit.fit.refit_forget`).
Nothing reads an evaluation person or a forget person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch

from toolkit.data.mllmu import MLLMUBench
from toolkit.config import FitConfig
from toolkit.benchmark_fit import FitResult, refit_fitter, rehearsal_eraser
from toolkit.gates import GATE_KINDS, auroc, fit_gate
from toolkit.models.loading import LoadedModel

__all__ = ["GateROC", "gate_roc"]


@dataclass
class GateROC:
    summary: pd.DataFrame  # layer, gate, auroc, tpr at 2% / 5% false positives
    curves: pd.DataFrame  # layer, gate, fpr, tpr


def _curve(pos: torch.Tensor, neg: torch.Tensor) -> tuple[list[float], list[float]]:
    from sklearn.metrics import roc_curve

    y = [1] * len(pos) + [0] * len(neg)
    fpr, tpr, _ = roc_curve(y, torch.cat([pos, neg]).double().numpy())
    return fpr.tolist(), tpr.tolist()


# The MLP gate (the paper's map ablation, studies.ablations) is left out by default: 3.5 s a layer to
# train on 8k retain rows on 2 CPU cores, against 1.6 s for the logistic one. kinds=GATE_KINDS includes it.
DEFAULT_KINDS = tuple(k for k in GATE_KINDS if k != "mlp")


def gate_roc(model: LoadedModel, fit: FitResult, bench: MLLMUBench, config: FitConfig,
             layers: Sequence[int] | None = None, kinds: Sequence[str] = DEFAULT_KINDS) -> GateROC:
    """ROC of each gate kind in ``kinds`` at every layer (module docstring). ``fit`` must keep gate rows
    (``FitConfig(gate_rows=True)`` or a membership gate)."""
    if config.people is None:
        raise ValueError("The gate ROC is measured on validation people: fit with FitConfig(people=PeopleSplit()).")
    layers = list(layers or fit.eraser.layers)
    stand, _ = config.people.rehearsal(bench.retain(config.forget_ratio), len(bench.forget(config.forget_ratio)))
    stand_ids = {p.id for p in stand}
    stand_fit = refit_fitter(model, fit, stand, config)  # one capture of the stand-ins for every kind
    positives = stand_fit.gate_rows["forget"]
    fitter = fit.fitter
    outside = torch.tensor([p not in stand_ids for p in fitter.calibration_people])
    linear = rehearsal_eraser(model, fit, stand_fit, stand, replace(config, gate="linear")) if "linear" in kinds \
        else None
    rows, curves = [], []
    for layer in layers:
        pos_rows, neg_rows = positives[layer], fitter.gate_rows["calibration"][layer][outside]
        for kind in kinds:
            if kind == "linear":
                m = linear.layer_map(layer)
                score = lambda x, m=m: m.gate(x[:, :m.width])[:, 0]  # noqa: E731
            else:
                score = fit_gate(kind, pos_rows, fitter.gate_rows["retain"][layer], reads=fitter.gate_reads).score
            pos, neg = score(pos_rows), score(neg_rows)
            fpr, tpr = _curve(pos, neg)
            row = {"layer": layer, "gate": kind, "auroc": auroc(pos, neg)}
            for at in (0.02, 0.05):
                thr = torch.quantile(neg.double(), 1 - at, interpolation="higher")
                row[f"tpr@{at:.0%}"] = float((pos.double() > thr).double().mean())
            rows.append(row)
            curves += [{"layer": layer, "gate": kind, "fpr": f, "tpr": t} for f, t in zip(fpr, tpr)]
    return GateROC(pd.DataFrame(rows), pd.DataFrame(curves))
