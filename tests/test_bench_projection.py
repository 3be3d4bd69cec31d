"""bench/real_shapes.py's projection to the full model, against the formula worked by hand."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import real_shapes  # noqa: E402

UNIT = {"batch": 4, "slice_layers": 2, "width": 64, "profile": {"per_layer": 0.8, "rest": 2.0, "head": 0.4},
        "fit": {"solve_s": 3.0, "accumulate_s_per_row": 1e-3}, "pgd_step_s": {"lean": 1.5},
        "generate": {"plain": 8.0}, "shared": {"suffix_s": 0.05, "text_s": 0.02},
        "train_s": {"GA": 10.0, "NPO": 12.0, "trainable_params": 1000, "peak_added_mb": 0.01},
        "memory": {"params_slice": 3000, "params_layer": 500, "pgd_peak_added_mb": 2.0, "capture_peak_added_mb": 1.0}}


def counts(retain_budget, calibration_budget=None):
    def s(images, questions, alone, text):
        return {"images": images, "shared_questions": questions, "image_alone": alone, "text": text,
                "prompts": questions + alone + text}
    return {"people": 130, "forget_people": 10, "retain_budget": retain_budget, "n_contrast": None,
            "calibration_budget": calibration_budget,
            "sets": {"retain": s(5, 100, 0, 30), "forget": s(10, 20, 2, 5), "calibration": s(4, 40, 0, 0),
                     "contrast": s(6, 15, 3, 0)},
            "generated_prompts": 40, "pgd_images": 2, "pgd_steps": 5, "qa_pairs": 18, "epochs": 2, "batch": 8}


@pytest.mark.parametrize("budget,calibration_budget", [(None, None), (100, None), (100, 40)])
def test_projection_is_the_formula(budget, calibration_budget):
    rows = {what: value for what, value, _ in real_shapes.project(UNIT, counts(budget, calibration_budget), layers=10)}
    per_layer, rest, head = 0.2, 0.5, 0.1  # per sample: the profile is of a batch of 4
    capture = rest + 10 * per_layer
    suffix = 0.05 * 10 / 2
    text = 0.02 * 10 / 2
    grow = (rest + 10 * per_layer + head) / (rest + 2 * per_layer + head)
    people, forget_scale = 653 / 130, 50 / 10
    retain_scale = 1.0 if budget else people  # a budget does not grow with the benchmark
    retain = (5 * capture + 100 * suffix + 30 * text) * retain_scale
    forget = (10 * capture + 20 * suffix + 2 * capture + 5 * text) * forget_scale
    calibration = (4 * capture + 40 * suffix) * (1.0 if calibration_budget else people)  # a budget does not grow
    contrast = (6 * capture + 15 * suffix + 3 * capture) * people
    cal_scale = 1.0 if calibration_budget else people
    prompts = 130 * retain_scale + 27 * forget_scale + 40 * cal_scale + 18 * people
    plain = ((100 * capture + 30 * text) * retain_scale + (22 * capture + 5 * text) * forget_scale
             + 40 * capture * cal_scale + 18 * capture * people)
    rest_of_fit = 40 * people * 8.0 / 4 * grow + 2 * 5 * 1.5 * grow + 10 * 3.0 + 10 * prompts * 1e-3
    fit = retain + forget + calibration + contrast + rest_of_fit
    steps = 2 * -(-(18 * forget_scale) // 8)  # epochs x ceil(QA / batch)
    ga = steps * 10.0 / 4 * 8 * grow
    assert rows["capture per prompt, full model"] == pytest.approx(capture)
    assert rows["suffix on a cached prefix, full model"] == pytest.approx(suffix)
    assert rows["captures: retain"] == pytest.approx(retain)
    assert rows["captures: contrast"] == pytest.approx(contrast)
    assert rows["prompts captured by the fit"] == pytest.approx(prompts)
    assert rows["fit, all layers"] == pytest.approx(fit)
    assert rows["fit without shared prefixes"] == pytest.approx(plain + rest_of_fit)
    assert rows["GA"] == pytest.approx(ga)
    assert rows["fit / GA"] == pytest.approx(fit / ga)


def test_memory_projection_is_the_formula():
    rows = {what: value for what, value, _ in real_shapes.project_memory(UNIT, counts(None), layers=10)}
    params = 3000 + 8 * 500
    trainable = 1000 + 8 * 500
    weights = 2 * params
    fit = weights + 10 * 2 * 64 * 64 * 4 + 2.0 * 2**20 * 10 / 2
    ga = weights + trainable * (0.01 * 2**20 / 1000)
    assert rows["fit peak"] == pytest.approx(fit / 1e9)
    assert rows["GA peak"] == pytest.approx(ga / 1e9)
    assert rows["fit / GA peak memory"] == pytest.approx(fit / ga)
    assert rows["fit / GA peak memory, mixed-precision GA"] == pytest.approx(fit / (weights + 16 * trainable))


def gen(tokens, image):
    """One answer on the 10-layer full model, by hand from UNIT: the prefill (a whole forward for an image prompt,
    the text-only cost taken to depth for a text one) plus the decoding steps, each the 16-token generation's cost
    beyond one forward of the 2-layer slice, taken to the full depth."""
    per_layer, rest, head = 0.2, 0.5, 0.1
    slice_fwd, full_fwd = rest + 2 * per_layer + head, rest + 10 * per_layer + head
    step = (8.0 / 4 - slice_fwd) / 16 * full_fwd / slice_fwd
    return (full_fwd if image else 0.02 * 10 / 2) + tokens * step


def test_the_whole_job_projection_is_the_formula():
    """The rehearsal grid and the evaluation beside the fit: each generated prompt a prefill plus its new tokens,
    a decoding step the measured 16-token generation's cost beyond one forward, taken to the full depth."""
    job = {"grid_rows": 3, "grid_run": "x", "stand_in_people": 10, "methods": 2,
           "rehearsal": {"stand-ins": {"image": 6, "text": 4}, "retain": {"image": 20, "text": 10}},
           "evaluation": {"generation": {"image": 8, "text": 2, "forget": 5, "new_tokens": 32},
                          "classification": {"image": 4, "text": 0, "forget": 4, "new_tokens": 4}}}
    people, forget = 653 / 130, 50 / 10
    one = forget * (6 * gen(32, True) + 4 * gen(32, False)) + people * (20 * gen(32, True) + 10 * gen(32, False))
    k_gen = 0.5 * forget + 0.5 * people  # half of the generation items are the forget people's
    evaluation = 2 * k_gen * (8 * gen(32, True) + 2 * gen(32, False)) + 2 * forget * 4 * gen(4, True)
    rows = {what: value for what, value, _ in real_shapes.project_job(UNIT, counts(100), job, 10, fit_s=1000.0)}
    assert rows["one rehearsal candidate (32 tokens a question)"] == pytest.approx(one)
    assert rows["rehearsal grid"] == pytest.approx(3 * one)
    assert rows["evaluation: generation"] + rows["evaluation: classification"] == pytest.approx(evaluation)
    assert rows["erase job (fit + grid + evaluation)"] == pytest.approx(1000.0 + 3 * one + evaluation)


