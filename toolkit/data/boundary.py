"""Boundary questions: near the forget content, but allowed, so they must still be answered.

ASRU trains and scores refusal *boundaries*: after unlearning, a question about a
retain person who shares an attribute with a forget person (the same birthplace,
occupation ...) should be answered, not refused by reflex. :func:`boundary_questions`
finds them in any benchmark whose generation questions carry the fact they ask
for (the synthetic benchmark's ``Answer_Key``; your own data through the same
field): a candidate person's question is a boundary question when its fact is a
fact some forget person also has. Without answer keys (MLLMU-Bench as published)
there is no way to tell which facts are shared, and every candidate question is
returned: pass your own list instead (``(profile, GenerationQ)`` pairs).
"""

from __future__ import annotations

from collections.abc import Sequence

from .mllmu import GenerationQ, Profile

__all__ = ["boundary_questions"]


def boundary_questions(forget: Sequence[Profile], candidates: Sequence[Profile]
                       ) -> list[tuple[Profile, GenerationQ]]:
    """``(person, question)`` pairs of ``candidates`` whose fact a forget person shares (never the name)."""
    forget_ids = {p.id for p in forget}
    clash = sorted(forget_ids & {p.id for p in candidates})
    if clash:
        raise ValueError(f"Boundary candidates include forget people {clash[:5]}: pass retain people only.")
    shared = {q.answer_key.lower() for p in forget for q in p.generation if q.answer_key}
    names = {str(p.fields.get("name", "")).lower() for p in forget} - {""}
    out = []
    for person in candidates:
        for q in person.generation:
            if not shared:
                out.append((person, q))
            elif q.answer_key and q.answer_key.lower() in shared and q.answer_key.lower() not in names:
                out.append((person, q))
    return out
