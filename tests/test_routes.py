"""Three routes to the same edit: the toolkit's generate, `eraser.intervene` inside the user's own nnsight
block, and `eraser.attached` hooks around any forward/generate. Identical ids, every family and position mode."""

import nnsight
import pytest
import torch

from conftest import FAMILIES, random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer
from toolkit.models.loading import Sample

N = 6


def eraser_for(model, positions, lam=3.0):
    g = torch.Generator().manual_seed(7)
    maps = tuple(EraserLayer(l, torch.randn(model.hidden_size, 1, generator=g) * 0.3,
                             torch.randn(1, model.hidden_size, generator=g)) for l in (0, 2))
    return Eraser(maps, lam, positions, model.fingerprint())


def batch(model):
    image = model.adapter.supports_images
    # different lengths: the shorter row is left padded
    return [Sample("who is this", random_image(0) if image else None),
            Sample("what is shown in this picture of a person please", random_image(1) if image else None)]


def gen_kwargs(model):
    return dict(max_new_tokens=N, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)


def own_nnsight_block(model, eraser, enc):
    with model.nn.generate(**gen_kwargs(model)) as tracer:
        with tracer.invoke(**enc):
            eraser.intervene(model)
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    return ids


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["prompt", "last", "all"])
def test_three_routes_give_identical_ids(family, positions, tiny_models):
    model = tiny_models(family)
    eraser = eraser_for(model, positions)
    samples = batch(model)
    enc = model.encode(samples, device=model.device)
    assert (enc["attention_mask"][:, 0] == 0).any(), "one row is left padded"
    width = enc["input_ids"].shape[1]
    toolkit_ids = [t.tolist() for t in tracing.generate(model, samples, steers=eraser, max_new_tokens=N,
                                                        return_ids=True)]
    ids = own_nnsight_block(model, eraser, enc)
    mine = [row[width:].tolist() for row in ids]
    with eraser.attached(model):
        hooked = model.module.generate(**enc, **gen_kwargs(model))
    hooked = [row[width:].tolist() for row in hooked]
    plain = [t.tolist() for t in tracing.generate(model, samples, max_new_tokens=N, return_ids=True)]
    for a, b, c in zip(toolkit_ids, mine, hooked):
        n = len(a)
        assert a == b[:n] == c[:n]
    assert toolkit_ids != plain, "the eraser changes the generation"


def test_attached_steers_the_nnsight_wrapper_and_the_toolkit_once(tiny_models):
    model = tiny_models("qwen2_5_vl")
    eraser = eraser_for(model, "all")
    samples = batch(model)
    want = tracing.generate(model, samples, steers=eraser, max_new_tokens=N, return_ids=True)
    with eraser.attached(model):
        # the toolkit's own call inside the block is steered by the hooks (not twice)
        got = tracing.generate(model, samples, max_new_tokens=N, return_ids=True)
        enc = model.encode(samples, device=model.device)
        with model.nn.generate(**gen_kwargs(model)) as tracer:
            with tracer.invoke(**enc):
                pass
            with tracer.invoke():
                wrapped = nnsight.save(tracer.result)
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
    width = enc["input_ids"].shape[1]
    assert [r[width:].tolist()[: len(w)] for r, w in zip(wrapped, want)] == [w.tolist() for w in want]


def test_attached_removes_its_hooks_after_an_exception(tiny_models):
    model = tiny_models("llava")
    eraser = eraser_for(model, "prompt")
    before = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.layer_modules]
    top = (dict(model.module._forward_hooks), dict(model.module._forward_pre_hooks))
    samples = batch(model)
    plain = tracing.forward(model, samples)
    with pytest.raises(RuntimeError, match="boom"):
        with eraser.attached(model):
            assert (tracing.forward(model, samples) - plain).abs().max() > 1e-3
            assert tracing.active_steers(model)
            raise RuntimeError("boom")
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.layer_modules] == before
    assert (dict(model.module._forward_hooks), dict(model.module._forward_pre_hooks)) == top
    assert tracing.active_steers(model) == []
    assert torch.equal(tracing.forward(model, samples), plain)


def test_gate_log_records_every_step_the_same_way_on_every_route(tiny_models):
    model = tiny_models("llava")
    eraser = eraser_for(model, "all")
    samples = batch(model)[:1]
    log = tracing.GateLog()
    tracing.generate(model, samples, steers=eraser, max_new_tokens=N, gate_log=log, eos_token_id=None)
    with eraser.attached(model, record_gates=True) as hooked_log:
        tracing.generate(model, samples, max_new_tokens=N, eos_token_id=None)
    for layer in (0, 2):
        via_trace, via_hooks = log.per_step(layer), hooked_log.per_step(layer)
        assert len(via_trace) == N  # prefill + one per generated token but the last
        assert via_trace == pytest.approx(via_hooks, abs=1e-5)
    # The prefill gate is the eraser's gate of the last prompt token, in float32.
    cap = tracing.capture(model, samples, [0])
    assert log.per_step(0)[0] == pytest.approx(float(eraser.layer_map(0).gate(cap[0])[0, 0]), abs=1e-5)
    frame = log.frame()
    assert set(frame.columns) == {"call", "prefill", "layer", "row", "gate"} and frame.prefill.sum() == 2


def test_intervene_in_a_users_trace_equals_toolkit_forward(tiny_models):
    model = tiny_models("gemma3")
    eraser = eraser_for(model, "prompt")
    samples = batch(model)
    enc = model.encode(samples, device=model.device)
    with model.nn.trace(**enc):
        eraser.intervene(model, generating=False)
        logits = nnsight.save(model.nn.output.logits)
    torch.testing.assert_close(logits[:, -1].float(), tracing.forward(model, samples, steers=eraser),
                               rtol=0, atol=1e-5)