def test_the_job_projection_with_generated_shares_is_the_formula():
    """A run that generated only the rows its gate touched: the grid costs vanilla's answers to every question, one
    prefill of every question per gate, and each candidate's generation of its measured share; the eraser's
    evaluation a prefill of every item plus its share; vanilla's evaluation generates everything."""
    job = {"grid_rows": 4, "grid_run": "x", "stand_in_people": 10, "methods": 2,
           "rehearsal": {"stand-ins": {"image": 6, "text": 4}, "retain": {"image": 20, "text": 10}},
           "evaluation": {"generation": {"image": 8, "text": 2, "forget": 5, "new_tokens": 32}},
           "generated": {"stand-ins": 0.9, "retain": 0.05}, "prefill_passes": 2,
           "evaluation_generated": {"generation": {"forget": 1.0, "people": 0.1}}}
    people, forget = 653 / 130, 50 / 10
    whole = forget * (6 * gen(32, True) + 4 * gen(32, False)) + people * (20 * gen(32, True) + 10 * gen(32, False))
    prefill = forget * (6 * gen(0, True) + 4 * gen(0, False)) + people * (20 * gen(0, True) + 10 * gen(0, False))
    one = (forget * 0.9 * (6 * gen(32, True) + 4 * gen(32, False))
           + people * 0.05 * (20 * gen(32, True) + 10 * gen(32, False)))
    grid = whole + 2 * prefill + 3 * one
    k = 0.5 * forget + 0.5 * people
    g = (0.5 * forget * 1.0 + 0.5 * people * 0.1) / k
    evaluation = (k * (8 * gen(32, True) + 2 * gen(32, False))
                  + k * (8 * (gen(0, True) + g * gen(32, True)) + 2 * (gen(0, False) + g * gen(32, False))))
    rows = {what: value for what, value, _ in real_shapes.project_job(UNIT, counts(100), job, 10, fit_s=1000.0)}
    assert rows["one rehearsal candidate (32 tokens a question)"] == pytest.approx(one)
    assert rows["rehearsal: one prefill pass (what a gate touches)"] == pytest.approx(prefill)
    assert rows["rehearsal grid"] == pytest.approx(grid)
    assert rows["evaluation: generation"] == pytest.approx(evaluation)
    assert rows["erase job (fit + grid + evaluation)"] == pytest.approx(1000.0 + grid + evaluation)
