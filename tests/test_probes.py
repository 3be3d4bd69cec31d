"""Probes on synthetic activations where the answer is known."""

import math

import pandas as pd
import pytest
import torch

from conftest import random_image
from probes import nullspace_rank, separability, steering_effects
from toolkit import tracing
from toolkit.models.loading import Sample, load_model
from toolkit.nullspace import RelativeTolerance


def gaussians(delta, n=4000, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    a[:, 0] += delta
    return a, b


def test_separability_of_two_gaussians():
    a, b = gaussians(2.0)
    e0 = torch.zeros(8, dtype=torch.float64)
    e0[0] = 1
    s = separability.separability(a, b, e0)
    phi = 0.5 * (1 + math.erf(2.0 / math.sqrt(2) / math.sqrt(2)))  # AUROC = Phi(delta / sqrt(2))
    assert s["auroc"] == pytest.approx(phi, abs=0.01)
    assert s["fisher_ratio"] == pytest.approx(2.0, rel=0.06)  # delta^2 / (1 + 1)
    assert s["projection_accuracy"] == pytest.approx(0.5 * (1 + math.erf(1.0 / math.sqrt(2))), abs=0.015)
    assert s["probe_accuracy"] > 0.8
    same = separability.separability(*gaussians(0.0), e0)
    assert same["auroc"] == pytest.approx(0.5, abs=0.02) and same["fisher_ratio"] < 0.01


def test_layer_table_and_cosines():
    a0, b0 = gaussians(3.0, n=200)
    t = separability.layer_separability({0: a0, 1: a0}, {0: b0, 1: a0.flip(0)})
    assert list(t.layer) == [0, 1]
    assert t.auroc[0] > 0.95 and t.auroc[1] == pytest.approx(0.5, abs=1e-9)
    cos = separability.direction_cosines({0: torch.tensor([1.0, 0.0]), 1: torch.tensor([1.0, 1.0]),
                                          2: torch.tensor([0.0, -2.0])})
    assert cos.loc[0, 1] == pytest.approx(2 ** -0.5) and cos.loc[0, 2] == pytest.approx(0.0)
    assert cos.loc[1, 2] == pytest.approx(-(2 ** -0.5))


def test_rank_of_known_retain_set():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    retain = torch.randn(300, 6, generator=g, dtype=torch.float64) @ basis[:, :6].T
    forget = torch.randn(50, 16, generator=g, dtype=torch.float64) @ basis.T
    table = nullspace_rank.rank_table({3: retain}, {3: forget}, policies=(RelativeTolerance(1e-9),))
    assert int(table.k.iloc[0]) == 10
    assert table.retain_energy_leaked.iloc[0] < 1e-12
    # Isotropic forget rows put about k/d of their energy in the null space.
    assert table.forget_share_in_null.iloc[0] == pytest.approx(10 / 16, abs=0.08)
    spec = nullspace_rank.spectrum({3: retain})
    assert (spec.energy_share.iloc[:10] < 1e-12).all()


def test_gate_values_separate_forget_from_retain():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0]
    retain = torch.randn(400, 8, generator=g, dtype=torch.float64) @ basis[:, :8].T
    forget = torch.randn(60, 16, generator=g, dtype=torch.float64) @ basis.T + 3 * basis[:, 12]
    gates = nullspace_rank.gate_values(retain, forget, RelativeTolerance(1e-9), gamma=0.1)
    ov = nullspace_rank.gate_overlap(gates)
    assert ov["retain_gate_rms"] < 1e-6 and ov["forget_gate_mean"] > 0.8 and ov["retain_above"] == 0.0


