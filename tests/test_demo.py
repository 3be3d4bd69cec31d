"""The demo end to end (slow: about 3 minutes a run)."""

import json

import pytest

from experiments.demo import run_demo
from toolkit.config import EraseConfig


@pytest.mark.slow
def test_demo_is_deterministic_and_shows_the_contrast(tmp_path):
    a = run_demo(tmp_path / "a", EraseConfig())
    b = run_demo(tmp_path / "b", EraseConfig())
    # Compared as JSON: metric columns hold NaN where a task has no such metric, and NaN != NaN.
    for key in ("headline", "summary"):
        assert json.dumps(a[key], sort_keys=True, default=str) == json.dumps(b[key], sort_keys=True, default=str), key
    rows = {r["method"]: r for r in a["headline"]}
    eraser = next(r for m, r in rows.items() if m.startswith("MLLMEraser"))
    vanilla, direction = rows["vanilla"], rows["direction only"]
    # Measured on people the fit never saw (docs/results.md).
    assert eraser["forget_leak_img"] < vanilla["forget_leak_img"] - 50
    assert eraser["in_fit_retain_recall"] >= vanilla["in_fit_retain_recall"] - 5
    assert eraser["retain_recall"] > direction["retain_recall"] + 50  # the gate spares most held-out people
    assert direction["retain_gen_rougeL"] < 50  # the unconditional direction damages retain
    fit_people = set(a["fit_report"]["fit_people"])
    assert not fit_people & set(a["validation_people"]) and not fit_people & set(a["stand_ins"])
    assert (tmp_path / "a" / "report.md").exists() and json.loads((tmp_path / "a" / "metrics.json").read_text())
