"""Tokenizers of each family's kind, and the one helper that finds an answer's ids after a prompt."""

import pytest
import torch

from conftest import FAMILIES, random_image
from toolkit.models.loading import continuation_ids, join_answer
from toolkit.models.tokenizer import train_byte_bpe, train_sentencepiece_bpe

BYTE_LEVEL = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2", "llama"}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_tokenises_as_its_kind(family, tiny_models):
    m = tiny_models(family)
    tokens = m.tokenizer.tokenize("Who is this person?")
    if family in BYTE_LEVEL:
        assert "Ġis" in tokens and not any("▁" in t for t in tokens), tokens
    else:
        assert "▁is" in tokens and not any("Ġ" in t for t in tokens), tokens
    # Every family round-trips text it never saw (bytes / byte fallback, no <unk>).
    text = "Zoë from Kraków, 日本"
    ids = m.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert m.tokenizer.unk_token_id not in ids
    assert m.tokenizer.decode(ids, skip_special_tokens=True).strip() == text


def test_continuation_after_qwen_generation_prompt_is_not_the_standalone_word(tiny_models):
    m = tiny_models("qwen2_5_vl")
    prompt = m.format_prompt("Who is this?", image=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = m.continuation_ids(prompt, "I cannot")
    assert m.tokenizer.convert_ids_to_tokens(ids) == ["I", "Ġcannot"]
    # What the old code did: the first id of " I cannot" alone is "ĠI", a token the model never
    # emits right after "assistant\n".
    standalone = m.tokenizer(" I cannot", add_special_tokens=False)["input_ids"]
    assert m.tokenizer.convert_ids_to_tokens(standalone)[0] == "ĠI" != "I"
    # The continuation is what a teacher-forced sequence holds.
    full = m.tokenizer(join_answer(prompt, "I cannot"), add_special_tokens=False)["input_ids"]
    assert full[-len(ids):] == ids


def test_continuation_after_llava_assistant_colon(tiny_models):
    m = tiny_models("llava")
    prompt = m.format_prompt("Who is this?", image=False)
    assert prompt.endswith("ASSISTANT:")
    ids = m.continuation_ids(prompt, "I cannot")
    assert m.tokenizer.convert_ids_to_tokens(ids) == ["▁I", "▁cannot"]
    # SentencePiece with a dummy prefix: " I cannot" alone starts with a bare "▁", the same for
    # every refusal opening (the bug that collapsed all refusal ids to one).
    for opening in (" I cannot", " Sorry"):
        first = m.tokenizer.convert_ids_to_tokens(m.tokenizer(opening, add_special_tokens=False)["input_ids"])[0]
        assert first == "▁"


def test_refusal_ids_are_distinct_continuations(tiny_models):
    from probes.steering_effects import refusal_token_ids

    for family, expected, never in (("qwen2_5_vl", {"I", "S"}, "ĠI"), ("llava", {"▁I", "▁S"}, "▁")):
        m = tiny_models(family)
        tokens = set(m.tokenizer.convert_ids_to_tokens(refusal_token_ids(m, ("I cannot", "Sorry"))))
        # "Sorry" is not one token in these small vocabularies; its first piece is what the model emits.
        assert tokens == expected and never not in tokens


def test_continuation_refuses_merged_boundary():
    tok = train_byte_bpe([])
    # eval.py's generation prompts end in "ASSISTANT: ": the trailing space belongs to the answer's
    # first token ("ĠAnna"), so there is no clean cut between prompt and answer.
    with pytest.raises(ValueError, match="merges the prompt's end"):
        continuation_ids(tok, "USER: Who? ASSISTANT: ", "Anna")
    with pytest.raises(ValueError, match="empty"):
        continuation_ids(tok, "prompt", "  ")


def test_sentencepiece_kind_ids_and_byte_fallback():
    tok = train_sentencepiece_bpe([])
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.convert_ids_to_tokens([4, 259]) == ["<0x00>", "<0xFF>"]
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    pieces = tok.convert_ids_to_tokens(tok("é", add_special_tokens=False)["input_ids"])
    assert pieces[-2:] == ["<0xC3>", "<0xA9>"]


@pytest.mark.parametrize("family", FAMILIES)
def test_training_batch_labels_are_the_answer_and_eos(family, tiny_models):
    m = tiny_models(family)
    has_image = m.adapter.supports_images
    texts, answers = ["Who is this?", "Where was this person born please?"], ["Anna Berg", "In Oslo, Norway."]
    prompts = [m.format_prompt(t, image=has_image) for t in texts]
    images = [random_image(i) for i in range(2)] if has_image else None
    batch = m.adapter.training_batch(m.processor, prompts, answers, images)
    tok = m.tokenizer
    for row, (p, a) in enumerate(zip(prompts, answers)):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        if m.adapter.suffix_token_types:  # PaliGemma tokenises the suffix on its own
            assert tok.decode(labelled, skip_special_tokens=True).strip() == a
            assert labelled[-1] == tok.eos_token_id
        else:
            assert labelled == continuation_ids(tok, p, a) + [tok.eos_token_id]
        # right padded: the labels end where the row's real tokens end
        end = int(batch["attention_mask"][row].sum())
        assert batch["labels"][row, end - 1] == tok.eos_token_id
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        assert batch["image_grid_thw"].shape == (2, 3)
    if family == "llava_next":
        assert batch["image_sizes"].shape == (2, 2)
    with torch.no_grad():
        loss = m.module(**batch).loss
    assert torch.isfinite(loss) and loss > 0
