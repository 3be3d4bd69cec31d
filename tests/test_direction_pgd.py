"""Erasure directions and PGD on tiny models."""

import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.pipeline import erasure_direction
from toolkit.models.loading import LoadedModel, Sample


def test_direction_is_mean_difference(tiny_models):
    m = tiny_models("llava")
    plus = [Sample(f"refuse this {i}", random_image(i)) for i in range(5)]
    minus = [Sample(f"answer this {i}", random_image(10 + i)) for i in range(4)]
    d = erasure_direction(m, plus, minus, [0, 2], batch_size=2)
    cp, cm = tracing.capture(m, plus, [0, 2]), tracing.capture(m, minus, [0, 2])
    for l in (0, 2):
        expected = cp[l].double().mean(0) - cm[l].double().mean(0)
        torch.testing.assert_close(d.vectors[l], expected, rtol=1e-5, atol=1e-6)
    assert d.n_refusal == 5 and d.n_recall == 4


def test_direction_variants(tiny_models):
    m = tiny_models("llava")
    clean = [Sample(f"q {i}", random_image(i)) for i in range(3)]
    other = [Sample(f"q {i}", random_image(20 + i)) for i in range(3)]
    image_only = erasure_direction(m, clean, other, [1], variant="image_only")
    assert image_only.vectors[1].norm() > 0
    # Words the tiny tokenizer knows (others all map to <unk>).
    clean = [Sample(t, random_image(i)) for i, t in enumerate(["who is this", "what is this", "where is it"])]
    other = [Sample(s.text, random_image(20 + i)) for i, s in enumerate(clean)]
    text_only = erasure_direction(m, clean, [Sample(t, random_image(i)) for i, t in
                                             enumerate(["tell me about her", "describe the photo", "who was born"])],
                                  [1], variant="text_only")
    nothing = erasure_direction(m, clean, other, [1], variant="text_only")
    assert nothing.vectors[1].norm() < 1e-6 < text_only.vectors[1].norm()  # same text, images dropped
    with pytest.raises(ValueError, match="share their text"):
        erasure_direction(m, clean, [Sample("x", random_image(0))] * 3, [1], variant="image_only")
    with pytest.raises(ValueError, match="Both contrastive sets need samples"):
        erasure_direction(m, [], other, [1])


def test_pgd_lowers_target_loss_within_eps(tiny_models):
    m = tiny_models("llava")
    samples = [Sample("who is this", random_image(0)), Sample("describe it", random_image(1))]
    # The reference budget (16/255): a random tiny model's loss is flat in the image, 8/255 moves it < 0.05.
    cfg = PGDConfig(eps=16 / 255, step=2 / 255, steps=12)
    res = pgd_attack(m, samples, ["this is a person", "you he please question"], cfg)
    for before, after, linf in zip(res.loss_clean, res.loss_adversarial, res.linf):
        assert after < before - 0.05
        assert linf <= cfg.eps + 1e-6
    assert all(im.size == (32, 32) for im in res.images)


def test_the_avoid_objective_pushes_the_clean_first_token_down_and_reads_no_target(tiny_models):
    from toolkit.adversarial import target_loss
    from toolkit.models.loading import load_image
    from toolkit.models.pixels import attack_canvas, canvas_image

    m = tiny_models("llava")
    samples = [Sample("who is this", random_image(0)), Sample("describe it", random_image(1))]
    cfg = PGDConfig(eps=16 / 255, step=2 / 255, steps=12, objective="avoid")
    res = pgd_attack(m, samples, ["ignored", "ignored"], cfg)
    assert res.outputs_clean == tracing.generate(m, samples, max_new_tokens=24)
    for s, clean, before, after, linf in zip(samples, res.outputs_clean, res.loss_clean, res.loss_adversarial,
                                             res.linf):
        # The reported loss is the NLL of the clean answer's first token alone, on the clean image.
        x, _, to_pixels = attack_canvas(m.adapter.pixel_layout, m.processor.image_processor, load_image(s.image))
        first = m.processor.tokenizer(clean, add_special_tokens=False)["input_ids"][0]
        batch = m.adapter.training_batch(m.processor, [m.format_prompt(s.text, image=True)], [clean],
                                         [canvas_image(x)], eos=False)
        labels = batch["labels"]
        at = int((labels != -100).any(0).nonzero()[0])
        assert int(labels[0, at]) == first
        batch["labels"] = torch.where(torch.arange(labels.shape[1]) == at, labels, torch.full_like(labels, -100))
        batch.pop("pixel_values")
        assert abs(float(target_loss(m, batch, to_pixels(x))) - before) < 1e-4
        assert after > before + 0.01  # pushed away from it, within the budget
        assert linf <= cfg.eps + 1e-6
    with pytest.raises(ValueError, match="PGD objective must be one of"):
        pgd_attack(m, samples[:1], ["y"], PGDConfig(objective="untargeted"))


