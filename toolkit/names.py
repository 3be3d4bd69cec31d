"""A lexical gate: whether a prompt's text names a person to forget.

What guardrails try first, and what the state reads miss most: a text question that names the person ("What
does Vuvos Zibrigo do for a living? Answer in JSON.") inside a template that moves the pooled states. This gate
reads the prompt's *text*, not a state, so no template can move it; it knows nothing of faces, so it never fires
on an image question that does not write the name (the image read does that).

Matching (:func:`name_key`, :meth:`NameKeys.matches`):

* text is folded to lower-case ASCII letters and digits (accents dropped, ``Zibrigó`` -> ``zibrigo``), every other
  character splits words;
* a person's key is the concatenation of their name's words (``"vuvoszibrigo"``); a prompt names them when some
  run of 1 to ``k + 1`` consecutive words (``k``: the most words in a name) concatenates to a string within one
  edit of the key (a substitution, insertion, deletion or swap of neighbours): "VUVOS ZIBRIGO", "Vuvos-Zibrigo",
  "VuvosZibrigo", "Vuvos Zibrgo" and "Vu vos Zibrigo" all match;
* keys shorter than :data:`MIN_KEY` letters must match exactly (one edit away from a short key is too many
  strangers); the whole name is needed: a surname alone does not fire (it would fire on every stranger who shares
  it).

What is read: the prompt as the model's tokenizer wrote it (the route decodes the ids, special tokens dropped), so
a word the tokenizer cannot represent is invisible to the gate as it is to the model: the embedded defaults'
word-level vocabularies turn an unseen spelling ("Zibrgo") into an unknown token, which the model cannot tie to the
person either; a byte-level tokenizer (LLaVA's, Qwen's) keeps every spelling, and the typo tolerance matters there.

What is stored: per name, salted SHA-256 digests (16 hex digits) of its key and of each key with one character
deleted (SymSpell's trick: two strings are within one edit exactly when these sets meet), plus the salt and
``k``. The eraser file holds no name in clear text; anyone holding a candidate name can test whether it is in the
list, as with any hash. Memory: ``(len(key) + 1)`` digests a person (about 15).
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["NameKeys", "name_key", "words", "MIN_KEY"]

MIN_KEY = 6
"""Keys shorter than this many letters match exactly only."""

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """``text`` folded to lower-case ASCII words: accents dropped, anything but letters and digits splits."""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    return _WORD.findall(folded)


def name_key(name: str) -> str:
    """A person's key: the name's words joined (``"Vuvos Zibrigo"`` -> ``"vuvoszibrigo"``)."""
    return "".join(words(name))


def _variants(key: str, tolerant: bool) -> set[str]:
    """The key and, when ``tolerant``, the key with each one character deleted."""
    out = {key}
    if tolerant:
        out.update(key[:i] + key[i + 1:] for i in range(len(key)))
    return out


def _digest(salt: str, variant: str, exact: bool) -> str:
    # Exact-only keys get their own tag, so a short key's exact form never meets a long key's deletion.
    return hashlib.sha256(f"{salt}:{'x' if exact else 't'}:{variant}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NameKeys:
    """Salted digests of the names to forget; ``keys.matches(texts)`` -> one bool per prompt.

    ``salt``: random per list (hex); ``digests``: the tolerant keys' variants and the short keys' exact forms;
    ``max_words``: the most words in one name (so the longest run of prompt words compared is ``max_words + 1``).
    """

    salt: str
    digests: frozenset[str]
    max_words: int

    @classmethod
    def from_names(cls, names: Iterable[str], salt: str | None = None) -> "NameKeys":
        """Keys for ``names`` (people's names as written; duplicates and case do not matter).

        Raises ValueError when a name has no letter or digit (an id such as ``"#12"`` is not a name to match)."""
        salt = secrets.token_hex(8) if salt is None else salt
        digests: set[str] = set()
        most = 0
        names = list(names)
        if not names:
            raise ValueError("No names given: a name gate needs the forget people's names.")
        for name in names:
            key = name_key(name)
            if not key:
                raise ValueError(f"The person {name!r} has no letters or digits to match; give their name "
                                 "(a 'name' field, or the 'person' column written as the name).")
            exact = len(key) < MIN_KEY
            digests.update(_digest(salt, v, exact) for v in _variants(key, not exact))
            most = max(most, len(words(name)))
        return cls(salt, frozenset(digests), most)

    def _hits(self, candidate: str) -> bool:
        if len(candidate) < MIN_KEY:
            return _digest(self.salt, candidate, True) in self.digests
        return any(_digest(self.salt, v, False) in self.digests for v in _variants(candidate, True))

    def matches_text(self, text: str) -> bool:
        """Whether ``text`` names one of the people (see the module docstring)."""
        ws = words(text)
        for i in range(len(ws)):
            candidate = ""
            for j in range(i, min(len(ws), i + self.max_words + 1)):
                candidate += ws[j]
                if self._hits(candidate):
                    return True
        return False

    def matches(self, texts: Sequence[str]) -> list[bool]:
        """One bool per text: whether it names one of the people (each answer remembered, see
        :func:`_matches_text`)."""
        return [_matches_text(self, t) for t in texts]

    def union(self, other: "NameKeys") -> "NameKeys":
        """Keys matching either's names (both must share a salt: keys built with ``salt=`` of one another)."""
        if other.salt != self.salt:
            raise ValueError("Name keys with different salts cannot be merged; build both with one salt "
                             "(NameKeys.from_names(names, salt=keys.salt)) or apply the erasers together.")
        return NameKeys(self.salt, self.digests | other.digests, max(self.max_words, other.max_words))

    def to_json(self) -> dict:
        return {"salt": self.salt, "digests": sorted(self.digests), "max_words": self.max_words}

    @classmethod
    def from_json(cls, data: dict) -> "NameKeys":
        try:
            return cls(str(data["salt"]), frozenset(map(str, data["digests"])), int(data["max_words"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"Name keys need salt, digests and max_words ({err}); the file is incomplete.") from None


@functools.lru_cache(maxsize=256)  # a prefill batch of prompts, with room
def _matches_text(keys: NameKeys, text: str) -> bool:
    # At one prefill every steered layer (and the gate log) asks about the same prompts: the scan, a few
    # thousand digests for a long prompt, runs once per prompt instead of once per layer.
    return keys.matches_text(text)
