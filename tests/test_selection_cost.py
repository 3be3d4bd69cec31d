"""The cheaper choice: a candidate generates only the rows its gate touches at prefill.

``tracing.steered_rows`` against a direct comparison of steered and unsteered logits; the rows it calls
unsteered generate the vanilla tokens; ``run_items(..., unsteered=)`` equals full generation; and the
rehearsal's grid and choice are the ones full generation gives, with fewer generated rows.
"""

import pandas as pd
import pytest
import torch

from conftest import given_contrast
from test_splits import SMALL, config
from toolkit import tracing
from toolkit.benchmark_fit import fit_eraser
from toolkit.config import SelectConfig
from toolkit.data import synthetic
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.evaluate import run_items
from toolkit.models.loading import Sample
from toolkit.selection import rehearsal_items, select_setting
from toolkit.steering import Steer


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), SMALL)


def _items(bench):
    return (items_from_profiles(bench.forget(10), "Forget", ("generation",))[:16]
            + items_from_profiles(bench.retain(10)[:3], "Retain", ("generation",)))


@pytest.mark.parametrize("family,latch", [("llava", False), ("qwen2_5_vl", True)])
def test_steered_rows_are_the_rows_whose_logits_move_and_the_rest_generate_vanilla(tiny_models, bench_dir, family,
                                                                                   latch):
    m = tiny_models(family)
    bench = MLLMUBench(bench_dir)
    fit = fit_eraser(m, bench_dir, config(gate="prototype", gate_reads="last+mean", gate_fpr=0.2),
                     contrast=given_contrast())
    eraser = fit.eraser.with_options(layers=[2], lam=6.0, positions="prompt", latch=latch)
    items = _items(bench)
    samples = [Sample(it.prompt, it.image) for it in items]
    steered = tracing.steered_rows(m, samples, steers=eraser, batch_size=5)
    assert steered is not None and 0 < sum(steered) < len(steered), "the test needs steered and unsteered rows"
    # Direct: a row is steered iff its next-token logits move (a non-zero shift of the stream moves them).
    plain = tracing.forward(m, samples, batch_size=5)
    moved = tracing.forward(m, samples, steers=eraser, batch_size=5)
    assert steered == [not torch.equal(a, b) for a, b in zip(plain, moved)]
    # The unsteered rows generate the vanilla tokens, the whole continuation long.
    ids = tracing.generate(m, samples, steers=eraser, max_new_tokens=8, batch_size=5, return_ids=True)
    base = tracing.generate(m, samples, max_new_tokens=8, batch_size=5, return_ids=True)
    assert all(torch.equal(a, b) for a, b, s in zip(ids, base, steered) if not s)
    # run_items with the vanilla rows equals full generation, row for row.
    vanilla = run_items(m, items, batch_size=5)
    full = run_items(m, items, steers=eraser, batch_size=5)
    cheap = run_items(m, items, steers=eraser, batch_size=5, unsteered=vanilla)
    pd.testing.assert_frame_equal(cheap[full.columns], full)
    assert cheap.generated.tolist() == steered
    with pytest.raises(ValueError, match="same items"):
        run_items(m, items[::-1], steers=eraser, unsteered=vanilla)


def test_steers_that_act_while_decoding_are_not_decided_at_prefill(tiny_models):
    m = tiny_models("llava")
    d = m.hidden_size
    w = torch.zeros(1, d)
    samples = [Sample("Who is this?")]
    every_token = Steer(1, lambda x: x @ w.T @ w, positions="all")
    latched_last = Steer(1, lambda x: x * 0, latch=True, weights=lambda x: x[:, :1] * 0,
                         from_weights=lambda wt, h: h * 0)
    assert tracing.steered_rows(m, samples, steers=every_token) is None
    assert tracing.steered_rows(m, samples, steers=latched_last) is None
    assert tracing.steered_rows(m, samples, steers=None) == [False]
    assert tracing.steered_rows(m, samples, steers=Steer(1, lambda x: x * 0, positions="prompt")) == [False]


def test_the_rehearsal_chooses_as_full_generation_does_and_generates_fewer_rows(tiny_models, bench_dir,
                                                                                monkeypatch):
    m = tiny_models("qwen2_5_vl")
    cfg = config(gate="prototype", gate_reads="last+mean", gate_rows=True)
    fit = fit_eraser(m, bench_dir, cfg, contrast=given_contrast())
    select = SelectConfig(layers=(2,), lams=(2.0, 8.0), gates=("prototype",), gate_fprs=(0.1,),
                          gate_reads=("last+mean",), positions=(None, "last"), latch=(False, True))
    generated = {"n": 0}
    real = tracing.generate

    def counting(model, samples, **kw):
        generated["n"] += len(samples)
        return real(model, samples, **kw)

    monkeypatch.setattr(tracing, "generate", counting)
    results = {}
    for generate_all in (True, False):
        generated["n"] = 0
        eraser, sel = select_setting(m, fit, MLLMUBench(bench_dir), cfg, select, generate_all=generate_all)
        results[generate_all] = (eraser, sel, generated["n"])
    (e_full, s_full, n_full), (e_cheap, s_cheap, n_cheap) = results[True], results[False]
    shares = [c for c in s_cheap.grid if c.startswith("generated ")]
    assert shares and not any(c.startswith("generated ") for c in s_full.grid)
    pd.testing.assert_frame_equal(s_cheap.grid.drop(columns=shares + ["prefill pass"]), s_full.grid)
    # one prefill pass per gate (here one rehearsal gate at one layer), shared by its lambdas, modes and latches
    assert s_cheap.grid["prefill pass"].iloc[1:].sum() == 1
    assert (s_cheap.layer, s_cheap.lam, s_cheap.positions, s_cheap.latch, s_cheap.gate_reads) == \
        (s_full.layer, s_full.lam, s_full.positions, s_full.latch, s_full.gate_reads)
    candidates = len(s_full.grid) - 1
    assert candidates >= 2 and n_cheap < n_full
    # what the cheaper choice generated is what the grid records: the vanilla row whole, then each candidate's share
    sizes = {name: len(v) for name, v in
             rehearsal_items(MLLMUBench(bench_dir), cfg.forget_ratio, cfg.people, select.wrap)[0].items()}
    recorded = sum(round(s_cheap.grid[f"generated {k}"].iloc[1:] * n).sum() for k, n in sizes.items() if n)
    assert n_cheap == sum(sizes.values()) + recorded
