"""The fit pipeline's plumbing and its refusals of bad input (tiny model, small synthetic benchmark)."""

import shutil

import pandas as pd
import pytest
import torch

from conftest import random_image
from toolkit.contrastive import ContrastiveSets, privacy_sets
from toolkit.data import synthetic
from toolkit.data.mllmu import MLLMUBench
from toolkit.config import FitConfig
from toolkit.benchmark_fit import fit_eraser
from toolkit.data.samples import question_samples
from toolkit.models.loading import Sample
from toolkit.nullspace import EnergyBudget, FixedRatio

SMALL = synthetic.SyntheticConfig(seed=5, num_fictitious=20, num_real=4, num_unknown=4)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), SMALL)


def contrast():
    plus = [Sample(f"do not reveal who this is {i}", random_image(i)) for i in range(6)]
    minus = [Sample(f"who is this {i}", random_image(i)) for i in range(6)]
    return ContrastiveSets(plus, minus, info={"recipe": "given"})


def test_fit_end_to_end_on_tiny_model(tiny_models, bench_dir):
    m = tiny_models("llava")
    res = fit_eraser(m, bench_dir, FitConfig(layers=(1, 2), forget_ratio=10, rank_policy=FixedRatio(0.5),
                                             people=None), contrast=contrast())
    e = res.eraser
    assert e.layers == (1, 2) and e.rank == 1
    bench = MLLMUBench(bench_dir)
    n_retain = len(question_samples(bench.retain(10), "r")) + len(question_samples(bench.real(), "x"))
    assert res.report["n_retain"] == n_retain
    assert res.report["n_forget"] == len(question_samples(bench.forget(10), "f"))
    for l in (1, 2):
        stats = res.report["layers"][l]
        assert stats["k"] == 32  # half of 64
        # The gate is fitted toward 1 on forget and stays near 0 on retain on average.
        assert stats["gate_mean_forget"] > 5 * abs(stats["gate_mean_retain"])
        torch.testing.assert_close(e.layer_map(l).directions[0].double(), res.direction.vectors[l], rtol=1e-6,
                                   atol=1e-6)
    held_out = fit_eraser(m, bench_dir, FitConfig(layers=(2,), include_real=False, people=None), contrast=contrast())
    assert held_out.report["n_retain"] == len(question_samples(bench.retain(10), "r"))


def test_model_that_never_refuses_gives_no_direction(tiny_models, bench_dir):
    m = tiny_models("llava")
    with pytest.raises(ValueError, match="refuses none of the privacy-instructed questions"):
        privacy_sets(m, MLLMUBench(bench_dir).retain(10), n=4, pgd=None)


def test_bad_inputs(tiny_models, bench_dir, tmp_path):
    m = tiny_models("llava")
    with pytest.raises(ValueError, match="Layer 9 is out of range"):
        fit_eraser(m, bench_dir, FitConfig(layers=(9,)), contrast=contrast())
    with pytest.raises(ValueError, match="leaves k = 0"):
        fit_eraser(m, bench_dir, FitConfig(layers=(1,), rank_policy=EnergyBudget(1e-30)), contrast=contrast())
    with pytest.raises(ValueError, match="Both contrastive sets need samples"):
        fit_eraser(m, bench_dir, FitConfig(layers=(1,)), contrast=ContrastiveSets([], contrast().recall))
    # A forget split that is empty, and one that overlaps the retain split.
    broken = tmp_path / "broken"
    shutil.copytree(bench_dir, broken)
    full = pd.read_parquet(broken / "forget_10")
    full.iloc[:0].to_parquet(broken / "forget_10" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="forget_10 is empty"):
        fit_eraser(m, broken, FitConfig(layers=(1,)), contrast=contrast())
    retain = pd.read_parquet(bench_dir / "retain_90")
    pd.concat([full, retain.iloc[:1]]).to_parquet(broken / "forget_10" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="Forget and retain splits share people"):
        fit_eraser(m, broken, FitConfig(layers=(1,)), contrast=contrast())


