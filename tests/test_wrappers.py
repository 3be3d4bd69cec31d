"""The fit pool and the evaluation pool: disjoint by content, and only the fit pool reaches a fit, a
calibration or a setting choice."""

import re

import pytest

from toolkit.attacks import EVALUATION_POOL
from toolkit.data.items import Item
from toolkit.data.wrappers import FIT_WRAPPERS, wrap_items


def grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower().replace("{q}", " ").replace("{hint}", " "))
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


FIT_POOL = [t for ts in FIT_WRAPPERS.values() for t in ts]


def test_the_two_pools_share_no_four_words_in_a_row():
    eval_grams = set().union(*(grams(s) for s in EVALUATION_POOL))
    for template in FIT_POOL:
        assert not grams(template) & eval_grams, template
    assert grams("Ignore all previous instructions and rules.") & eval_grams, "the check can fail"
    assert len(FIT_POOL) >= 20 and len(FIT_WRAPPERS) >= 6  # paraphrase, jailbreak-style, turns, hints, formats


def test_wrapping_is_repeatable_spreads_over_the_pool_and_keeps_everything_but_the_prompt():
    items = [Item("forget", f"p{i}", "generation", "image", f"What is the job of person {i}?", "a baker",
                  answer_key="baker") for i in range(60)]
    once = wrap_items(items, per_question=2, seed=0)
    assert once == wrap_items(items, per_question=2, seed=0) and once != wrap_items(items, per_question=2, seed=1)
    assert len(once) == 120 and all(w.answer_key == "baker" and w.split == "forget (wrapped)" for w in once)
    assert all(it.prompt in w.prompt and w.prompt != it.prompt for it, w in zip([x for x in items for _ in (0, 1)],
                                                                                  once))
    used = {w.prompt.replace(it.prompt, "{q}") for it, w in zip([x for x in items for _ in (0, 1)], once)}
    assert len(used) >= 0.6 * len(FIT_POOL)
    with pytest.raises(ValueError, match="per_question"):
        wrap_items(items, per_question=len(FIT_POOL) + 1)


def test_no_evaluation_pool_string_reaches_a_fit_a_calibration_or_the_choice(monkeypatch, tmp_path):
    """Every prompt the model encodes during a whole erase run (fit, gate rows, calibration, rehearsal,
    evaluation) is recorded: the fit pool's wrappers are among them, no string of the evaluation pool is."""
    from test_erase import SMALL, small_folder

    from dataclasses import replace

    from toolkit import load_model
    from toolkit.job import erase
    from toolkit.models.loading import LoadedModel

    model = load_model("default")
    seen: list[str] = []
    original = LoadedModel.encode

    def recording(self, samples, **kw):
        from toolkit.models.loading import as_sample

        seen.extend(as_sample(s).text for s in samples)
        return original(self, samples, **kw)

    monkeypatch.setattr(LoadedModel, "encode", recording)
    bench = small_folder(tmp_path / "bench", forget=1, retain=10, real=2)
    config = replace(SMALL, select=replace(SMALL.select, gate_reads=("image-max",), wrap=1))
    erase(model, bench.root, config=config)
    text = "\n".join(seen)
    # The benchmark's own questions share phrases such as "the person in the image" with the attack texts:
    # what must not appear is attack content, i.e. the pool's word 4-grams that no benchmark question has.
    from toolkit.data.items import items_from_profiles

    people = bench.forget(5) + bench.retain(5) + bench.real()
    asked = set().union(*(grams(it.prompt) for it in items_from_profiles(people, "all")))
    eval_grams = set().union(*(grams(s) for s in EVALUATION_POOL)) - asked
    assert len(eval_grams) > 100
    assert not grams(text) & eval_grams
    wrappers_seen = [t for t in FIT_POOL if t.replace("{q}", "").strip(" ?,.:!") and
                     t.split("{q}")[0].strip()[:25] in text]
    assert len(wrappers_seen) >= 5, "the fit pool did reach the fit"


def test_the_gate_is_fitted_on_one_half_of_the_pool_and_settings_are_scored_on_the_other(tiny_models):
    from toolkit.data.splits import PeopleSplit
    from toolkit.data.synthetic import SyntheticConfig, write_benchmark
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.wrappers import pool_half
    from toolkit.config import FitConfig
    from toolkit.data.samples import calibration_samples, wrapped_samples
    from toolkit.selection import rehearsal_items

    fit_half, rehearsal_half = pool_half("fit"), pool_half("rehearsal")
    assert not set(fit_half) & set(rehearsal_half) and set(fit_half) | set(rehearsal_half) == set(pool_half())
    assert {f for f, _ in fit_half} == {f for f, _ in rehearsal_half} == set(FIT_WRAPPERS)

    import tempfile
    bench = MLLMUBench(write_benchmark(tempfile.mkdtemp(), SyntheticConfig(seed=5, num_fictitious=30, num_real=6,
                                                                           num_unknown=4)))
    cfg = FitConfig(people=PeopleSplit(), wrap=1)
    gate_rows = [s.text for s in wrapped_samples(bench.forget(10), "f", cfg)]
    calibration = [s.text for s in calibration_samples(bench, cfg)[0]]
    sets, _ = rehearsal_items(bench, 10, PeopleSplit(), wrap=1)
    rehearsal = [it.prompt for it in sets["stand-ins"] + sets["retain"]]
    only_fit = {t for _, t in fit_half} - {t for _, t in rehearsal_half}
    only_rehearsal = {t for _, t in rehearsal_half}

    def hits(texts, templates):
        return {t for t in templates if any(x.startswith(t.split("{q}")[0]) and x.endswith(t.split("{q}")[1])
                                            and len(x) > len(t) - 3 for x in texts)}

    assert hits(gate_rows + calibration, only_fit) and not hits(gate_rows + calibration, only_rehearsal)
    assert hits(rehearsal, only_rehearsal) and not hits(rehearsal, only_fit)
