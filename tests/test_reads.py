"""Gate reads keyed to the person (toolkit.reads) and the decoding-time latch, through every route."""

import nnsight
import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer
from toolkit.gates import PrototypeGate, fit_prototype
from toolkit.models.loading import Sample
from toolkit.reads import parse_reads, pool, read_width

LAYER = 1


def loop_pool(h, reads, mask, image_mask):
    """The reads written out token by token."""
    rows = []
    for b in range(h.shape[0]):
        real = [t for t in range(h.shape[1]) if mask[b, t]]
        image = [t for t in real if image_mask[b, t]]
        entity = image if image else real[1:]
        feats = []
        for part in parse_reads(reads):
            if part == "last":
                feats.append(h[b, -1])
            elif part == "mean":
                feats.append(sum(h[b, t] for t in real) / len(real))
            elif part == "image-mean":
                feats.append(sum(h[b, t] for t in entity) / len(entity))
            else:
                best = h[b, entity[0]].clone()
                for t in entity[1:]:
                    best = torch.maximum(best, h[b, t])
                feats.append(best)
        rows.append(torch.cat(feats))
    return torch.stack(rows)


def test_pool_equals_a_loop_over_tokens_with_padding_images_and_text_rows():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 9, 5, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9, [0, 0, 0, 0, 1, 1, 1, 1, 1]])
    image = torch.zeros(3, 9, dtype=torch.bool)
    image[0, 3:6] = True
    image[1, 1:7] = True  # row 2 has no image: its entity tokens are its prompt after the first
    for reads in ("last", "last+mean", "image-mean", "image-max", "last+image-max", "image-max+mean"):
        got = pool(h, reads, mask, image)
        assert got.shape == (3, read_width(reads, 5))
        torch.testing.assert_close(got, loop_pool(h, reads, mask.bool(), image), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="parts from"):
        parse_reads("last+face")
    with pytest.raises(ValueError, match="each once"):
        parse_reads("last+last")


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_the_image_tokens_are_found_and_captures_equal_what_the_routes_hand_the_gate(family, tiny_models):
    model = tiny_models(family)
    samples = batch()
    enc = model.encode(samples)
    image = model.image_token_mask(enc["input_ids"])
    assert image.sum(1).min() > 0 and (enc["attention_mask"][:, 0] == 0).any()
    assert not (image & ~enc["attention_mask"].bool()).any()
    # the capture against the loop on the raw layer output
    prompt = tracing.capture(model, samples, [LAYER], "prompt")
    feats = tracing.capture(model, samples, [LAYER], "last+image-max")[LAYER]
    mask = enc["attention_mask"].bool()
    h = torch.zeros(*mask.shape, model.hidden_size)
    h[mask] = prompt[LAYER]
    torch.testing.assert_close(feats, loop_pool(h, "last+image-max", mask, image), rtol=1e-5, atol=1e-5)
    # what the steering route hands the gate at prefill is the same row
    eraser = person_eraser(model, "last+image-max", feats, lam=0.0)
    log = tracing.GateLog()
    tracing.generate(model, samples, steers=eraser, max_new_tokens=2, gate_log=log)
    torch.testing.assert_close(log.records[0]["gates"][:, 0], eraser.layer_map(LAYER).gate(feats)[:, 0])


def test_an_image_read_does_not_move_with_the_wording(tiny_models):
    """The image precedes the question in the template: the image-token states do not depend on it."""
    model = tiny_models("llava")
    img = random_image(3)
    plain = tracing.capture(model, [Sample("who is this", img)], [LAYER], "image-max")[LAYER]
    wrapped = tracing.capture(model, [Sample("You are an actor. Stay in character. Who is this person, really?",
                                             img)], [LAYER], "image-max")[LAYER]
    torch.testing.assert_close(plain, wrapped, rtol=0, atol=1e-5)
    last = tracing.capture(model, [Sample("who is this", img), Sample("You are an actor. who is this?", img)],
                           [LAYER], "last")[LAYER]
    assert (last[0] - last[1]).abs().max() > 1e-3, "the last token does move"


