"""CUDA + bf16: every family's tiny model steers through the toolkit exactly as through plain forward hooks.

Marked ``gpu`` and skipped without CUDA (CI has none); run with ``make test-gpu`` on a GPU machine.
"""

import pytest
import torch

from conftest import FAMILIES, random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer
from toolkit.models.loading import Sample, load_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def hook_generate(model, samples, layer, m, lam, max_new_tokens):
    """Reference: a plain forward hook adding lam * (h_last . w) d (float32 gate) at every prompt token
    (gate from the last prompt token) and at every generated token (gate from that token)."""
    enc = model.encode(samples, device=model.device)
    mask = enc["attention_mask"]
    gates, directions = m.gates.to(model.device), m.directions.to(model.device)

    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        shift = (lam * (h[:, -1].float() @ gates) @ directions)
        if h.shape[1] > 1:
            h = h + (shift[:, None, :] * mask[:, :, None].float()).to(h.dtype)
        else:
            h = h + shift.to(h.dtype)[:, None, :]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = model.layer_modules[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.module.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=model.tokenizer.pad_token_id)
    finally:
        handle.remove()
    return [row[enc["input_ids"].shape[1]:].cpu() for row in out]


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_bf16_steering_equals_forward_hooks(family):
    model = load_model(f"tiny-{family}", dtype="bfloat16", device_map="cuda")
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    m = EraserLayer(1, torch.randn(model.hidden_size, 1, generator=g) * 0.3,
                    torch.randn(1, model.hidden_size, generator=g))
    eraser = Eraser((m,), 3.0, "all", model.fingerprint())
    image = model.adapter.supports_images
    samples = [Sample("who is this person", random_image(0) if image else None),
               Sample("what is shown in the picture", random_image(1) if image else None)]
    ours = tracing.generate(model, samples, steers=eraser, max_new_tokens=8, return_ids=True)
    ref = hook_generate(model, samples, 1, m, 3.0, 8)
    for a, b in zip(ours, ref):
        assert a.tolist() == b[: len(a)].tolist()


def test_cuda_fit_and_steered_generate_on_the_default(tmp_path):
    from toolkit.adversarial import PGDConfig
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.config import FitConfig
    from toolkit.benchmark_fit import fit_eraser
    from toolkit.data.synthetic import default_benchmark
    from toolkit.nullspace import FixedRatio

    model = load_model("default", dtype="bfloat16", device_map="cuda")
    result = fit_eraser(model, default_benchmark(), FitConfig(layers=(6,), rank_policy=FixedRatio(0.9), n_contrast=8,
                                                              pgd=PGDConfig(steps=3)))
    person = MLLMUBench(default_benchmark()).forget(10)[0]
    q = next(g for g in person.generation if g.modality == "image")
    sample = Sample(q.question, person.image)
    plain = tracing.generate(model, [sample], max_new_tokens=12)[0]
    steered = tracing.generate(model, [sample], steers=result.eraser.with_options(lam=4.0), max_new_tokens=12)[0]
    assert plain != steered
    path = result.eraser.save(tmp_path / "e.safetensors")
    assert Eraser.load(path, model).layers == (6,)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llama", "qwen2")])
def test_cuda_bf16_pgd_for_every_image_family(family):
    """PGD in pixel space on CUDA in bf16: the canvas and its views stay on the CPU in float32, the
    model's loss runs on the GPU, and the gradient comes back through the cast."""
    import math

    from toolkit.adversarial import PGDConfig, pgd_attack

    model = load_model(f"tiny-{family}", dtype="bfloat16", device_map="cuda")
    res = pgd_attack(model, [Sample("who is this person", random_image(0))], ["this is anna"], PGDConfig(steps=3),
                     max_new_tokens=4)
    assert all(math.isfinite(v) for v in res.loss_clean + res.loss_adversarial)
    assert res.linf[0] <= 16 / 255 + 1e-6 and res.loss_adversarial[0] != res.loss_clean[0]


