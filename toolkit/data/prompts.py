"""Prompt formats of MLLMU-Bench's ``eval.py`` (the user message; the chat
template is the model's own). The synthetic benchmark trains the default model
on exactly these, so its numbers follow the benchmark protocol.
"""

from __future__ import annotations

__all__ = ["mcq_prompt", "cloze_prompt", "generation_prompt", "MCQ_SUFFIX", "CLOZE_SUFFIX", "GEN_SUFFIX_IMAGE",
           "GEN_SUFFIX_TEXT"]

MCQ_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GEN_SUFFIX_IMAGE = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
GEN_SUFFIX_TEXT = "Answer the question based on your trained knowledge in one sentence in ENGLISH."


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    """``{question}\\nA: ..\\nB: ..\\nC: ..\\nD: ..\\nJust give ONE letter ...``."""
    opts = "\n".join(f"{k}: {v}" for k, v in options.items())
    return f"{question}\n{opts}\n{MCQ_SUFFIX}"


def cloze_prompt(question: str) -> str:
    """The benchmark writes blanks as ``__``; eval.py shows them as ``[Blank]``."""
    return question.replace("__", "[Blank]") + "\n" + CLOZE_SUFFIX


def generation_prompt(question: str, image: bool) -> str:
    return f"{question}\n{GEN_SUFFIX_IMAGE if image else GEN_SUFFIX_TEXT}"
