"""Erasure directions and PGD on tiny models."""

import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.direction import erasure_direction
from toolkit.models.loading import Sample


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


@pytest.mark.parametrize("family", ["llava_next", "idefics3"])
def test_pgd_refuses_tiling_families_with_what_to_do(family, tiny_models):
    m = tiny_models(family)
    with pytest.raises(NotImplementedError, match=f"not implemented for {family}.*Supported: llava, qwen2_vl, "
                                                  "qwen2_5_vl, qwen3_vl, gemma3, paligemma.*--pgd-steps 0"):
        pgd_attack(m, [Sample("x", random_image(0))], ["y"])


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "paligemma"])
def test_differentiable_preprocessing_equals_the_processor(family, tiny_models):
    from toolkit.models.pixels import attack_canvas

    m = tiny_models(family)
    ip = m.processor.image_processor
    for seed, size in ((0, (32, 32)), (1, (48, 40))):
        image = random_image(seed, size[0]).resize(size)
        canvas, extra, to_pixels = attack_canvas(m.adapter.pixel_layout, ip, image)
        assert canvas.ndim == 3 and canvas.shape[0] == 3 and 0 <= canvas.min() and canvas.max() <= 1
        real = ip(images=[image], return_tensors="pt")
        pixels = to_pixels(canvas.requires_grad_(True))
        torch.testing.assert_close(pixels.detach().reshape(real["pixel_values"].shape),
                                   real["pixel_values"].float(), rtol=0, atol=1e-5)
        for k, v in extra.items():
            assert torch.equal(v, real[k])
        pixels.sum().backward()  # differentiable down to the canvas
        assert canvas.grad is not None and canvas.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "gemma3"])
def test_pgd_runs_for_patchified_and_other_families(family, tiny_models):
    m = tiny_models(family)
    samples = [Sample("who is this", random_image(0))]
    cfg = PGDConfig(eps=16 / 255, step=2 / 255, steps=4)
    res = pgd_attack(m, samples, ["this is a person"], cfg)
    assert res.loss_adversarial[0] < res.loss_clean[0]
    assert res.linf[0] <= cfg.eps + 1e-6