def test_steering_a_layer_shows_at_that_layer_only(tiny_models):
    m = tiny_models("llava")
    samples = [Sample("what is this image", random_image(0)), Sample("who is it", random_image(1))]
    v = torch.randn(m.hidden_size)
    steer = tracing.Steer(1, lambda h: v.expand_as(h), "prompt")
    plain = tracing.capture(m, samples, [0, 1, 2], "prompt")
    steered = tracing.capture(m, samples, [0, 1, 2], "prompt", steers=[steer])
    torch.testing.assert_close(steered[0], plain[0], rtol=0, atol=0)  # before: untouched
    torch.testing.assert_close(steered[1] - plain[1], v.expand_as(plain[1]), rtol=1e-5, atol=1e-5)  # exactly v
    assert (steered[2] - plain[2]).abs().max() > 1e-3  # after: propagated
    grid = steering_effects.steering_grid(m, lambda ls, lam: [tracing.Steer(ls[-1], lambda h: lam * v.expand_as(h))],
                                          {"a": samples}, [0, 2], [0.0, 4.0], refusal_ids=[5])
    at_zero = grid[(grid.lam == 0.0) & (grid.layer >= 0)]
    assert (at_zero.kl.abs() < 1e-9).all()
    assert (grid[grid.lam == 4.0].kl > 1e-4).all()


def test_operating_window_and_recommendation():
    rows = []
    for layer, forget_rates, retain_rates in ((0, [0.2, 0.6, 0.9], [0.0, 0.0, 0.0]),
                                              (1, [0.5, 1.0, 1.0], [0.0, 0.0, 0.5]),
                                              (2, [1.0, 1.0, 1.0], [0.0, 0.0, 0.01])):
        for lam, f, r in zip((1.0, 2.0, 3.0), forget_rates, retain_rates):
            rows.append({"layer": layer, "lam": lam, "set": "forget", "refusal_rate": f, "kl": 0.0})
            rows.append({"layer": layer, "lam": lam, "set": "retain", "refusal_rate": r, "kl": lam})
    rows += [{"layer": -1, "lam": 0.0, "set": s, "refusal_rate": 0.0, "kl": 0.0} for s in ("forget", "retain")]
    win = steering_effects.operating_window(pd.DataFrame(rows))
    assert win.set_index("layer").n_ok.to_dict() == {0: 0, 1: 1, 2: 3}
    assert steering_effects.recommend(win) == (2, 2.0)


def _leak_rows(spec):
    rows = []
    for layer, lam, f, r in spec:
        rows.append({"layer": layer, "lam": lam, "set": "forget", "answer_rate": f})
        rows.append({"layer": layer, "lam": lam, "set": "retain", "answer_rate": r})
    return pd.DataFrame(rows)


def test_choose_setting_prefers_least_leakage_within_the_retain_budget():
    grid = _leak_rows([(-1, 0.0, 1.0, 1.0),
                       (3, 2.0, 0.30, 1.00), (3, 4.0, 0.00, 0.90),  # forgets all, but retain drops 10 points
                       (5, 2.0, 0.10, 0.99), (5, 4.0, 0.05, 0.98),
                       (7, 2.0, 0.05, 0.99), (7, 3.0, 0.05, 0.99)])
    # 0.05 at (5, 4), (7, 2), (7, 3): the higher retain rate wins, then the smaller lambda.
    assert steering_effects.choose_setting(grid, retain_max=0.03) == (7, 2.0)
    assert steering_effects.choose_setting(grid, retain_max=0.10) == (3, 4.0)
    with pytest.raises(ValueError, match="No setting keeps retain recall"):
        steering_effects.choose_setting(_leak_rows([(-1, 0.0, 1.0, 1.0), (1, 1.0, 0.0, 0.5)]))


def test_shortlist_layers_ranks_by_forget_refusal_where_retain_holds():
    rows = []
    for layer, f, r in ((0, [0.1, 0.3], [0.0, 0.0]), (1, [0.5, 1.0], [0.0, 0.5]), (2, [0.7, 0.8], [0.0, 0.01]),
                        (3, [0.2, 0.9], [0.0, 0.02])):
        for lam, fr, rr in zip((1.0, 2.0), f, r):
            rows += [{"layer": layer, "lam": lam, "set": "forget", "refusal_rate": fr},
                     {"layer": layer, "lam": lam, "set": "retain", "refusal_rate": rr}]
    rows += [{"layer": -1, "lam": 0.0, "set": s, "refusal_rate": 0.0} for s in ("forget", "retain")]
    # Best admissible rates: layer 3 0.9, layer 2 0.8, layer 1 0.5 (1.0 breaks retain), layer 0 0.3.
    assert steering_effects.shortlist_layers(pd.DataFrame(rows), 2) == [2, 3]
    assert steering_effects.shortlist_layers(pd.DataFrame(rows), 3) == [1, 2, 3]


