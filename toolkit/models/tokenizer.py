"""Offline word-level tokenizers, trained here with `tokenizers`.

No hub download is possible on our machines, so the tiny test models and the
embedded default get a tokenizer trained locally on their own corpus. It is a
plain word-level model (lower-cased, split on whitespace and punctuation) wrapped
in `PreTrainedTokenizerFast`, so chat templates, padding and batch decoding behave
as they do for real checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"

# A small general vocabulary so that a tokenizer trained on a few prompts still
# covers the text used by tests and examples.
BASIC_WORDS = (
    "the a an of in on at to is was are be what who where when which how why this that "
    "person image picture photo name born city job work works name's describe please "
    "answer question tell me about do does did not cannot can i you he she they it "
    "and or with for from his her their yes no hello world user assistant system "
    ". , ? ! : ; ' \" ( ) - / 0 1 2 3 4 5 6 7 8 9"
).split()


def train_word_tokenizer(
    corpus: Iterable[str],
    special_tokens: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    padding_side: str = "left",
    extra_words: Sequence[str] = BASIC_WORDS,
    lowercase: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``corpus`` (every word becomes a token).

    ``special_tokens`` (image placeholders, chat markers) are never split or
    lower-cased. With ``lowercase=False`` case is kept (names, option letters). Ids 0-3 are always ``<pad> <unk> <s> </s>``.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    base = [PAD, UNK, BOS, EOS]
    trainer = trainers.WordLevelTrainer(special_tokens=base, min_frequency=1)
    texts = list(corpus) + [" ".join(extra_words)]
    tok.train_from_iterator(texts, trainer=trainer)
    extra = [t for t in special_tokens if t not in base]
    tok.add_special_tokens(extra)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side=padding_side,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
