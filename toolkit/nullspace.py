"""Retain null space: directions the retain activations (almost) never use.

Streaming: :class:`SecondMoment` accumulates the uncentred ``H^T H`` (``d x d``: float64
on the CPU, 128 MiB at d = 4096, or float32 blocks on the rows' device, 64 MiB) and the row
count, so retain activations never have to be held at once. :func:`null_space`
eigendecomposes it and keeps the ``k`` eigenvectors with the smallest eigenvalues
as ``Q`` (``d x k``); the projector is ``P = Q Q^T`` (never formed).

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

__all__ = ["PRECISIONS", "SecondMoment", "RankPolicy", "FixedRatio", "EnergyBudget", "RelativeTolerance", "NullSpace",
           "null_space", "RANK_POLICY_WORDS", "parse_rank_policy", "format_rank_policy"]


PRECISIONS = ("auto", "float64", "float32")


class SecondMoment:
    """Streaming uncentred second moment ``sum_i c_i h_i h_i^T``, row sum ``sum_i c_i h_i`` and
    ``count = sum_i c_i`` (row weights ``c_i``, 1 unless given).

    ``precision``:

    * ``"float64"``: rows are copied to the host and added in float64 at once (8 d^2 bytes);
    * ``"float32"``: rows stay on their device (a CUDA batch is never copied to the host) and are
      summed in float32 about a shift ``c`` (the first rows' mean): ``S = sum c_i (h_i - c)(h_i - c)^T``
      and ``s = sum c_i (h_i - c)``, so a large shared offset (residual streams have one) does not eat
      the float32 mantissa where the null space lives; the rows are added in blocks (up to
      ``block_rows`` wait in a buffer and go in as one ``X^T X``: one rounding per block reaches the
      total). :attr:`gram` rebuilds ``S + c s^T + s c^T + n c c^T`` in float64 when read
      (tests/test_lean.py: the null space, the map and the eraser equal float64's). Memory held:
      4 d^2 bytes plus the buffer (``4 block_rows d``).

    The eigendecomposition is always computed in float64 (the null space is the end of the spectrum,
    where float32's rounding is largest), once per layer, on the moment's device.
    """

    def __init__(self, dim: int, precision: str = "auto", block_rows: int = 4096) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}.")
        self.dim = dim
        self.precision = precision
        self.block_rows = block_rows
        self._gram = torch.zeros(dim, dim, dtype=torch.float64)
        self._total = torch.zeros(dim, dtype=torch.float64)
        self._pending: list[tuple[torch.Tensor, float]] = []
        self._pending_rows = 0
        self.count = 0
        self._eigh: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def gram(self) -> torch.Tensor:
        """``sum_i c_i h_i h_i^T`` (d x d, float64; on the CPU, or rebuilt on the rows' device in float32 mode)."""
        self._flush()
        if self.precision != "float32":
            return self._gram
        s, c = self._total.double(), self._shift.double()
        return self._gram.double() + torch.outer(c, s) + torch.outer(s, c) + self.count * torch.outer(c, c)

    @property
    def total(self) -> torch.Tensor:
        """``sum_i c_i h_i`` (d,)."""
        self._flush()
        if self.precision != "float32":
            return self._total
        return self._total.double() + self.count * self._shift.double()

    @property
    def device(self) -> torch.device:
        return self._gram.device

    def nbytes(self) -> int:
        """Bytes held: the moment, its row sum (and shift) and the pending block."""
        held = [self._gram, self._total] + ([self._shift] if self.precision == "float32" else [])
        return sum(t.numel() * t.element_size() for t in held + [r for r, _ in self._pending])

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eigenvalues ascending, eigenvectors)`` of the moment, computed once until the next update
        (every rank policy, the fit and the probes share it: one O(d^3) solve per layer). Solved in
        float64; float32 mode keeps the eigenvectors in float32 (4 d^2 bytes)."""
        if self._eigh is None:
            values, vectors = torch.linalg.eigh(self.gram)
            self._eigh = (values, vectors.float() if self.precision == "float32" else vectors)
        return self._eigh

    def _start(self, rows: torch.Tensor) -> None:
        # The first rows decide where and how the moment lives ("auto").
        if self.precision == "auto":
            self.precision = "float64" if rows.device.type == "cpu" else "float32"
        if self.precision == "float32":
            self._gram = torch.zeros(self.dim, self.dim, dtype=torch.float32, device=rows.device)
            self._total = torch.zeros(self.dim, dtype=torch.float32, device=rows.device)
            self._shift = rows.detach().float().mean(0)

    def update(self, rows: torch.Tensor, weight: float = 1.0) -> "SecondMoment":
        """Add activations ``rows`` of shape ``(n, d)``, each counted ``weight`` times."""
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"Expected activations of shape (n, {self.dim}), got {tuple(rows.shape)}.")
        if not torch.isfinite(rows).all():
            raise FloatingPointError("Activations contain NaN/inf; refusing to accumulate them. "
                                     "Check the model's dtype (float16 overflow?) and its inputs.")
        if weight < 0:
            raise ValueError(f"Row weights must be >= 0, got {weight}.")
        if self.count == 0 and not self._pending:
            self._start(rows)
        self._eigh = None
        self.count += weight * rows.shape[0]
        if self.precision == "float64":
            x = rows.detach().to("cpu", torch.float64)
            self._gram += weight * (x.T @ x)
            self._total += weight * x.sum(0)
            return self
        self._pending.append((rows.detach().to(self.device, torch.float32) - self._shift, float(weight)))
        self._pending_rows += rows.shape[0]
        if self._pending_rows >= self.block_rows:
            self._flush()
        return self

    def _flush(self) -> None:
        if not self._pending:
            return
        x = torch.cat([r * w ** 0.5 if w != 1.0 else r for r, w in self._pending])
        self._gram += x.T @ x
        self._total += sum(w * r.sum(0) for r, w in self._pending)
        self._pending, self._pending_rows = [], 0

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


# The CLI's words for the policies: parse_rank_policy reads them, format_rank_policy writes them.
RANK_POLICY_WORDS = {"ratio": FixedRatio, "energy": EnergyBudget, "rtol": RelativeTolerance}


def parse_rank_policy(text: str) -> RankPolicy:
    """``"ratio:0.3"``, ``"energy:0.01"`` or ``"rtol:1e-3"`` (the CLI's spelling)."""
    kind, _, value = text.partition(":")
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"Rank policy {text!r}: expected ratio:RHO, energy:TAU or rtol:RTOL.") from None
    if kind not in RANK_POLICY_WORDS:
        raise ValueError(f"Unknown rank policy {kind!r}: use ratio:RHO, energy:TAU or rtol:RTOL.")
    return RANK_POLICY_WORDS[kind](v)


def format_rank_policy(policy: RankPolicy) -> str:
    """The spelling :func:`parse_rank_policy` reads back (``FixedRatio(0.97)`` -> ``"ratio:0.97"``)."""
    kind = next(word for word, cls in RANK_POLICY_WORDS.items() if type(policy) is cls)
    (value,) = (getattr(policy, f) for f in policy.__dataclass_fields__)
    return f"{kind}:{value}"


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
        q = self.basis.to(h.device, h.dtype)
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
