"""nnsight captures and edits against plain PyTorch forward hooks, for every family."""

import pytest
import torch

from conftest import FAMILIES, random_image
from toolkit import tracing
from toolkit.models.loading import Sample


def samples_for(m, n=3):
    texts = ["what is this image", "who is the person", "describe it please now"][:n]
    img = m.adapter.supports_images
    return [Sample(t, random_image(i) if img else None) for i, t in enumerate(texts)]


def hook_capture(m, samples, layers):
    """Reference: forward hooks on the torch modules, one batch, left padded."""
    store = {}
    handles = [m.layer_modules[l].register_forward_hook(
        lambda mod, inp, out, l=l: store.__setitem__(l, (out[0] if isinstance(out, tuple) else out).detach()))
        for l in layers]
    try:
        enc = m.encode(samples)
        with torch.no_grad():
            ref = m.module(**enc, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return enc, store, ref


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_matches_hooks_and_hidden_states(family, tiny_models):
    m = tiny_models(family)
    samples = samples_for(m)
    layers = [0, 1, 2]
    cap = tracing.capture(m, samples, layers, "last")
    enc, store, ref = hook_capture(m, samples, layers)
    for l in layers:
        assert cap[l].shape == (3, m.hidden_size)
        torch.testing.assert_close(cap[l], store[l][:, -1].float(), rtol=0, atol=1e-6)
        if l < m.num_layers - 1:  # the last entry of hidden_states has the final norm applied
            # output of block l == hidden_states[l + 1] (index 0 is the embeddings)
            torch.testing.assert_close(cap[l], ref.hidden_states[l + 1][:, -1].float(), rtol=0, atol=1e-6)
            assert not torch.allclose(cap[l], ref.hidden_states[l][:, -1].float(), atol=1e-3)
    # Every prompt position, pads removed.
    full = tracing.capture(m, samples, [1], "prompt")
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(full[1], store[1][mask].float(), rtol=0, atol=1e-6)
    assert full.sample_index.tolist() == torch.arange(3)[:, None].expand_as(mask)[mask].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_equals_per_sample(family, tiny_models):
    m = tiny_models(family)
    samples = samples_for(m)
    batched = tracing.capture(m, samples, [2], "last", batch_size=3)
    single = tracing.capture(m, samples, [2], "last", batch_size=1)
    torch.testing.assert_close(batched[2], single[2], rtol=1e-4, atol=1e-4)


def hook_steer(m, layer, vector, positions, mask_holder):
    """Reference edit with a forward hook: the same semantics as tracing.Steer."""
    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        prefill = h.shape[1] > 1 or mask_holder["step"] == 0
        mask_holder["step"] += 1
        if prefill:
            if positions == "last":
                h = h.clone()
                h[:, -1] += vector
            else:
                h = h + vector * mask_holder["mask"][:, :, None].to(h.dtype)
        elif positions == "all":
            h = h + vector
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h
    return m.layer_modules[layer].register_forward_hook(hook)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["prompt", "last", "all"])
def test_edit_matches_forward_hooks(family, positions, tiny_models):
    m = tiny_models(family)
    samples = samples_for(m, 2)
    g = torch.Generator().manual_seed(0)
    vector = torch.randn(m.hidden_size, generator=g) * 2.0
    steer = tracing.Steer(1, lambda h: vector.expand_as(h).to(h.dtype), positions)
    logits = tracing.forward(m, samples, steers=[steer], batch_size=2)
    ids = tracing.generate(m, samples, steers=[steer], max_new_tokens=4, return_ids=True, batch_size=2)
    enc = m.encode(samples)
    holder = {"mask": enc["attention_mask"], "step": 0}
    handle = hook_steer(m, 1, vector, positions, holder)
    try:
        with torch.no_grad():
            ref_logits = m.module(**enc).logits[:, -1]
            holder["step"] = 0
            ref_ids = m.module.generate(**enc, max_new_tokens=4, do_sample=False,
                                        pad_token_id=m.tokenizer.pad_token_id)[:, enc["input_ids"].shape[1]:]
    finally:
        handle.remove()
    torch.testing.assert_close(logits, ref_logits.float(), rtol=0, atol=1e-5)
    for row in range(2):
        assert ids[row].tolist() == ref_ids[row, : len(ids[row])].tolist()
    unsteered = tracing.forward(m, samples, batch_size=2)
    assert (unsteered - logits).abs().max() > 1e-3, "the edit must change the logits"


