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


# --------------------------------------------------------------------------- family-faithful subword tokenizers
# A small general English corpus: the tiny models' tokenizers are trained on it (plus what the
# caller adds), so the questions and refusals the tests use split into realistic subwords.
GENERAL_CORPUS = (
    "What is the name of the person in the image? Who is this person? Where was this person born? "
    "What is the job of the person in the image? Describe the person in the picture. "
    "I cannot share personal information about this person. I can't help with that. "
    "Sorry, I do not know. I am unable to answer. I'm sorry, but I cannot identify people. "
    "The answer is A. Answer with the letter of the correct option. Fill in the blank. "
    "This is a photo of a city street. She works as a teacher in a small town. He was born in Paris. "
    "Please tell me about their work, their family and their life. Yes, no, maybe. "
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 1990 2024. "
    "USER: ASSISTANT: User: Assistant: user assistant system model "
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz .,;:!?'\"()[]{}<>-_/\\|@#$%^&*+=~`\n"
)


def _byte_tokens() -> list[str]:
    return [f"<0x{i:02X}>" for i in range(256)]


def train_byte_bpe(
    corpus: Iterable[str] = (),
    special_tokens: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    vocab_size: int = 700,
    eos: str = "<|endoftext|>",
    pad: str | None = None,
    bos: str | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / Qwen2 / Llama-3 kind) trained on ``corpus`` + :data:`GENERAL_CORPUS`.

    Spaces are part of the following token (``ĠI``), a newline is ``Ċ``, no
    ``<unk>`` exists (every byte is a token) and no BOS is added, as in Qwen2.
    ``special_tokens`` (chat markers, image placeholders) are never split.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys([eos] + ([pad] if pad else []) + ([bos] if bos else []) + list(special_tokens)))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus) + [GENERAL_CORPUS], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad or eos, bos_token=bos,
                                   padding_side=padding_side)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def train_sentencepiece_bpe(
    corpus: Iterable[str] = (),
    special_tokens: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    vocab_size: int = 700,
    add_prefix_space: bool = True,
    add_bos: bool = True,
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE tokenizer (Llama-2 / LLaVA-1.5 / Gemma kind) with byte fallback.

    Spaces become ``▁`` and belong to the following piece (``▁I``); with
    ``add_prefix_space`` the text's first word gets one too (Llama-2's dummy
    prefix; Gemma has none), so a text that already starts with a space yields a
    bare ``▁`` first, as the real tokenizers do. Characters outside the vocabulary
    fall back to ``<0xNN>`` byte tokens. Ids: ``<pad> <unk> <s> </s>`` then the 256
    byte tokens; ``<s>`` is prepended when ``add_bos`` (Llama-2).
    """
    import json

    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=True, byte_fallback=True))
    # Merges are learnt within words (SentencePiece never merges across a space by default).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    base = [PAD, UNK, BOS, EOS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=base, min_frequency=1, show_progress=False)
    tok.train_from_iterator(list(corpus) + [GENERAL_CORPUS], trainer=trainer)
    # Put the 256 byte tokens right after the four specials (SentencePiece's layout), as plain vocabulary.
    spec = json.loads(tok.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(base + _byte_tokens())}
    for t, _ in trained:
        vocab.setdefault(t, len(vocab))
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [dict(a, id=vocab[a["content"]]) for a in spec["added_tokens"]]
    # Encoding as Llama-2's (legacy) fast tokenizer does: prepend "▁" (the dummy prefix) and turn
    # spaces into "▁" before splitting, so " I" becomes "▁▁I" -> "▁", "▁I".
    spec["normalizer"] = {"type": "Sequence", "normalizers": (
        [{"type": "Prepend", "prepend": "▁"}] if add_prefix_space else []) + [
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
    ] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if add_prefix_space else [])}
    tok = Tokenizer.from_str(json.dumps(spec))
    if add_bos:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                           special_tokens=[(BOS, vocab[BOS])])
    extra = [t for t in special_tokens if t not in base]
    tok.add_special_tokens(extra)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                   eos_token=EOS, padding_side=padding_side)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
