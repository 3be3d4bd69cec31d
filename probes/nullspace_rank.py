"""How much null space each layer has, and what the map's gate will see.

Per layer: the retain eigen-spectrum, ``k`` under each rank policy, the retain
energy that leaks through the projector, the share of each forget activation
that lies in the null space (``||h P||^2 / ||h||^2``: what the map can act on),
and the gate values ``h . w`` on forget vs retain activations; the overlap of
those two distributions is the retain damage to expect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from toolkit.eraser import solve_map
from toolkit.nullspace import EnergyBudget, FixedRatio, RankPolicy, RelativeTolerance, SecondMoment, null_space

__all__ = ["DEFAULT_POLICIES", "rank_table", "spectrum", "forget_in_null_space", "gate_values", "eraser_gate_values",
           "gate_overlap"]

DEFAULT_POLICIES: tuple[RankPolicy, ...] = (FixedRatio(0.3), FixedRatio(0.4), EnergyBudget(0.01),
                                            EnergyBudget(0.05), RelativeTolerance(1e-3), RelativeTolerance(1e-2))


def _moment(rows: torch.Tensor) -> SecondMoment:
    return SecondMoment(rows.shape[1]).update(rows)


def spectrum(retain: Mapping[int, torch.Tensor]) -> pd.DataFrame:
    """Long table of eigenvalues (ascending) per layer, with their share of the retain energy."""
    rows = []
    for layer, h in sorted(retain.items()):
        ev = torch.linalg.eigvalsh(_moment(h).gram).clamp(min=0)
        share = ev / ev.sum()
        rows += [{"layer": layer, "index": i, "eigenvalue": float(e), "energy_share": float(s)}
                 for i, (e, s) in enumerate(zip(ev, share))]
    return pd.DataFrame(rows)


def rank_table(retain: Mapping[int, torch.Tensor], forget: Mapping[int, torch.Tensor] | None = None,
               policies: Sequence[RankPolicy] = DEFAULT_POLICIES) -> pd.DataFrame:
    """Per layer and policy: ``k``, retain energy leaked, mean forget share in the null space."""
    rows = []
    for layer, h in sorted(retain.items()):
        m = _moment(h)
        for policy in policies:
            try:
                space = null_space(m, policy)
            except ValueError:
                rows.append({"layer": layer, "policy": repr(policy), "k": 0})
                continue
            row = {"layer": layer, "policy": repr(policy), "k": space.k, "retain_energy_leaked": space.leaked_energy}
            if forget is not None:
                row["forget_share_in_null"] = float(forget_in_null_space(forget[layer], space).mean())
            rows.append(row)
    return pd.DataFrame(rows)


def forget_in_null_space(forget: torch.Tensor, space) -> torch.Tensor:
    """Per forget row: ``||h P||^2 / ||h||^2``."""
    h = forget.double()
    return space.project(h).pow(2).sum(1) / h.pow(2).sum(1)


def gate_values(retain: torch.Tensor, forget: torch.Tensor, policy: RankPolicy = FixedRatio(0.3),
                gamma: float = 0.1) -> pd.DataFrame:
    """Gate ``h . w`` of the closed-form map for every retain and forget row (long table)."""
    space = null_space(_moment(retain), policy)
    fm = _moment(forget)
    w = solve_map(fm.gram, fm.total, space, gamma)[:, 0]
    rows = [{"set": "retain", "gate": float(g)} for g in retain.double() @ w]
    rows += [{"set": "forget", "gate": float(g)} for g in forget.double() @ w]
    return pd.DataFrame(rows)


def eraser_gate_values(layer_map, retain: torch.Tensor, forget: torch.Tensor) -> pd.DataFrame:
    """Gate ``h . w`` of a fitted eraser's map (``Eraser.layer_map(l)``) for every retain and forget row."""
    rows = [{"set": "retain", "gate": float(g)} for g in layer_map.gate(retain)[:, 0]]
    rows += [{"set": "forget", "gate": float(g)} for g in layer_map.gate(forget)[:, 0]]
    return pd.DataFrame(rows)


def gate_overlap(gates: pd.DataFrame, threshold: float = 0.5) -> dict:
    """Share of retain rows gated above ``threshold`` and of forget rows below it."""
    r = gates[gates.set == "retain"].gate
    f = gates[gates.set == "forget"].gate
    return {"retain_above": float((r.abs() > threshold).mean()), "forget_below": float((f < threshold).mean()),
            "retain_gate_rms": float((r ** 2).mean() ** 0.5), "forget_gate_mean": float(f.mean())}