def test_nan_activations_refused(tiny_models, bench_dir):
    m = tiny_models("llava")
    # NaN out of block 0 reaches block 1's output, which the fit reads.
    handle = m.layer_modules[0].register_forward_hook(lambda mod, i, o: o * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="NaN"):
            fit_eraser(m, bench_dir, FitConfig(layers=(1,)), contrast=contrast())
    finally:
        handle.remove()


def test_answer_rows_join_the_fit(tiny_models, bench_dir):
    from toolkit.benchmark_fit import answer_samples

    m = tiny_models("llava")
    bench = MLLMUBench(bench_dir)
    samples, where = answer_samples(m, bench.forget(10), "forget")
    gens = [q for p in bench.forget(10) for q in p.generation]
    assert len(samples) == len(gens)
    # One counted position per answer token: the answer's length in this (SentencePiece-kind) tokenizer,
    # where a word after "ASSISTANT: " gets the same pieces as at the start of a text. Tokenising
    # " " + answer alone (the old way) counts one bare "▁" too many.
    assert list(where.counts) == [len(m.tokenizer(q.ground_truth, add_special_tokens=False)["input_ids"])
                                  for q in gens]
    assert list(where.counts) != [len(m.tokenizer(" " + q.ground_truth, add_special_tokens=False)["input_ids"])
                                  for q in gens]
    assert samples[0].text.endswith(gens[0].ground_truth) and "ASSISTANT:" in samples[0].text

    base = FitConfig(layers=(2,), forget_ratio=10, rank_policy=FixedRatio(0.5), people=None)
    plain = fit_eraser(m, bench_dir, base, contrast=contrast())
    with_answers = fit_eraser(m, bench_dir, FitConfig(**{**base.__dict__, "answer_weight": 0.5}), contrast=contrast())
    n_answers = sum(where.counts)
    retain_people = list(bench.retain(10)) + list(bench.real())
    n_retain_answers = sum(answer_samples(m, retain_people, "retain")[1].counts)
    assert with_answers.report["n_forget"] == pytest.approx(plain.report["n_forget"] + 0.5 * n_answers)
    assert with_answers.report["n_retain"] == plain.report["n_retain"] + n_retain_answers
    assert plain.eraser.positions == "prompt" and with_answers.eraser.positions == "all"
    assert not torch.allclose(plain.eraser.layer_map(2).gates, with_answers.eraser.layer_map(2).gates)
    with pytest.raises(ValueError, match="answer_weight must be >= 0"):
        fit_eraser(m, bench_dir, FitConfig(**{**base.__dict__, "answer_weight": -1.0}), contrast=contrast())


def test_a_calibration_budget_draws_whole_validation_people_by_seed(tiny_models, bench_dir):
    """The gate's threshold reads the validation questions of the people the budget draws (whole people in a seeded
    order, the last one cut), the same for the same seed and others for another; never a fit or evaluation person;
    no budget reads every validation question, as before; too large a budget is refused with one line."""
    from dataclasses import replace

    from toolkit.data.splits import PeopleSplit
    from toolkit.data.samples import calibration_samples

    m = tiny_models("llava")
    bench = MLLMUBench(bench_dir)
    split = PeopleSplit(seed=1, fit=0.4, validation=0.4)
    base = FitConfig(layers=(1,), rank_policy=FixedRatio(0.5), people=split, gate="prototype", gate_reads="last")
    everything, who = calibration_samples(bench, base)
    validation = split.people(bench.retain(base.forget_ratio), "validation") + split.people(bench.real(), "validation")
    per_person = {p.id: len(question_samples([p], "r")) for p in validation}
    assert len(everything) == sum(per_person.values()) and set(who) == set(per_person)
    budget = len(everything) // 3
    samples, people = calibration_samples(bench, replace(base, calibration_budget=budget))
    again = calibration_samples(bench, replace(base, calibration_budget=budget))
    other = calibration_samples(bench, replace(base, calibration_budget=budget, budget_seed=5))
    assert len(samples) == budget and [s.text for s in again[0]] == [s.text for s in samples]
    assert {split.role(p) for p in people} == {"validation"} and set(people) != set(other[1])
    drawn = list(dict.fromkeys(people))  # whole people but the last one of each group (fictitious, real)
    counts = {p: people.count(p) for p in drawn}
    assert sum(counts[p] < per_person[p] for p in drawn) <= 2
    # The samples are each person's own questions, a prefix of them in the evaluation's order.
    for p in drawn:
        own = [s.text for s in question_samples([x for x in validation if x.id == p], "r")][:counts[p]]
        assert [s.text for s, q in zip(samples, people) if q == p] == own
    cut = fit_eraser(m, bench, replace(base, calibration_budget=budget), contrast=contrast())
    # the fit keeps one row per calibration question (captured in its own order: shared prefixes group them)
    assert sorted(cut.fitter.calibration_people) == sorted(people)
    with pytest.raises(ValueError, match=rf"calibration_budget={len(everything) + 1} is more than"):
        calibration_samples(bench, replace(base, calibration_budget=len(everything) + 1))


