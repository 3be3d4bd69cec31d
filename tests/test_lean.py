"""The lean paths return the numbers of the full ones: float32 blocked moments against float64 (and the
null space, map and eraser built on them), early-stopped captures, last-position logits, PGD's target loss.
"""

import pytest
import torch

from conftest import FAMILIES, random_image
from toolkit import tracing
from toolkit.adversarial import target_loss
from toolkit.eraser import solve_map
from toolkit.config import FitConfig
from toolkit.fitter import EraserFitter
from toolkit.pipeline import add_samples
from toolkit.models.loading import Sample
from toolkit.nullspace import FixedRatio, SecondMoment, null_space


def activations(n, d, seed=0):
    """Rows like a residual stream's: a large shared offset, a few outlier dimensions, a decaying spectrum."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -3, d, dtype=torch.float64)
    rows = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    rows[:, :3] *= 40.0
    return rows + 5.0 * torch.randn(d, generator=g, dtype=torch.float64)


def relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_float32_blocks_match_float64_on_many_offset_rows():
    rows = activations(200_000, 48)
    exact = SecondMoment(48, "float64")
    blocked = SecondMoment(48, "float32", block_rows=4096)
    per_row = SecondMoment(48, "float32", block_rows=1)  # one rounding per small batch: what blocks avoid
    for chunk in rows.split(100):
        exact.update(chunk)
        blocked.update(chunk.float())
    for chunk in rows[:20_000].split(100):
        per_row.update(chunk.float())
    assert blocked.gram.dtype == exact.gram.dtype == torch.float64 and blocked.nbytes() < exact.nbytes()
    assert relative(blocked.gram, exact.gram) < 1e-6
    assert relative(blocked.total, exact.total) < 1e-6
    assert blocked.count == exact.count == 200_000
    # The same float32 sums without blocks (200 additions of batch moments) drift further on a tenth of the rows.
    exact_tenth = SecondMoment(48, "float64").update(rows[:20_000])
    assert relative(per_row.gram, exact_tenth.gram) > relative(blocked.gram, exact.gram)


def test_float32_blocks_keep_weights_and_memory_bound():
    rows = activations(3000, 32, seed=1)
    weighted = SecondMoment(32, "float32", block_rows=1000).update(rows[:1000].float()).update(rows[1000:].float(), 3.0)
    exact = SecondMoment(32, "float64").update(rows[:1000]).update(rows[1000:], 3.0)
    assert relative(weighted.gram, exact.gram) < 1e-6 and relative(weighted.total, exact.total) < 1e-6
    assert weighted.count == exact.count == 1000 + 3 * 2000
    held = SecondMoment(32, "float32", block_rows=500).update(rows[:400].float())
    assert held.nbytes() == 4 * (32 * 32 + 2 * 32) + 4 * 400 * 32  # moment + row sum + shift + the pending block
    held.update(rows[400:600].float())  # crosses the block: flushed, nothing pending
    assert held.nbytes() == 4 * (32 * 32 + 2 * 32)


def test_auto_precision_is_float64_on_cpu_and_bit_identical_to_before():
    rows = activations(500, 16).float()
    auto = SecondMoment(16).update(rows)
    assert auto.precision == "float64"
    x = rows.double()
    assert torch.equal(auto.gram, x.T @ x) and torch.equal(auto.total, x.sum(0))


def test_null_space_and_map_from_float32_moments_match_float64():
    d = 64
    retain, forget = activations(20_000, d, seed=2), activations(400, d, seed=3)
    spaces, maps = {}, {}
    for precision in ("float64", "float32"):
        r = SecondMoment(d, precision)
        f = SecondMoment(d, precision)
        for chunk in retain.split(256):
            r.update(chunk if precision == "float64" else chunk.float())
        f.update(forget if precision == "float64" else forget.float())
        space = null_space(r, FixedRatio(0.3))
        spaces[precision] = space
        maps[precision] = solve_map(f.gram, f.total, space, 0.1)
    q64, q32 = spaces["float64"].basis.double(), spaces["float32"].basis.double()
    assert q32.shape == q64.shape == (d, int(0.3 * d))
    assert relative(q32 @ q32.T, q64 @ q64.T) < 1e-4  # the same subspace (bases may differ by a rotation)
    assert abs(spaces["float32"].leaked_energy - spaces["float64"].leaked_energy) < 1e-6
    assert relative(maps["float32"], maps["float64"]) < 1e-4


def test_fitter_in_float32_gives_the_float64_eraser(tiny_models):
    model = tiny_models("llava")
    retain = [Sample(f"what is in picture {i}", random_image(i)) for i in range(12)]
    forget = [Sample(f"who is person {i}", random_image(50 + i)) for i in range(6)]
    erasers = {}
    for precision in ("float64", "float32"):
        fitter = EraserFitter(model.hidden_size, [1, 2], precision=precision)
        add_samples(fitter, model, "retain", retain, positions="prompt", batch_size=4)
        add_samples(fitter, model, "forget", forget, batch_size=4)
        fitter.update_contrast(refusal={l: torch.ones(3, model.hidden_size) for l in (1, 2)},
                               recall={l: torch.zeros(3, model.hidden_size) for l in (1, 2)})
        erasers[precision] = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1))
        assert fitter.retain[1].precision == precision
    for a, b in zip(erasers["float32"].maps, erasers["float64"].maps):
        assert relative(a.gates, b.gates) < 1e-4


class Calls:
    def __init__(self, module):
        self.n, self.shapes = 0, []
        self.handle = module.register_forward_hook(self)

    def __call__(self, mod, inp, out):
        self.n += 1
        h = out[0] if isinstance(out, tuple) else out
        self.shapes.append(tuple(h.shape))


def test_capture_stops_after_its_last_layer(tiny_models):
    model = tiny_models("llava")
    samples = [Sample("who is this", random_image(0)), Sample("describe the picture please", random_image(1))]
    full = tracing.capture(model, samples, [0, model.num_layers - 1], positions="prompt")
    head, top = Calls(model.module.lm_head), Calls(model.layer_modules[model.num_layers - 1])
    try:
        tracing.forward(model, samples)
        assert head.n == 1 and top.n == 1  # a full forward runs both (the hooks see nnsight's runs)
        early = tracing.capture(model, samples, 0, positions="prompt")
        assert head.n == 1 and top.n == 1  # neither the layers above nor the LM head ran
    finally:
        head.handle.remove()
        top.handle.remove()
    assert torch.equal(early[0], full[0])
    # A steer above the captured layer changes nothing there and is not reached.
    from toolkit.steering import Steer
    steer = Steer(model.num_layers - 1, torch.ones(model.hidden_size) * 50.0)
    assert torch.equal(tracing.capture(model, samples, 0, positions="prompt", steers=[steer])[0], full[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_last_position_logits_equal_the_full_logits(tiny_models, family):
    model = tiny_models(family)
    image = family not in ("llama", "qwen2")
    samples = [Sample("who is this", random_image(0) if image else None),
               Sample("a longer question about the same picture", random_image(1) if image else None)]
    assert tracing.keeps_last_logits(model)
    head = Calls(model.module.lm_head)
    try:
        last = tracing.forward(model, samples)
    finally:
        head.handle.remove()
    assert all(shape[1] == 1 for shape in head.shapes), head.shapes  # the head projected one position a row
    full = tracing.forward(model, samples, last_only=False)
    torch.testing.assert_close(last, torch.stack([f[-1] for f in full]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_pgd_target_loss_equals_the_models_loss_and_gradient(tiny_models, family):
    model = tiny_models(family)
    prompts = [model.format_prompt("who is this", image=True), model.format_prompt("name the person", image=True)]
    batch = model.adapter.training_batch(model.processor, prompts, ["this is anna", "bob"],
                                         [random_image(0), random_image(1)], eos=False)
    pixels = batch.pop("pixel_values").float().requires_grad_(True)
    ours = target_loss(model, batch, pixels)
    (g_ours,) = torch.autograd.grad(ours, pixels)
    reference = model.module(**batch, pixel_values=pixels).loss
    (g_ref,) = torch.autograd.grad(reference, pixels)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


def test_layers_fitted_in_separate_passes_compose_to_the_one_pass_eraser(tiny_models):
    """When every layer's moments do not fit at once, fit layer groups in separate passes and compose."""
    from toolkit.eraser import Eraser

    model = tiny_models("llava")
    retain = [Sample(f"what is in picture {i}", random_image(i)) for i in range(10)]
    forget = [Sample(f"who is person {i}", random_image(40 + i)) for i in range(5)]

    def fitted(layers):
        fitter = EraserFitter(model.hidden_size, layers)
        add_samples(fitter, model, "retain", retain, batch_size=5)
        add_samples(fitter, model, "forget", forget, batch_size=5)
        add_samples(fitter, model, "refusal", forget, batch_size=5)
        add_samples(fitter, model, "recall", retain, batch_size=5)
        return fitter.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1, lam=3.0),
                             fingerprint=model.fingerprint())

    together = fitted([0, 1, 2])
    apart = Eraser.compose(fitted([0, 1]), fitted([2]))
    assert [m.layer for m in apart.maps] == [0, 1, 2]
    for a, b in zip(apart.maps, together.maps):
        torch.testing.assert_close(a.gates, b.gates)
        torch.testing.assert_close(a.directions * apart.lam, b.directions * together.lam)
    ids = lambda e: tracing.generate(model, forget, steers=e, max_new_tokens=5, return_ids=True)  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(ids(apart), ids(together)))
