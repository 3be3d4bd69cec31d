"""Retain null space: directions the retain activations (almost) never use.

Streaming: :class:`SecondMoment` accumulates the uncentred ``H^T H`` (float64,
``d x d``: 128 MiB at d = 4096) and the row count, so retain activations never
have to be held at once. :func:`null_space` eigendecomposes it and keeps the
``k`` eigenvectors with the smallest eigenvalues as ``Q`` (``d x k``); the
projector is ``P = Q Q^T`` (never formed).

Rank policies (pick ``k``):

* :class:`FixedRatio` ``k = int(rho * d)``, floored as the reference code does (rho = 0.3 LLaVA-1.5:
  1228 of 4096; 0.4 Qwen2.5-VL: 1433 of 3584);
* :class:`EnergyBudget` the largest ``k`` whose directions hold at most ``tau``
  of the retain energy ``||H_r||_F^2``;
* :class:`RelativeTolerance` eigenvalues below ``rtol * lambda_max``.

Every result reports ``k`` and the retain energy that leaks through,
``||H_r P||_F^2 / ||H_r||_F^2`` (= kept eigenvalues / all eigenvalues).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SecondMoment", "RankPolicy", "FixedRatio", "EnergyBudget", "RelativeTolerance", "NullSpace",
           "null_space", "parse_rank_policy"]


class SecondMoment:
    """Streaming uncentred second moment ``sum_i c_i h_i h_i^T``, row sum ``sum_i c_i h_i`` and
    ``count = sum_i c_i`` (row weights ``c_i``, 1 unless given). Memory: 8 d^2 bytes."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.count = 0
        self._eigh: tuple[torch.Tensor, torch.Tensor] | None = None

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eigenvalues ascending, eigenvectors)`` of the moment, computed once until the next update
        (every rank policy, the fit and the probes share it: one O(d^3) solve per layer)."""
        if self._eigh is None:
            self._eigh = torch.linalg.eigh(self.gram)
        return self._eigh

    def update(self, rows: torch.Tensor, weight: float = 1.0) -> "SecondMoment":
        """Add activations ``rows`` of shape ``(n, d)``, each counted ``weight`` times."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"Expected activations of shape (n, {self.dim}), got {tuple(rows.shape)}.")
        if not torch.isfinite(rows).all():
            raise FloatingPointError("Activations contain NaN/inf; refusing to accumulate them. "
                                     "Check the model's dtype (float16 overflow?) and its inputs.")
        if weight < 0:
            raise ValueError(f"Row weights must be >= 0, got {weight}.")
        x = rows.detach().to("cpu", torch.float64)
        self._eigh = None
        self.gram += weight * (x.T @ x)
        self.total += weight * x.sum(0)
        self.count += weight * x.shape[0]
        return self

    @property
    def energy(self) -> float:
        """``||H||_F^2``."""
        return float(self.gram.trace())


class RankPolicy:
    def choose(self, eigenvalues: torch.Tensor) -> int:  # eigenvalues ascending
        raise NotImplementedError


@dataclass(frozen=True)
class FixedRatio(RankPolicy):
    rho: float = 0.3

    def choose(self, eigenvalues: torch.Tensor) -> int:
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}.")
        # int(), not round(): the reference keeps int(rho * d) directions, and one direction more
        # changes the map (up to 62% of the shift on random data).
        return int(self.rho * eigenvalues.numel())


@dataclass(frozen=True)
class EnergyBudget(RankPolicy):
    tau: float = 0.01

    def choose(self, eigenvalues: torch.Tensor) -> int:
        share = torch.cumsum(eigenvalues.clamp(min=0), 0) / eigenvalues.clamp(min=0).sum()
        return int((share <= self.tau).sum())


@dataclass(frozen=True)
class RelativeTolerance(RankPolicy):
    rtol: float = 1e-3

    def choose(self, eigenvalues: torch.Tensor) -> int:
        return int((eigenvalues <= self.rtol * eigenvalues.max()).sum())


def parse_rank_policy(text: str) -> RankPolicy:
    """``"ratio:0.3"``, ``"energy:0.01"`` or ``"rtol:1e-3"`` (the CLI's spelling)."""
    kind, _, value = text.partition(":")
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"Rank policy {text!r}: expected ratio:RHO, energy:TAU or rtol:RTOL.") from None
    table = {"ratio": FixedRatio, "energy": EnergyBudget, "rtol": RelativeTolerance}
    if kind not in table:
        raise ValueError(f"Unknown rank policy {kind!r}: use ratio:RHO, energy:TAU or rtol:RTOL.")
    return table[kind](v)


@dataclass(frozen=True)
class NullSpace:
    """``basis``: ``Q`` (d x k, orthonormal columns); ``eigenvalues``: all d, ascending."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor
    leaked_energy: float
    policy: RankPolicy

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """``h P`` for rows ``h`` (n x d), without forming ``P``."""
        q = self.basis.to(h.dtype)
        return (h @ q) @ q.T


def null_space(moment: SecondMoment, policy: RankPolicy) -> NullSpace:
    """Eigendecompose the retain second moment and keep the ``k`` weakest directions."""
    if moment.count == 0:
        raise ValueError("No retain activations were accumulated: the retain set is empty.")
    eigenvalues, vectors = moment.eigh()
    k = policy.choose(eigenvalues)
    if k <= 0:
        raise ValueError(
            f"The rank policy {policy} leaves k = 0 null-space directions (smallest retain eigenvalue share "
            f"{float(eigenvalues[0] / eigenvalues.sum()):.2e}). Loosen it: a larger tau/rtol, or ratio:RHO.")
    leaked = float(eigenvalues[:k].clamp(min=0).sum() / eigenvalues.clamp(min=0).sum())
    return NullSpace(vectors[:, :k].contiguous(), eigenvalues, leaked, policy)
