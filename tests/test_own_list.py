"""A forget list written as a user writes one (five questions a person, in other words than the benchmark's), then
the benchmark's own questions about those people and about strangers in neither list (issue #48's check).

Slow (``make test-slow``): a whole ``erase`` on the embedded default. The goals are the results page's (leakage
<= 5 %, strangers within 3 points); today they are missed, measured and explained on the results page ("The name
gate"), so the test is a strict xfail: it fails the day they are met, to be
turned into a plain test then."""

import pytest

from toolkit.config import SHIPPED
from toolkit.goals import UTILITY_POINTS


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="measured miss: strangers lose 14-26 points of image recall on the embedded "
                   "default (the gate is calibrated on the 7 validation people of a 16-person retain list)")
def test_a_hand_written_list_forgets_the_benchmarks_own_questions_and_leaves_strangers(tmp_path):
    from studies.own_list_study import RETAIN, benchmark_questions, people_and_strangers, write_list
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.evaluate import run_items
    from toolkit.job import erase
    from toolkit.models.loading import load_model
    from toolkit.selection import fact_hits

    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    people, strangers = people_and_strangers(bench, 0, 4, 20)
    listed = write_list(tmp_path / "forget.jsonl", people, "a")
    result = erase(model, listed, RETAIN, config=SHIPPED.with_fit(name_gate=True))
    items = benchmark_questions(people, strangers)
    plain = run_items(model, items)
    steered = run_items(model, items, steers=result.eraser)
    for kind in ("image", "text"):
        forget = steered[(steered.split == "forget") & (steered.modality == kind)]
        assert 100 * fact_hits(forget).mean() <= 5, f"forget {kind} leakage"
        mine = steered[(steered.split == "strangers") & (steered.modality == kind)]
        theirs = plain[(plain.split == "strangers") & (plain.modality == kind)]
        assert 100 * (fact_hits(theirs).mean() - fact_hits(mine).mean()) <= UTILITY_POINTS, f"strangers' {kind} recall"
