"""How strong must the image perturbation be? PGD success across an epsilon grid.

The erasure direction's image-only variant rests on adversarial images that make
the model answer a question it refused. :func:`epsilon_sweep` attacks the same
refused questions at each L-infinity budget (step ``2.5 eps / steps``, the usual
choice) and reports the share the attack flips, the target loss before and
after, and the perturbation actually applied (after 8-bit quantisation).
Cost: ``len(eps) x len(samples) x steps`` forward+backward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.models.loading import LoadedModel, Sample

__all__ = ["epsilon_sweep"]


def epsilon_sweep(model: LoadedModel, samples: Sequence[Sample], targets: Sequence[str],
                  eps_values: Sequence[float] = (4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255), *,
                  steps: int = 30, progress: bool = False, objective: str = "target") -> pd.DataFrame:
    """One row per epsilon: ``success_rate`` (refused clean, answers attacked), ``n_refused_clean``,
    ``loss_clean`` / ``loss_adversarial`` (mean NLL of the objective, :class:`toolkit.adversarial.PGDConfig`),
    ``linf`` (max applied perturbation)."""
    if not eps_values:
        raise ValueError("eps_values is empty.")
    rows = []
    for eps in eps_values:
        res = pgd_attack(model, samples, targets, PGDConfig(eps=eps, step=2.5 * eps / steps, steps=steps,
                                                             objective=objective),
                         progress=progress)
        n = len(res.loss_clean)
        rows.append({"eps": eps, "eps_255": round(eps * 255, 2), "success_rate": res.success_rate,
                     "n_refused_clean": sum(res.refused_clean), "n_success": sum(res.success),
                     "loss_clean": sum(res.loss_clean) / n, "loss_adversarial": sum(res.loss_adversarial) / n,
                     "linf": max(res.linf)})
    return pd.DataFrame(rows)
