"""The demo end to end (slow: about 2.5 minutes a run)."""

import json

import pytest

from toolkit.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_is_deterministic_and_shows_the_contrast(tmp_path):
    a = run_demo(tmp_path / "a", DemoConfig())
    b = run_demo(tmp_path / "b", DemoConfig())
    assert a["headline"] == b["headline"] and a["summary"] == b["summary"]
    rows = {r["method"]: r for r in a["headline"]}
    eraser, vanilla, direction = rows["MLLMEraser"], rows["vanilla"], rows["direction only"]
    assert eraser["forget_refused"] >= 80 and eraser["forget_leak_txt"] <= 10
    assert vanilla["retain_gen_rougeL"] - eraser["retain_gen_rougeL"] <= 5
    assert direction["retain_gen_rougeL"] < 50  # the unconditional direction damages retain
    assert (tmp_path / "a" / "report.md").exists() and json.loads((tmp_path / "a" / "metrics.json").read_text())
