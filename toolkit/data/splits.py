"""Disjoint people for fitting, choosing settings and reporting.

An eraser's utility claim is about people it has never seen: the retain
activations that build the null space, the retain penalty and the answer rows
must come from other people than the ones the utility is measured on, and the
settings (layer, strength) must be chosen on yet others. :class:`PeopleSplit`
gives every non-forget person one role by a seeded hash of their ID:

* ``fit``: their activations enter the fit (null space, penalty, answer rows,
  contrastive pairs);
* ``validation``: settings are chosen on them (the rehearsal, below);
* ``evaluation``: reported only; nothing about them reaches the fit or the choice.

The rule is a hash, not a shuffle: a person keeps the same role whatever the
forget list (MLLMU-Bench's forget_5 / 10 / 15 are nested, so the evaluation
people of forget_15 are evaluation people of forget_5 too), and a benchmark
with more people does not reshuffle the old ones. Retain people and real
people (``Retain_Set``) are split by the same rule and reported apart.

The rehearsal. Forgetting cannot be tuned on the forget people (they are what
is reported). Settings are chosen on a rehearsal instead: an equally large
group of validation people is "forgotten" with the same fit (same retain
statistics and direction, their own forget rows), and layer and strength are
chosen by how much that group leaks against how much the remaining validation
people still recall. See :meth:`PeopleSplit.rehearsal`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .mllmu import Profile

__all__ = ["ROLES", "PeopleSplit"]

ROLES = ("fit", "validation", "evaluation")


@dataclass(frozen=True)
class PeopleSplit:
    """Roles by ``sha256(f"{seed}:{id}")``: the first ``fit`` share fits, the next ``validation``
    share chooses, the rest is evaluated. Shares are of the hash range, so counts vary a little."""

    seed: int = 0
    """Seed of the hash that gives each person a role (the people seed)."""
    fit: float = 0.45
    """Share of the retain and real people whose activations build the fit."""
    validation: float = 0.3
    """Share that chooses the settings (the rehearsal); the rest is evaluation, only reported."""

    def __post_init__(self) -> None:
        if not (0 < self.fit < 1 and 0 <= self.validation < 1 and self.fit + self.validation < 1):
            raise ValueError(f"PeopleSplit shares must satisfy 0 < fit, 0 <= validation, fit + validation < 1 "
                             f"(an evaluation share must remain); got fit={self.fit}, validation={self.validation}.")

    def _u(self, person_id: str) -> float:
        digest = hashlib.sha256(f"{self.seed}:{person_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    def role(self, person_id: str) -> str:
        """``"fit"``, ``"validation"`` or ``"evaluation"``."""
        u = self._u(person_id)
        return "fit" if u < self.fit else "validation" if u < self.fit + self.validation else "evaluation"

    def people(self, profiles: Sequence[Profile], role: str) -> list[Profile]:
        """The profiles with ``role``, in their original order."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}.")
        return [p for p in profiles if self.role(p.id) == role]

    def rehearsal(self, profiles: Sequence[Profile], size: int) -> tuple[list[Profile], list[Profile]]:
        """``(stand_ins, validation_retain)``: the validation people of ``profiles`` split into a group
        to "forget" in the rehearsal (``size`` people, at most half of them, in hash order) and the
        rest, whose recall must hold."""
        val = sorted(self.people(profiles, "validation"), key=lambda p: self._u("rehearsal:" + p.id))
        n = min(size, len(val) // 2)
        if n < 1:
            raise ValueError(f"Only {len(val)} validation people: the rehearsal needs at least 2. Give the "
                             "benchmark more people or raise PeopleSplit.validation.")
        chosen = {p.id for p in val[:n]}
        return [p for p in profiles if p.id in chosen], [p for p in val if p.id not in chosen]

    def counts(self, profiles: Sequence[Profile]) -> dict[str, int]:
        return {r: len(self.people(profiles, r)) for r in ROLES}