def batch():
    return [Sample("who is this", random_image(0)),
            Sample("what is shown in this picture of a person please", random_image(1))]


def person_eraser(model, reads, feats, lam=3.0, latch=False, positions="prompt", edit="add"):
    """A hard prototype gate that fires on batch row 0 and not on row 1 (exemplars: their own reads)."""
    unit = torch.nn.functional.normalize(feats, dim=-1)
    f = feats.shape[1]
    gate = PrototypeGate(unit[:1], unit[1:], torch.zeros(f), torch.ones(f), 0.0, 0.0, reads)
    d = model.hidden_size
    direction = torch.randn(1, d, generator=torch.Generator().manual_seed(5))
    return Eraser((EraserLayer(LAYER, gate, direction),), lam, positions, model.fingerprint(), latch=latch,
                  edit=edit)


def three_routes(model, eraser, samples, n=6):
    enc = model.encode(samples, device=model.device)
    width = enc["input_ids"].shape[1]
    kw = dict(max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    toolkit_ids = [t.tolist() for t in tracing.generate(model, samples, steers=eraser, max_new_tokens=n,
                                                        return_ids=True)]
    with model.nn.generate(**kw) as tracer:
        with tracer.invoke(**enc):
            eraser.intervene(model, inputs=enc)
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    mine = [row[width:].tolist() for row in ids]
    with eraser.attached(model):
        hooked = [row[width:].tolist() for row in model.module.generate(**enc, **kw)]
    plain = [t.tolist() for t in tracing.generate(model, samples, max_new_tokens=n, return_ids=True)]
    return [[row[: len(t)] for row, t in zip(r, toolkit_ids)] for r in (toolkit_ids, mine, hooked)], plain


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("reads,latch,edit", [("image-max", False, "add"), ("image-mean", True, "add"),
                                              ("last+image-max", True, "rotate")])
def test_new_reads_and_the_latch_give_identical_ids_through_the_three_routes(family, reads, latch, edit,
                                                                             tiny_models):
    model = tiny_models(family)
    samples = batch()
    feats = tracing.capture(model, samples, [LAYER], reads)[LAYER]
    eraser = person_eraser(model, reads, feats, lam=8.0, latch=latch, edit=edit)
    (toolkit_ids, mine, hooked), plain = three_routes(model, eraser, samples)
    assert toolkit_ids == mine == hooked
    assert toolkit_ids[0] != plain[0], "row 0 is steered"
    assert toolkit_ids[1] == plain[1], "row 1 never fires"


def test_a_row_that_never_fires_is_bit_identical_and_a_fired_row_stays_steered(tiny_models):
    model = tiny_models("llava")
    samples = batch()
    feats = tracing.capture(model, samples, [LAYER], "image-max")[LAYER]
    eraser = person_eraser(model, "image-max", feats, lam=8.0, latch=True)
    enc = model.encode(samples, device=model.device)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=model.tokenizer.pad_token_id, eos_token_id=None,
              output_logits=True, return_dict_in_generate=True)
    plain = model.module.generate(**enc, **kw)
    with eraser.attached(model, record_gates=True) as log:
        steered = model.module.generate(**enc, **kw)
    for a, b in zip(plain.logits, steered.logits):
        assert torch.equal(a[1], b[1]), "row 1: every step's logits bit-identical"
    assert not torch.equal(plain.logits[-1][0], steered.logits[-1][0])
    assert log.per_step(LAYER, row=0) == [1.0] * 5 and log.per_step(LAYER, row=1) == [0.0] * 5
    # without the latch, a prompt-reading gate steers the prompt only: later steps differ from the latched run
    once = eraser.with_options(latch=False)
    with once.attached(model):
        prompt_only = model.module.generate(**enc, **kw)
    assert not torch.equal(prompt_only.logits[-1][0], steered.logits[-1][0])
    assert torch.equal(prompt_only.logits[0][0], steered.logits[0][0]), "the same prefill"


