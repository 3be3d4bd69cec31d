"""bench/real_shapes.py's projection to the full model, against the formula worked by hand."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import real_shapes  # noqa: E402


def test_projection_is_the_formula():
    unit = {"batch": 4, "slice_layers": 2, "profile": {"per_layer": 0.8, "rest": 2.0, "head": 0.4},
            "fit": {"solve_s": 3.0, "accumulate_s_per_row": 1e-3}, "pgd_step_s": {"lean": 1.5},
            "generate": {"plain": 8.0}, "train_s": {"GA": 10.0, "NPO": 12.0}}
    counts = {"people": 130, "forget_people": 10, "retain_prompts": 100, "forget_prompts": 20,
              "contrast_prompts": 30, "generated_prompts": 40, "pgd_images": 2, "pgd_steps": 5,
              "qa_pairs": 18, "epochs": 2, "batch": 8}
    rows = {what: value for what, value, _ in real_shapes.project(unit, counts, layers=10)}
    per_layer, rest, head = 0.2, 0.5, 0.1  # per sample: the profile is of a batch of 4
    capture = rest + 10 * per_layer
    grow = (rest + 10 * per_layer + head) / (rest + 2 * per_layer + head)
    scale, forget_scale = 653 / 130, 50 / 10
    prompts = (100 + 30) * scale + 20 * forget_scale
    fit = (prompts * capture + 40 * scale * 8.0 / 4 * grow + 2 * 5 * 1.5 * grow + 10 * 3.0
           + 10 * prompts * 1e-3)
    steps = 2 * -(-(18 * forget_scale) // 8)  # epochs x ceil(QA / batch)
    ga = steps * 10.0 / 4 * 8 * grow
    assert rows["capture per prompt, full model"] == pytest.approx(capture)
    assert rows["prompts captured by the fit"] == pytest.approx(prompts)
    assert rows["fit, all layers"] == pytest.approx(fit)
    assert rows["GA"] == pytest.approx(ga)
    assert rows["fit / GA"] == pytest.approx(fit / ga)
