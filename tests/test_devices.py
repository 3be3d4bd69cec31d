"""Device and dtype: bf16 gates, nnsight's serialisation path, device_map loads, inputs on the model's device."""

import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer, solve_map
from toolkit.models.loading import Sample, load_model
from toolkit.nullspace import FixedRatio, SecondMoment, null_space


def retain_and_forget(model, layer):
    retain = [Sample(t, random_image(i)) for i, t in enumerate(
        ["what is this", "who is in the picture", "describe the image", "what colour is it", "where is this",
         "is it a photo", "what is shown here", "tell me about it"] * 4)]
    forget = [Sample("what is the name of the person", random_image(100 + i)) for i in range(8)]
    h_r = tracing.capture(model, retain, [layer])[layer].double()
    h_f = tracing.capture(model, forget, [layer])[layer].double()
    return h_r, h_f


def test_bf16_gate_on_retain_rows_stays_within_1e3_of_fp32():
    model = load_model("default")
    layer = 6
    h_r, h_f = retain_and_forget(model, layer)
    moment = SecondMoment(model.hidden_size).update(h_r)
    space = null_space(moment, FixedRatio(0.9))
    w = solve_map(h_f.T @ h_f, h_f.sum(0), space, 0.1)
    m = EraserLayer(layer, w.float(), torch.randn(1, model.hidden_size))
    exact = (h_r @ w).squeeze(1)  # float64: the cancellation the null space buys
    bf16_states = h_r.to(torch.bfloat16)  # what a bf16 model hands the gate
    ours = m.gate(bf16_states).squeeze(1).double()
    assert (ours - (bf16_states.double() @ w).squeeze(1)).abs().max() < 1e-3
    # Computed in bf16, as before, the gate lost the cancellation.
    naive = (bf16_states @ w.to(torch.bfloat16)).squeeze(1).double()
    assert (naive - exact).abs().max() > (ours - (bf16_states.double() @ w).squeeze(1)).abs().max()
    # The retain gate is small against the forget gate in both precisions.
    assert exact.abs().mean() < 0.1 * (h_f @ w).abs().mean()


def test_bf16_model_steers_with_a_float32_gate():
    """In a bf16 model the shift the edit adds equals lam * gate32 * d cast to bf16."""
    model = load_model("tiny-llava", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    m = EraserLayer(1, torch.randn(model.hidden_size, 1, generator=g), torch.randn(1, model.hidden_size, generator=g))
    eraser = Eraser((m,), 0.5, "last")
    samples = [Sample("who is this", random_image(0)), Sample("what is the picture", random_image(1))]
    plain = tracing.capture(model, samples, [1])
    steered = tracing.capture(model, samples, [1], steers=eraser)
    source = plain[1]  # float32 copy of the bf16 state
    expected = (source.to(torch.bfloat16) + (0.5 * (source @ m.gates) @ m.directions).to(torch.bfloat16)).float()
    torch.testing.assert_close(steered[1], expected, rtol=0, atol=0)


def test_fitted_eraser_generate_through_nnsight_serialisation_equals_local():
    from toolkit.config import FitConfig
    from toolkit.fitter import EraserFitter
    from toolkit.pipeline import add_samples

    model = load_model("tiny-qwen2_5_vl")
    fitter = EraserFitter(model.hidden_size, [1, 2])
    texts = ["what is this", "describe the image", "what colour is it", "is it a photo", "where is this"]
    add_samples(fitter, model, "retain", [Sample(t, random_image(i)) for i, t in enumerate(texts * 4)])
    add_samples(fitter, model, "forget", [Sample("who is this person", random_image(50 + i)) for i in range(6)])
    add_samples(fitter, model, "refusal", [Sample("do not say who this is", random_image(i)) for i in range(4)])
    add_samples(fitter, model, "recall", [Sample("who is this", random_image(i)) for i in range(4)])
    # This random model's states are small (norm ~0.2): a small ridge lets the gate reach ~1 on forget rows.
    fitted = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.5), gamma=1e-4, lam=20.0),
                           fingerprint=model.fingerprint())
    samples = [Sample("who is this person", random_image(50)), Sample("who is this person", random_image(51))]
    for positions in ("prompt", "all"):
        eraser = fitted.with_options(positions=positions)
        local = tracing.generate(model, samples, steers=eraser, max_new_tokens=6, return_ids=True)
        unsteered = tracing.generate(model, samples, max_new_tokens=6, return_ids=True)
        model.remote = "local"
        try:
            served = tracing.generate(model, samples, steers=eraser, max_new_tokens=6, return_ids=True)
        finally:
            model.remote = False
        assert [t.tolist() for t in served] == [t.tolist() for t in local]
        assert [t.tolist() for t in local] != [t.tolist() for t in unsteered]


def test_device_map_loads_steer_like_a_plain_load(tmp_path):
    """device_map="auto", and a map that offloads two decoder layers to disk (their weights on the meta
    device, held by accelerate): same fingerprint, same steered ids as a plain load."""
    pytest.importorskip("accelerate")
    from toolkit.models.tiny import build_tiny

    module, proc = build_tiny("llava")
    module.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    plain = load_model(str(tmp_path))
    parts = ["model.vision_tower", "model.multi_modal_projector", "model.language_model.embed_tokens",
             "model.language_model.norm", "model.language_model.rotary_emb", "lm_head"]
    offload = {**{p: "cpu" for p in parts}, "model.language_model.layers.0": "cpu",
               "model.language_model.layers.1": "disk", "model.language_model.layers.2": "disk"}
    auto = load_model(str(tmp_path), device_map="auto")
    offloaded = load_model(str(tmp_path), device_map=offload, offload_folder=str(tmp_path / "offload"))
    assert all(p.device.type == "meta" for p in offloaded.layer_modules[2].parameters())
    assert auto.fingerprint() == offloaded.fingerprint() == plain.fingerprint()
    g = torch.Generator().manual_seed(2)
    eraser = Eraser((EraserLayer(1, torch.randn(plain.hidden_size, 1, generator=g) * 0.3,
                                 torch.randn(1, plain.hidden_size, generator=g)),), 3.0, "all", plain.fingerprint())
    samples = [Sample("who is this", random_image(0)), Sample("what is the picture now", random_image(1))]
    want = [t.tolist() for t in tracing.generate(plain, samples, steers=eraser, max_new_tokens=6, return_ids=True)]
    assert want != [t.tolist() for t in tracing.generate(plain, samples, max_new_tokens=6, return_ids=True)]
    for model in (auto, offloaded):
        got = tracing.generate(model, samples, steers=eraser, max_new_tokens=6, return_ids=True)
        assert [t.tolist() for t in got] == want


def test_fingerprint_is_cached():
    model = load_model("tiny-llava")
    first = model.fingerprint()
    with torch.no_grad():
        model.layer_modules[0].mlp.down_proj.weight.add_(1.0)
    assert model.fingerprint() == first, "cached: steering calls do not re-hash weights"
    assert model.fingerprint(refresh=True) != first


def test_capture_can_keep_device_and_dtype():
    model = load_model("tiny-llava", dtype="bfloat16")
    samples = [Sample("who is this", random_image(0))]
    kept = tracing.capture(model, samples, [1], to_cpu=False)
    assert kept[1].dtype == torch.bfloat16
    assert tracing.capture(model, samples, [1])[1].dtype == torch.float32