def test_leakage_grid_matches_direct_generation(tiny_models):
    from toolkit.evaluate import Item, run_items

    m = tiny_models("llava")
    items = [Item("f", "p", "generation", "image", "who is the person", "this is a person", random_image(i), "person")
             for i in range(3)] + [Item("f", "p", "generation", "text", "what is this", "you he", None, "you")]
    d = torch.randn(m.hidden_size, generator=torch.Generator().manual_seed(0))

    def make(layers, lam):
        return [tracing.Steer(layers[0], lambda h, lam=lam: lam * d.expand_as(h), "all")]

    grid = steering_effects.leakage_grid(m, make, {"forget": items}, [1, 2], [0.0, 8.0])
    assert len(grid) == 5 and set(grid.layer) == {-1, 1, 2}
    for layer, lam in ((-1, 0.0), (2, 8.0)):
        direct = run_items(m, items, steers=None if layer < 0 else make([layer], lam))
        row = grid[(grid.layer == layer) & (grid.lam == lam)].iloc[0]
        assert row.answer_rate == pytest.approx(direct.leaked.mean())
        assert row.answer_rate_text == pytest.approx(direct[direct.modality == "text"].leaked.mean())
        assert row.rougeL == pytest.approx(direct.rougeL.mean())
    # lam = 0 adds nothing: identical to unsteered.
    zero = grid[(grid.layer == 1) & (grid.lam == 0.0)].iloc[0]
    assert zero.rougeL == pytest.approx(grid[grid.layer == -1].iloc[0].rougeL)


def test_epsilon_sweep_respects_each_budget(tiny_models):
    from probes.pgd_sweep import epsilon_sweep

    m = tiny_models("llava")
    samples = [Sample("who is this", random_image(0)), Sample("describe it", random_image(1))]
    sweep = epsilon_sweep(m, samples, ["this is a person", "you he please question"], (2 / 255, 16 / 255), steps=6)
    assert sweep.eps_255.tolist() == [2.0, 16.0]
    assert (sweep.linf <= sweep.eps + 1e-6).all() and sweep.linf.iloc[1] > 2 / 255
    # A larger budget reaches a lower target loss from the same start.
    assert sweep.loss_clean.iloc[0] == pytest.approx(sweep.loss_clean.iloc[1])
    assert sweep.loss_adversarial.iloc[1] < sweep.loss_adversarial.iloc[0] < sweep.loss_clean.iloc[0]


def test_probe_report_on_chosen_layers_plots_the_fitted_erasers_gates(tiny_models, tmp_path):
    """`mllmeraser probe --layers 1,2` used to stop with a bare KeyError (it probed every layer but fitted two),
    and its gate plot refitted a map without the eraser's penalty or answer rows."""
    from toolkit.data import synthetic
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.config import FitConfig
    from toolkit.data.samples import question_samples
    from toolkit.nullspace import FixedRatio
    from probes.report import probe_report

    model = load_model("default")
    bench_dir = synthetic.write_benchmark(tmp_path / "b", synthetic.SyntheticConfig(seed=0, num_fictitious=20,
                                                                                   num_real=4, num_unknown=4))
    bench = MLLMUBench(bench_dir)
    cfg = FitConfig(layers=(6, 7), rank_policy=FixedRatio(0.9), retain_weight=10.0, n_contrast=4, pgd=None)
    report = probe_report(model, bench, fit_config=cfg, lams=(1.0, 4.0))
    assert sorted(report.gates.layer.unique()) == [6, 7]
    forget = tracing.capture(model, question_samples(bench.forget(10), "forget"), [7])[7]
    want = report.fit.eraser.layer_map(7).gate(forget)[:, 0]
    got = report.gates[(report.gates.layer == 7) & (report.gates.set == "forget")].gate.to_numpy()
    assert got == pytest.approx(want.numpy(), abs=1e-5)
    with pytest.raises(ValueError, match=r"Layers \[5\] are probed but not fitted"):
        probe_report(model, bench, layers=[5, 6], fit_config=cfg)