def test_cuda_fit_statistics_stay_on_the_gpu_and_equal_float64_on_the_host():
    """On CUDA the fitter's moments are float32 blocks on the device (no host copy of a batch) and give the
    eraser float64 gives on the host from the same rows; the lean capture and last-position logits hold too."""
    from toolkit.config import FitConfig
    from toolkit.fitter import EraserFitter
    from toolkit.nullspace import FixedRatio

    model = load_model("tiny-llava", dtype="bfloat16", device_map="cuda")
    retain = [Sample(f"what is in picture {i}", random_image(i)) for i in range(16)]
    forget = [Sample(f"who is person {i}", random_image(50 + i)) for i in range(8)]
    rows = {k: tracing.capture(model, s, [1], positions=p, to_cpu=False)[1]
            for k, s, p in (("retain", retain, "prompt"), ("forget", forget, "last"))}
    assert rows["retain"].device.type == "cuda"
    on_gpu = EraserFitter(model.hidden_size, [1])
    on_host = EraserFitter(model.hidden_size, [1], precision="float64")
    for fitter, move in ((on_gpu, lambda t: t), (on_host, lambda t: t.cpu())):
        fitter.update_retain({1: move(rows["retain"])}).update_forget({1: move(rows["forget"])})
        fitter.update_contrast(refusal={1: torch.ones(2, model.hidden_size)}, recall={1: torch.zeros(2, model.hidden_size)})
    assert on_gpu.retain[1].precision == "float32" and on_gpu.retain[1].device.type == "cuda"
    a = on_gpu.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1)).maps[0].gates
    b = on_host.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1)).maps[0].gates
    assert float((a - b).norm() / b.norm()) < 1e-3
    samples = retain[:3]
    full = tracing.forward(model, samples, last_only=False)
    torch.testing.assert_close(tracing.forward(model, samples), torch.stack([f[-1] for f in full]), rtol=2e-2,
                               atol=2e-2)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_cuda_bf16_image_read_with_latch_equals_a_hand_written_hook(family):
    """An image-max prototype gate, latched, in bf16 on CUDA: the three routes against a plain hook that
    pools the image tokens by hand, gates once at prefill and keeps shifting the fired rows' new tokens."""
    import nnsight

    from toolkit.gates import PrototypeGate

    model = load_model(f"tiny-{family}", dtype="bfloat16", device_map="cuda")
    samples = [Sample("who is this person", random_image(0)), Sample("what is shown in the picture", random_image(1))]
    feats = tracing.capture(model, samples, [1], "image-max")[1]
    unit = torch.nn.functional.normalize(feats, dim=-1)
    d = model.hidden_size
    gate = PrototypeGate(unit[:1], unit[1:], torch.zeros(d), torch.ones(d), 0.0, 0.0, "image-max")
    direction = torch.randn(1, d, generator=torch.Generator().manual_seed(3))
    eraser = Eraser((EraserLayer(1, gate, direction),), 6.0, "prompt", model.fingerprint(), latch=True)
    enc = model.encode(samples, device=model.device)
    image = (enc["input_ids"] == model.image_token_id) & enc["attention_mask"].bool()
    state = {}

    def hook(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        if h.shape[1] > 1:  # prefill: decide per row, shift every real prompt token
            pooled = h.float().masked_fill(~image[:, :, None], float("-inf")).max(1).values
            state["w"] = gate(pooled)
            shift = 6.0 * state["w"] @ direction.to(h.device)
            h = h + (shift[:, None, :] * enc["attention_mask"][:, :, None].float()).to(h.dtype)
        else:
            shift = 6.0 * state["w"] @ direction.to(h.device)
            fired = (state["w"] != 0).any(-1, keepdim=True)
            h = h + torch.where(fired, shift, torch.zeros_like(shift)).to(h.dtype)[:, None, :]
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    handle = model.layer_modules[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = [r[enc["input_ids"].shape[1]:].tolist() for r in model.module.generate(**enc, **kw)]
    finally:
        handle.remove()
    ours = [t.tolist() for t in tracing.generate(model, samples, steers=eraser, max_new_tokens=8, return_ids=True)]
    with eraser.attached(model):
        hooked = [r[enc["input_ids"].shape[1]:].tolist() for r in model.module.generate(**enc, **kw)]
    with model.nn.generate(**kw) as tracer:
        with tracer.invoke(**enc):
            eraser.intervene(model, inputs=enc)
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    mine = [r[enc["input_ids"].shape[1]:].tolist() for r in ids]
    for a, b, c, e in zip(ours, ref, hooked, mine):
        assert a == b[: len(a)] == c[: len(a)] == e[: len(a)]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("llama", "qwen2", "paligemma")])
def test_cuda_bf16_shared_prefix_captures_equal_plain_ones(family):
    """Shared-prefix captures (toolkit.prefix) on CUDA in bf16: the plain forward's states within bf16's rounding."""
    model = load_model(f"tiny-{family}", dtype=torch.bfloat16, device_map="cuda")
    a, b = random_image(1), random_image(2)
    questions = ["Who is this?", "Where was this person born, and what do they do for a living?", "Name?"]
    samples = [Sample(q, a) for q in questions] + [Sample(q, b) for q in questions[:2]]
    layer = max(set(range(model.num_layers)) - model.adapter.deepstack_layers(model.config))
    for positions in ("prompt", "last+image-max"):
        plain = tracing.capture(model, samples, layer, positions, share_prefix=False)[layer]
        shared = tracing.capture(model, samples, layer, positions)[layer]
        torch.testing.assert_close(shared, plain, rtol=0, atol=4 * 2 ** -8 * float(plain.abs().max()))