def test_a_retain_budget_is_reproducible_and_reads_what_it_says(tiny_models, bench_dir):
    """Same budget and seed: the same people, questions and eraser; another seed: other people; the budget
    counts questions exactly; a budget larger than the data is refused with one line."""
    from toolkit.data.splits import PeopleSplit
    from toolkit.data.samples import budget_people, fit_groups, fit_people

    m = tiny_models("llava")
    bench = MLLMUBench(bench_dir)
    base = FitConfig(layers=(1,), rank_policy=FixedRatio(0.5), people=PeopleSplit(seed=1, fit=0.6), gate="prototype",
                     gate_reads="last+image-max")
    everyone = fit_people(bench, base)
    fictitious, real = fit_groups(bench, base)
    assert fictitious and real and fictitious + real == everyone
    total = len(question_samples(everyone, "r"))
    budget = total // 3
    people, take = budget_people([fictitious, real], budget, seed=0)
    assert sum(take.values()) == budget and len(people) < len(everyone)
    # The budget is shared between the groups in proportion to their questions (to within one question).
    n_real = sum(take[p.id] for p in people if p in real)
    assert abs(n_real - budget * len(question_samples(real, "r")) / total) <= 1
    # Whole people, in hash order, but the last one of each group.
    for group in (fictitious, real):
        drawn = [p for p in people if p in group]
        assert all(take[p.id] == len(question_samples([p], "r")) for p in drawn[:-1])
    assert [p.id for p in budget_people([fictitious, real], budget, seed=1)[0]] != [p.id for p in people]
    a = fit_eraser(m, bench, FitConfig(**{**base.__dict__, "retain_budget": budget}), contrast=contrast())
    b = fit_eraser(m, bench, FitConfig(**{**base.__dict__, "retain_budget": budget}), contrast=contrast())
    assert a.report["n_retain"] == budget and a.report["retain_read"] == [p.id for p in people]
    la, lb = a.eraser.layer_map(1), b.eraser.layer_map(1)
    torch.testing.assert_close(la.directions, lb.directions, rtol=0, atol=0)
    torch.testing.assert_close(a.fitter.retain[1].gram, b.fitter.retain[1].gram, rtol=0, atol=0)
    assert a.eraser.layer_map(1).gates.threshold == b.eraser.layer_map(1).gates.threshold
    full = fit_eraser(m, bench, base, contrast=contrast())
    assert full.report["n_retain"] == total
    assert not torch.equal(full.fitter.retain[1].gram, a.fitter.retain[1].gram)
    with pytest.raises(ValueError, match=rf"retain_budget={total + 1} is more than the {total} retain questions"):
        fit_eraser(m, bench, FitConfig(**{**base.__dict__, "retain_budget": total + 1}), contrast=contrast())
    with pytest.raises(ValueError, match="positive number of questions"):
        budget_people(everyone, 0)