def test_pgd_refuses_a_family_without_pixel_layout_and_a_torchvision_tiler(tiny_models):
    import dataclasses

    from toolkit.models.pixels import attack_canvas

    m = tiny_models("llava_next")
    bare = LoadedModel(m.module, m.processor, dataclasses.replace(m.adapter, pixel_layout=None))
    with pytest.raises(NotImplementedError, match="not implemented for llava_next.*Supported: llava, llava_next, "
                                                  "qwen2_vl.*idefics3.*--pgd-steps 0"):
        pgd_attack(bare, [Sample("x", random_image(0))], ["y"])

    class TorchvisionLike:  # any processor outside the PIL backend, whose resize kernels differ
        pass

    with pytest.raises(NotImplementedError, match="needs the PIL image processor.*--image-backend pil"):
        attack_canvas("anyres", TorchvisionLike(), random_image(0))
    with pytest.raises(NotImplementedError, match="assumes Idefics3's image processor.*--pgd-steps 0"):
        attack_canvas("split", m.processor.image_processor, random_image(0))  # LLaVA-NeXT's, not Idefics3's


IMAGE_SIZES = ((32, 32), (48, 40), (20, 70), (100, 37))


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3",
                                    "paligemma", "idefics3"])
def test_differentiable_preprocessing_equals_the_processor(family, tiny_models):
    from toolkit.models.pixels import attack_canvas, canvas_image

    m = tiny_models(family)
    ip = m.processor.image_processor
    kept = 0
    for seed, size in enumerate(IMAGE_SIZES):
        image = random_image(seed, max(size)).resize(size)
        canvas, extra, to_pixels = attack_canvas(m.adapter.pixel_layout, ip, image)
        assert canvas.ndim == 3 and canvas.shape[0] == 3 and 0 <= canvas.min() and canvas.max() <= 1
        pixels = to_pixels(canvas.requires_grad_(True))
        # What the processor makes of the user's own image: all of it, but LLaVA-NeXT's whole-image
        # view, which is resized from the canvas here and from the original there.
        own = ip(images=[image], return_tensors="pt")
        whole = slice(1, None) if m.adapter.pixel_layout == "anyres" else slice(None)
        torch.testing.assert_close(pixels.detach().reshape(own["pixel_values"].shape)[:, whole],
                                   own["pixel_values"].float()[:, whole], rtol=0, atol=1e-5)
        pixels.sum().backward()  # differentiable down to the canvas
        assert canvas.grad is not None and canvas.grad.abs().sum() > 0
        # The canvas as an 8-bit image is what an attack hands back: the processor must see exactly the
        # pixel values the attack optimised, and make the same canvas of it again. The tiny Qwen
        # processors (min_pixels == max_pixels) keep only some sizes; PGD refuses the others up front.
        again, _, _ = attack_canvas(m.adapter.pixel_layout, ip, canvas_image(canvas.detach()))
        if again.shape != canvas.shape:
            assert m.adapter.pixel_layout == "patches"
            with pytest.raises(ValueError, match="resizes an image of that size again.*a size this processor keeps"):
                pgd_attack(m, [Sample("who is this", image)], ["y"], PGDConfig(steps=1))
            continue
        kept += 1
        assert torch.equal(again, canvas.detach())
        real = ip(images=[canvas_image(canvas.detach())], return_tensors="pt")
        torch.testing.assert_close(pixels.detach().reshape(real["pixel_values"].shape),
                                   real["pixel_values"].float(), rtol=0, atol=1e-5)
        for k, v in extra.items():
            assert torch.equal(v, real[k])
    assert kept >= 2


