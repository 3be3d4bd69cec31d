"""The demo end to end (slow: about 3 minutes a run)."""

import json

import pytest

from experiments.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_is_deterministic_and_shows_the_contrast(tmp_path):
    a = run_demo(tmp_path / "a", DemoConfig())
    b = run_demo(tmp_path / "b", DemoConfig())
    # Compared as JSON: metric columns hold NaN where a task has no such metric, and NaN != NaN.
    for key in ("headline", "summary"):
        assert json.dumps(a[key], sort_keys=True, default=str) == json.dumps(b[key], sort_keys=True, default=str), key
    rows = {r["method"]: r for r in a["headline"]}
    eraser, vanilla, direction = rows["MLLMEraser"], rows["vanilla"], rows["direction only"]
    # The eraser core issue's bar: image+text forget leakage <= 5%, retain MCQ within 5 points.
    assert eraser["forget_leak_img"] <= 5 and eraser["forget_leak_txt"] <= 10 and eraser["forget_refused"] >= 80
    assert vanilla["retain_mcq_acc"] - eraser["retain_mcq_acc"] <= 5
    assert vanilla["retain_gen_rougeL"] - eraser["retain_gen_rougeL"] <= 5
    assert direction["retain_gen_rougeL"] < 50  # the unconditional direction damages retain
    assert (tmp_path / "a" / "report.md").exists() and json.loads((tmp_path / "a" / "metrics.json").read_text())