def test_steering_context_restores_exactly(tiny_models):
    m = tiny_models("llava")
    samples = samples_for(m)
    before = tracing.forward(m, samples)
    hooks_before = [(dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in m.layer_modules]
    gen_before = tracing.generate(m, samples, max_new_tokens=5, return_ids=True)
    steer = tracing.Steer(2, lambda h: torch.ones_like(h) * 5.0, "all")
    with tracing.steering(m, [steer]):
        during = tracing.forward(m, samples)
        assert tracing.active_steers(m) == [steer]
    assert tracing.active_steers(m) == []
    with pytest.raises(RuntimeError):
        with tracing.steering(m, [steer]):
            raise RuntimeError("interrupted")
    assert tracing.active_steers(m) == []
    after = tracing.forward(m, samples)
    gen_after = tracing.generate(m, samples, max_new_tokens=5, return_ids=True)
    assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(gen_before, gen_after))
    assert (during - before).abs().max() > 1e-3
    # Nothing was left on the torch modules (nnsight's own wrapping aside).
    assert [(dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in m.layer_modules] == hooks_before


def test_remote_local_roundtrip():
    from toolkit.models.loading import load_model

    m = load_model("tiny-llava")
    samples = samples_for(m)
    plain = tracing.capture(m, samples, [0, 2])
    m.remote = "local"
    served = tracing.capture(m, samples, [0, 2])
    for l in (0, 2):
        torch.testing.assert_close(served[l], plain[l], rtol=0, atol=0)


def test_mixed_image_and_text_batches_keep_order(tiny_models):
    m = tiny_models("llava")
    samples = [Sample("what is this", random_image(0)), Sample("hello world"), Sample("who is it", random_image(1))]
    cap = tracing.capture(m, samples, [1], batch_size=8)
    for i, s in enumerate(samples):
        one = tracing.capture(m, [s], [1])
        torch.testing.assert_close(cap[1][i], one[1][0], rtol=1e-4, atol=1e-5)


def test_capture_bad_positions(tiny_models):
    m = tiny_models("llama")
    with pytest.raises(ValueError, match="positions must be"):
        tracing.capture(m, samples_for(m), [0], "middle")
    with pytest.raises(ValueError, match="positions must be one of"):
        tracing.Steer(0, lambda h: h, "everywhere")


def test_trailing_positions_select_the_states_that_predict_each_answer_token(tiny_models):
    m = tiny_models("llava")
    prompts = [m.format_prompt("who is the person", image=True), m.format_prompt("what is this image", image=True)]
    answers = ["this is a person", "you he"]
    samples = [Sample(f"{p} {a}", random_image(i)) for i, (p, a) in enumerate(zip(prompts, answers))]
    counts = tuple(len(m.continuation_ids(p, a)) for p, a in zip(prompts, answers))
    got = tracing.capture(m, samples, [1], tracing.Trailing(counts), formatted=True, batch_size=2)
    every = tracing.capture(m, samples, [1], "prompt", formatted=True, batch_size=2)
    expected = []
    for i, n in enumerate(counts):
        rows = every[1][every.sample_index == i]
        expected.append(rows[len(rows) - 1 - n: len(rows) - 1])  # last prompt token .. second-to-last answer token
    torch.testing.assert_close(got[1], torch.cat(expected))
    assert got.sample_index.tolist() == [0] * counts[0] + [1] * counts[1]
    with pytest.raises(ValueError, match="do not fit"):
        tracing.capture(m, samples, [1], tracing.Trailing((500, 1)), formatted=True)
    with pytest.raises(ValueError, match="2 counts for 1 samples"):
        tracing.capture(m, samples[:1], [1], tracing.Trailing((1, 1)), formatted=True)


def test_qwen3_vl_deepstack_layers_refuse_image_position_captures(tiny_models):
    m = tiny_models("qwen3_vl")
    assert m.adapter.deepstack_layers(m.config) == {0}
    samples = samples_for(m)
    with pytest.raises(ValueError, match=r"layers \[0\] are followed by deepstack visual features"):
        tracing.capture(m, samples, [0, 1], "prompt")
    # The last prompt token is text: no deepstack feature is added there, so hooks and hidden states agree.
    cap = tracing.capture(m, samples, [0], "last")
    enc, store, ref = hook_capture(m, samples, [0])
    torch.testing.assert_close(cap[0], ref.hidden_states[1][:, -1].float(), rtol=0, atol=1e-6)
    tracing.capture(m, samples, [1], "prompt")  # later layers are fine