@pytest.mark.parametrize("layout,processor", [("anyres", "LlavaNextImageProcessorPil"),
                                              ("split", "Idefics3ImageProcessorPil"),
                                              ("split", "SmolVLMImageProcessorPil")])
def test_tiling_layouts_at_the_released_processors_geometry(layout, processor):
    """LLaVA-NeXT's 336-pixel any-res grid, Idefics3's and SmolVLM's splitting (the released processors'
    settings, LANCZOS included; SmolVLM shares Idefics3's adapter): exact views and a canvas that maps
    to itself."""
    import transformers as tf

    from toolkit.models.pixels import attack_canvas, canvas_image

    kwargs = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}} if layout == "anyres" else {}
    ip = getattr(tf, processor)(**kwargs)
    counts = set()
    for seed, size in enumerate(((640, 480), (1000, 300), (336, 336))):
        image = random_image(seed, max(size)).resize(size)
        canvas, _, to_pixels = attack_canvas(layout, ip, image)
        real = ip(images=[canvas_image(canvas)], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(to_pixels(canvas), real.float(), rtol=0, atol=1e-5)
        again, _, _ = attack_canvas(layout, ip, canvas_image(canvas))
        assert torch.equal(again, canvas)
        counts.add(real.shape[1])
    assert len(counts) == 3  # three sizes, three different tilings


def test_pil_resize_view_is_pil_in_value_and_gradient():
    import numpy as np
    from PIL import Image

    from toolkit.models.pixels import pil_resized

    rng = np.random.default_rng(0)
    for resample in (Image.BICUBIC, Image.LANCZOS):
        for (h, w, out_h, out_w) in ((48, 40, 32, 32), (37, 100, 64, 64), (100, 37, 64, 64)):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            canvas = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).requires_grad_(True)
            out = pil_resized(canvas, out_h, out_w, resample)
            pil8 = np.asarray(Image.fromarray(pixels).resize((out_w, out_h), resample=resample))
            assert torch.equal((out.detach() * 255).round().to(torch.uint8), torch.from_numpy(pil8.copy()).permute(2, 0, 1))
            # The gradient is PIL's float resize: <weights, resize(x)> differentiated is resize^T(weights),
            # checked against PIL's own float-mode resize of each channel.
            weights = torch.randn(3, out_h, out_w)
            (grad,) = torch.autograd.grad((out * weights).sum(), canvas)
            probe = torch.randn(3, h, w)
            pil_float = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(c.numpy(), mode="F").resize(
                (out_w, out_h), resample=resample)).copy()) for c in probe])
            torch.testing.assert_close((grad * probe).sum(), (weights * pil_float).sum(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "gemma3", "llava_next", "idefics3"])
def test_pgd_runs_for_patchified_and_other_families(family, tiny_models):
    m = tiny_models(family)
    samples = [Sample("who is this", random_image(0))]
    cfg = PGDConfig(eps=16 / 255, step=2 / 255, steps=4)
    res = pgd_attack(m, samples, ["this is a person"], cfg)
    assert res.loss_adversarial[0] < res.loss_clean[0]
    assert res.linf[0] <= cfg.eps + 1e-6


def test_a_tiling_checkpoint_loaded_with_the_pil_backend_runs_pgd(tmp_path):
    """The user's path: a LLaVA-NeXT checkpoint directory loaded with ``image_backend="pil"``
    (``--image-backend pil``), then PGD from it."""
    from transformers.image_processing_backends import PilBackend

    from toolkit.models.loading import load_model
    from toolkit.models.tiny import build_tiny

    module, proc = build_tiny("llava_next")
    module.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), image_backend="pil")
    assert isinstance(model.processor.image_processor, PilBackend)
    res = pgd_attack(model, [Sample("who is this", random_image(3, 48).resize((48, 40)))], ["this is a person"],
                     PGDConfig(steps=2))
    assert res.images[0].size == (64, 54) and res.linf[0] <= 16 / 255 + 1e-6  # the 54 x 64 canvas, handed back
    with pytest.raises(ValueError, match="image_backend must be 'pil', 'torchvision' or None"):
        load_model(str(tmp_path), image_backend="PIL")
