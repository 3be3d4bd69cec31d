"""Shared-prefix captures (toolkit.prefix) equal plain forwards, for every image family, left-padded groups."""

import numpy as np
import pytest
import torch

from conftest import VLM_FAMILIES, random_image
from toolkit import tracing
from toolkit.models.loading import Sample, join_answer
from toolkit.prefix import image_key, prefix_groups

QUESTIONS = ["Who is this?", "Where was this person born, and what do they do for a living these days?", "Name?",
             "What is the occupation of the person in the image?"]


def mixed_samples():
    """Two images asked about several times (questions of different lengths: left padding inside a group),
    one image asked about once, and a text-only question."""
    a, b, c = random_image(1), random_image(2), random_image(3)
    return ([Sample(q, a) for q in QUESTIONS] + [Sample(QUESTIONS[1], c)] + [Sample(q, b) for q in QUESTIONS[:3]]
            + [Sample("Who is Anna Berg?", None)])


class TokenCounter:
    """Counts the tokens the first decoder layer processes (a forward hook; works under nnsight too)."""

    def __init__(self, model):
        self.tokens = 0
        self.handle = model.layer_modules[0].register_forward_hook(self.hook)

    def hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        self.tokens += h.shape[0] * h.shape[1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def both(model, samples, layers, positions, batch_size=3, **kw):
    with TokenCounter(model) as plain_count:
        plain = tracing.capture(model, samples, layers, positions, share_prefix=False, batch_size=batch_size, **kw)
    with TokenCounter(model) as shared_count:
        shared = tracing.capture(model, samples, layers, positions, batch_size=batch_size, **kw)
    return plain, shared, plain_count.tokens, shared_count.tokens


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_shared_prefix_states_equal_a_plain_forward(family, tiny_models):
    model = tiny_models(family)
    samples = mixed_samples()
    deep = model.adapter.deepstack_layers(model.config)
    layers = [l for l in range(model.num_layers) if l not in deep]
    for positions in ("prompt", "last", "last+image-max", "last+mean"):
        plain, shared, n_plain, n_shared = both(model, samples, layers, positions)
        torch.testing.assert_close(shared.sample_index, plain.sample_index)
        for layer in layers:
            ref = plain[layer]
            torch.testing.assert_close(shared[layer], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
        if model.adapter.shares_prefix:
            # Not a silent fallback: each of the two shared images' tokens ran once, not once a question
            # (4 and 3 questions: at least 5 x its image tokens saved, less the suffixes' right padding).
            image_tokens = int(model.image_token_mask(model.encode(samples[:1])["input_ids"]).sum())
            assert n_shared <= n_plain - 4 * image_tokens, (n_shared, n_plain, image_tokens)
        else:
            assert n_shared == n_plain  # PaliGemma's prefix attends to the question: plain forwards


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_shared_prefix_teacher_forced_answers_and_a_mask(family, tiny_models):
    """Answer tokens (Trailing, formatted prompts) and a caller's mask read the same states."""
    model = tiny_models(family)
    img = random_image(5)
    answers = ["Anna Berg.", "She was born in Oslo and teaches maths.", "A nurse."]
    prompts = [model.format_prompt(q, image=True) for q in QUESTIONS[:3]]
    counts = tuple(len(model.continuation_ids(p, a)) for p, a in zip(prompts, answers))
    samples = [Sample(join_answer(p, a), img) for p, a in zip(prompts, answers)]
    plain, shared, n_plain, n_shared = both(model, samples, [0, 1], tracing.Trailing(counts), formatted=True)
    torch.testing.assert_close(shared[1], plain[1], rtol=0, atol=1e-5 * float(plain[1].abs().max()))
    assert n_shared < n_plain

    def every_other(enc):
        mask = enc["attention_mask"].bool().clone()
        mask[:, ::2] = False
        return mask

    plain, shared, _, _ = both(model, samples, [1], every_other, formatted=True)
    torch.testing.assert_close(shared[1], plain[1], rtol=0, atol=1e-5 * float(plain[1].abs().max()))


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_shared_prefix_in_bfloat16_within_the_dtype_tolerance(family):
    from toolkit.models.loading import load_model

    model = load_model(f"tiny-{family}", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    plain, shared, _, _ = both(model, mixed_samples(), [1], "prompt")
    scale = float(plain[1].abs().max())
    # bf16 keeps 8 bits of mantissa: a few units of its last place after two layers.
    torch.testing.assert_close(shared[1], plain[1], rtol=0, atol=4 * 2 ** -8 * scale)


def test_steered_captures_do_not_share(tiny_models):
    """A steer whose gate reads the whole prompt decides at prefill: a steered capture runs plainly."""
    from toolkit.eraser import Eraser, EraserLayer

    model = tiny_models("llava")
    d = model.hidden_size
    g = torch.Generator().manual_seed(0)
    eraser = Eraser((EraserLayer(0, torch.randn(d, 1, generator=g) / d, torch.randn(1, d, generator=g)),), lam=1.0)
    samples = mixed_samples()
    with TokenCounter(model) as shared_count:
        steered = tracing.capture(model, samples, 1, "prompt", steers=eraser, batch_size=3)
    with TokenCounter(model) as plain_count:
        ref = tracing.capture(model, samples, 1, "prompt", steers=eraser, batch_size=3, share_prefix=False)
    assert shared_count.tokens == plain_count.tokens
    torch.testing.assert_close(steered[1], ref[1])


def test_groups_key_images_by_content():
    a, a_again, b = random_image(1), random_image(1), random_image(2)
    assert image_key(a) == image_key(a_again) != image_key(b)
    png = a.tobytes()
    assert image_key(png) == image_key({"bytes": png})
    groups, rest = prefix_groups([Sample("q", a), Sample("q", b), Sample("r", a_again), Sample("t", None)])
    assert groups == [[0, 2]] and rest == [1, 3]


def test_images_of_other_sizes_in_one_batch_still_share():
    """Qwen-VL: an image of another shape has other rotary offsets (rope_deltas per row), and one of another size
    another number of tokens; in the second case the batch has no common prefix, so each image's rows run as their
    own shared batch. Equal states either way, and fewer tokens than plain forwards."""
    from PIL import Image

    from toolkit.models.loading import load_model

    model = load_model("tiny-qwen2_5_vl")
    model.processor.image_processor.size = {"shortest_edge": 16 * 16, "longest_edge": 32 * 32}  # a small image keeps its size
    square, wide, small = random_image(1), Image.fromarray(np.asarray(random_image(2))[:16].repeat(2, 1)), \
        random_image(3, size=16)
    counts = {name: int(model.image_token_mask(model.encode([Sample("q", im)])["input_ids"]).sum())
              for name, im in (("square", square), ("wide", wide), ("small", small))}
    assert counts["square"] == counts["wide"] != counts["small"]
    for other in (wide, small):
        samples = [Sample(q, square) for q in QUESTIONS[:3]] + [Sample(q, other) for q in QUESTIONS[:3]]
        plain, shared, n_plain, n_shared = both(model, samples, [1], "prompt", batch_size=6)
        torch.testing.assert_close(shared[1], plain[1], rtol=0, atol=1e-5 * float(plain[1].abs().max()))
        assert n_shared < n_plain
