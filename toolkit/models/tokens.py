"""Token ids of an answer as the model sees it after its prompt (no model, no other toolkit module)."""

from __future__ import annotations

from typing import Any

__all__ = ["join_answer", "continuation_ids"]


def join_answer(prompt: str, answer: str) -> str:
    """``prompt`` followed by ``answer`` as the model would write it: one space after a prompt
    that ends in a non-space (``ASSISTANT:``), none after one that ends in whitespace (``assistant\\n``)."""
    sep = "" if (not prompt or prompt[-1].isspace()) else " "
    return prompt + sep + answer.lstrip()


def continuation_ids(tokenizer: Any, prompt: str, answer: str) -> list[int]:
    """The ids ``answer`` gets as the continuation of ``prompt``.

    Tokenises ``prompt`` and ``prompt + sep + answer`` (``sep`` a space unless the
    prompt already ends in whitespace, as Qwen's ``assistant\\n`` does) and returns
    the tokens after the prompt's. This is what the model sees and emits: a word
    tokenised on its own gets other ids under byte-level BPE (``ĠI`` vs ``I``) and
    SentencePiece (a bare ``▁`` first). Raises if the tokenizer merges the prompt's
    end with the answer (no clean boundary to cut at).
    """
    if not answer or not answer.strip():
        raise ValueError("The answer is empty: there are no tokens to find.")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(join_answer(prompt, answer), add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids or len(f_ids) == len(p_ids):
        raise ValueError(f"The tokenizer merges the prompt's end with the answer {answer!r}; the answer's tokens "
                         "cannot be separated from the prompt's.")
    return list(f_ids[len(p_ids):])