def test_a_last_reading_latch_is_the_running_max_of_the_gate_over_generated_tokens(tiny_models):
    """lam 0: the same generation with and without the latch, so the latched weight must be the
    cumulative max of the raw per-token gate (and the raw gate must switch off somewhere, or this proves nothing)."""
    model = tiny_models("qwen2_5_vl")
    samples = batch()
    n, d = 8, model.hidden_size
    g = torch.Generator().manual_seed(2)
    gate = fit_prototype(torch.randn(6, d, generator=g), torch.randn(30, d, generator=g), reads="last")
    direction = torch.randn(1, d, generator=g)

    def logged(gate_, latch=False):
        eraser = Eraser((EraserLayer(LAYER, gate_, direction),), 0.0, "all", model.fingerprint(), latch=latch)
        log = tracing.GateLog()
        tracing.generate(model, samples, steers=eraser, max_new_tokens=n, gate_log=log, eos_token_id=None)
        return torch.stack([r["gates"][:, 0] for r in log.records])  # (steps, B)

    scores = logged(_score_gate(gate))
    hard = PrototypeGate(**{**gate.__dict__, "threshold": float(scores.median())})
    raw = logged(hard)
    assert ((raw[:-1] == 1) & (raw[1:] == 0)).any(), "the raw gate switches off somewhere"
    torch.testing.assert_close(logged(hard, latch=True), torch.cummax(raw, 0).values, rtol=0, atol=0)


def _score_gate(gate):
    """The gate's raw score as its weight (to place a threshold among the scores generation meets)."""
    class Score(PrototypeGate):
        def __call__(self, x):
            return self.score(x)[:, None]
    return Score(**gate.__dict__)


def test_latch_and_new_reads_round_trip_and_refuse_what_cannot_work(tiny_models, tmp_path):
    model = tiny_models("llava")
    samples = batch()
    feats = tracing.capture(model, samples, [LAYER], "last+image-max")[LAYER]
    eraser = person_eraser(model, "last+image-max", feats, latch=True, positions="all")
    back = Eraser.load(eraser.save(tmp_path / "e.safetensors"), model)
    assert back.latch and back.layer_map(LAYER).reads == "last+image-max"
    assert torch.equal(back.layer_map(LAYER).gate(feats), eraser.layer_map(LAYER).gate(feats))
    with pytest.raises(ValueError, match="latch=True holds a membership gate"):
        Eraser((EraserLayer(LAYER, torch.zeros(model.hidden_size, 1), torch.zeros(1, model.hidden_size)),),
               latch=True)
    with pytest.raises(ValueError, match="decides at prefill|decides once per prompt"):
        eraser.with_options(latch=False)
    enc = model.encode(samples, device=model.device)
    with pytest.raises(ValueError, match="image tokens"):
        with model.nn.trace(**enc):
            eraser.with_options(positions="prompt", latch=False).intervene(model, mask=enc["attention_mask"],
                                                                           generating=False)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_pgd_on_the_gate_lowers_the_gate_score_within_its_budget(family, tiny_models):
    from toolkit.adversarial import PGDConfig
    from toolkit.attacks import gate_pgd_images
    from toolkit.models.loading import load_image
    from toolkit.models.pixels import attack_canvas

    model = tiny_models(family)
    samples = batch()
    feats = tracing.capture(model, samples, [LAYER], "image-max")[LAYER]
    eraser = person_eraser(model, "image-max", feats)
    gate = eraser.layer_map(LAYER).gate_object
    config = PGDConfig(eps=16 / 255, step=4 / 255, steps=4)
    (adv,) = gate_pgd_images(model, samples[:1], eraser, config)
    before = gate.score(feats[:1])
    after = gate.score(tracing.capture(model, [Sample(samples[0].text, adv)], [LAYER], "image-max")[LAYER])
    assert float(after) < float(before) - 1e-3
    x0, _, _ = attack_canvas(model.adapter.pixel_layout, model.processor.image_processor, load_image(samples[0].image))
    x1, _, _ = attack_canvas(model.adapter.pixel_layout, model.processor.image_processor, adv)
    assert float((x1 - x0).abs().max()) <= config.eps + 1 / 255
