"""The streaming fitter: from activations or any sample lists, equal to the benchmark fit and the closed form."""

import pytest
import torch

from conftest import random_image
from toolkit.contrastive import ContrastiveSets
from toolkit.data import synthetic
from toolkit.data.mllmu import MLLMUBench
from toolkit.eraser import solve_map
from toolkit.data.samples import fit_people, question_samples
from toolkit.config import FitConfig
from toolkit.benchmark_fit import answer_samples, fit_eraser
from toolkit.fitter import EraserFitter
from toolkit.pipeline import SampleSet, add_samples, fit_from_samples
from toolkit.models.loading import Sample
from toolkit.nullspace import FixedRatio, SecondMoment, null_space


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    cfg = synthetic.SyntheticConfig(seed=3, num_fictitious=20, num_real=4, num_unknown=4)
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), cfg)


def contrast():
    plus = [Sample(f"do not reveal who this is {i}", random_image(i)) for i in range(6)]
    minus = [Sample(f"who is this {i}", random_image(i)) for i in range(6)]
    return ContrastiveSets(plus, minus, info={"recipe": "given"})


@pytest.mark.parametrize("answer_weight", [0.0, 0.5])
def test_fit_from_sample_lists_equals_the_benchmark_fit_bit_for_bit(tiny_models, bench_dir, answer_weight):
    model = tiny_models("llava")
    cfg = FitConfig(layers=(1, 2), rank_policy=FixedRatio(0.5), retain_weight=3.0, answer_weight=answer_weight,
                    lam=2.0)
    via_bench = fit_eraser(model, bench_dir, cfg, contrast=contrast()).eraser
    # The same material as a user would hand it over: plain lists, no benchmark object.
    bench = MLLMUBench(bench_dir)
    retain_people = fit_people(bench, cfg)  # the fit people of cfg.people (the default split)
    assert 0 < len(retain_people) < len(bench.retain(10)) + len(bench.real())
    retain = [SampleSet(question_samples(retain_people, "retain"))]
    forget = [SampleSet(question_samples(bench.forget(10), "forget"))]
    if answer_weight:
        samples, where = answer_samples(model, retain_people, "retain")
        retain.append(SampleSet(samples, where, formatted=True))
        samples, where = answer_samples(model, bench.forget(10), "forget")
        forget.append(SampleSet(samples, where, answer_weight, formatted=True))
    plus, minus = contrast().for_variant("multimodal")
    list_cfg = FitConfig(layers=(1, 2), rank_policy=FixedRatio(0.5), gamma=0.1, retain_weight=3.0, lam=2.0,
                         positions=via_bench.positions)
    via_lists, _ = fit_from_samples(model, list_cfg, forget=forget, retain=retain, contrast=(plus, minus))
    for a, b in zip(via_bench.maps, via_lists.maps):
        assert a.layer == b.layer
        assert torch.equal(a.gates, b.gates) and torch.equal(a.directions, b.directions)
    assert via_lists.lam == via_bench.lam and via_lists.positions == via_bench.positions


def test_fitter_from_activations_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 12
    retain = torch.randn(200, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.05, d, dtype=torch.float64)
    forget = torch.randn(40, d, generator=g, dtype=torch.float64) + 1.0
    plus, minus = torch.randn(10, d, generator=g) + 2, torch.randn(10, d, generator=g)
    fitter = EraserFitter(d, [5])
    for chunk in retain.split(37):  # streamed in uneven chunks, on any device/dtype
        fitter.update_retain({5: chunk.float()})
    fitter.update_forget(forget.float()).update_contrast(refusal={5: plus}, recall={5: minus})
    eraser = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.5), gamma=0.2, lam=1.5))
    # Direct: the same quantities from the stacked rows (float32 rows, as the fitter saw them).
    space = null_space(SecondMoment(d).update(retain.float()), FixedRatio(0.5))
    f32 = forget.float().double()
    w = solve_map(f32.T @ f32, f32.sum(0), space, 0.2)
    torch.testing.assert_close(eraser.maps[0].gates, w.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(eraser.maps[0].directions[0], (plus.double().mean(0) - minus.double().mean(0)).float())
    assert eraser.lam == 1.5 and eraser.layers == (5,)
    # One eigendecomposition per layer, shared by every later call.
    assert fitter.null_space(5, FixedRatio(0.5)).basis is not None
    first = fitter.retain[5].eigh()
    assert fitter.retain[5].eigh() is first


def test_fitter_refuses_incomplete_statistics():
    fitter = EraserFitter(8, [0])
    with pytest.raises(ValueError, match="No direction yet"):
        fitter.eraser(FitConfig(rank_policy=FixedRatio(0.5), gamma=0.1))
    fitter.update_contrast(refusal=torch.randn(3, 8), recall=torch.randn(3, 8))
    fitter.update_retain(torch.randn(20, 8))
    with pytest.raises(ValueError, match="No forget rows at layer 0"):
        fitter.eraser(FitConfig(rank_policy=FixedRatio(0.5), gamma=0.1))
    with pytest.raises(ValueError, match=r"Activations for layers \[0\] are missing"):
        fitter.update_forget({1: torch.randn(2, 8)})
    with pytest.raises(ValueError, match="kind must be one of"):
        add_samples(fitter, None, "other", [Sample("x")])
    # The fitter is maths: it takes tensors, and says where capture went.
    with pytest.raises(TypeError, match="takes tensors only"):
        fitter.add_samples(None, "retain", [Sample("x")])
    with pytest.raises(TypeError, match="takes a FitConfig"):
        fitter.eraser(FixedRatio(0.5))
