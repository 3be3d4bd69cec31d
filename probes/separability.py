"""Does a direction separate two activation sets? Per layer, before any erasure.

For sets A (e.g. D+, forget) and B (D-, retain) at each layer: project on the
mean-difference direction and report AUROC and best-threshold accuracy of the
projection, the Fisher ratio ``(mu_A - mu_B)^2 / (var_A + var_B)`` along it,
cross-validated logistic-probe accuracy on the full activations, and the cosine
between layers' directions. Metrics from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["separability", "direction_cosines", "layer_separability"]


def separability(a: torch.Tensor, b: torch.Tensor, direction: torch.Tensor | None = None, *, folds: int = 5,
                 seed: int = 0) -> dict:
    """Separation of rows ``a`` (n_a x d) from ``b`` (n_b x d) along ``direction`` (default: mean difference)."""
    a64, b64 = a.double(), b.double()
    d = (a64.mean(0) - b64.mean(0)) if direction is None else direction.double()
    u = d / d.norm().clamp(min=1e-12)
    pa, pb = (a64 @ u).numpy(), (b64 @ u).numpy()
    scores = np.concatenate([pa, pb])
    labels = np.concatenate([np.ones(len(pa)), np.zeros(len(pb))])
    auroc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    n_pos, n_neg = len(pa), len(pb)
    best_acc = float(np.max((tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)))
    fisher = float((pa.mean() - pb.mean()) ** 2 / (pa.var() + pb.var() + 1e-12))
    x = torch.cat([a64, b64]).numpy()
    k = min(folds, n_pos, n_neg)
    probe = float("nan")
    if k >= 2:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        probe = float(cross_val_score(clf, x, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed)).mean())
    return {"auroc": auroc, "projection_accuracy": best_acc, "fisher_ratio": fisher, "probe_accuracy": probe,
            "direction_norm": float(d.norm()), "n_a": n_pos, "n_b": n_neg}


def layer_separability(a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor],
                       directions: Mapping[int, torch.Tensor] | None = None, **kw) -> pd.DataFrame:
    """:func:`separability` for every layer present in both ``a`` and ``b`` (dicts ``layer -> (n, d)``)."""
    rows = []
    for layer in sorted(set(a) & set(b)):
        d = None if directions is None else directions[layer]
        rows.append({"layer": layer, **separability(a[layer], b[layer], d, **kw)})
    return pd.DataFrame(rows)


def direction_cosines(directions: Mapping[int, torch.Tensor]) -> pd.DataFrame:
    """Cosine similarity between every pair of layers' directions (layers x layers)."""
    layers = sorted(directions)
    m = torch.stack([directions[l].double() / directions[l].double().norm() for l in layers])
    return pd.DataFrame((m @ m.T).numpy(), index=layers, columns=layers)
