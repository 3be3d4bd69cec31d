"""Honest people splits: who enters the fit, who chooses, who is reported; the rehearsal and its rule;
the gate dead zone; direction stability."""

import io
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import given_contrast, published_only_copy, random_image
from probes.direction_stability import half_split_cosines
from toolkit.data import synthetic
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import ROLES, PeopleSplit
from toolkit.eraser import Eraser, EraserLayer, dead_zone
from toolkit.config import FitConfig
from toolkit.benchmark_fit import fit_eraser, refit_forget
from toolkit.nullspace import FixedRatio
from toolkit.selection import choose, fact_rate

SMALL = synthetic.SyntheticConfig(seed=5, num_fictitious=30, num_real=6, num_unknown=4)
SPLIT = PeopleSplit(seed=1, fit=0.4, validation=0.3)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), SMALL)


def config(**kw):
    kw.setdefault("people", SPLIT)
    return FitConfig(layers=(1, 2), rank_policy=FixedRatio(0.5), answer_weight=0.3, retain_weight=5.0, **kw)


def test_roles_are_disjoint_stable_and_seeded(bench_dir):
    bench = MLLMUBench(bench_dir)
    everyone = bench.split("Full_Set") + bench.real()
    roles = {p.id: SPLIT.role(p.id) for p in everyone}
    assert set(roles.values()) == set(ROLES)
    for role in ROLES:  # the people of each role partition everyone
        assert {p.id for p in SPLIT.people(everyone, role)} == {i for i, r in roles.items() if r == role}
    # A person keeps their role whatever the forget list (forget_5/10/15 are nested).
    for ratio in (5, 10, 15):
        assert all(SPLIT.role(p.id) == roles[p.id] for p in bench.retain(ratio))
    other = PeopleSplit(seed=2, fit=0.4, validation=0.3)
    assert any(other.role(i) != r for i, r in roles.items())
    with pytest.raises(ValueError, match="an evaluation share must remain"):
        PeopleSplit(fit=0.7, validation=0.3)


def test_only_fit_people_enter_the_fit(tiny_models, bench_dir):
    m = tiny_models("llava")
    bench = MLLMUBench(bench_dir)
    res = fit_eraser(m, bench, config(), contrast=given_contrast())
    expected = SPLIT.people(bench.retain(10), "fit") + SPLIT.people(bench.real(), "fit")
    assert res.report["fit_people"] == [p.id for p in expected]
    assert all(SPLIT.role(i) == "fit" for i in res.report["fit_people"])
    reference = fit_eraser(m, bench, config(people=None), contrast=given_contrast())
    assert len(reference.report["fit_people"]) == len(bench.retain(10)) + len(bench.real())


def _noise_png(seed: int) -> bytes:
    buf = io.BytesIO()
    random_image(1000 + seed).save(buf, format="PNG")
    return buf.getvalue()


def _replace_images(root, keep) -> int:
    """Every row of every split whose person is not kept gets noise images; returns rows changed."""
    changed = 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for f in folder.glob("*.parquet"):
            df = pd.read_parquet(f)
            if "ID" not in df.columns:
                continue
            for i, pid in enumerate(df.ID):
                if keep(str(pid)):
                    continue
                for col in ("image", "images"):
                    if col in df.columns and df.at[i, col] is not None:
                        cell = df.at[i, col]
                        if isinstance(cell, dict):
                            df.at[i, col] = {**cell, "bytes": _noise_png(i)}
                        else:
                            df.at[i, col] = [{**c, "bytes": _noise_png(i + j)} for j, c in enumerate(cell)]
                        changed += 1
            df.to_parquet(f)
    return changed


def test_evaluation_people_never_reach_the_fit(tiny_models, bench_dir, tmp_path):
    """Noise in place of every validation and evaluation person's images leaves the factors bit-identical;
    noise on one fit person changes them (so the check can fail)."""
    m = tiny_models("llava")
    base = fit_eraser(m, bench_dir, config(), contrast=given_contrast()).eraser
    noisy = tmp_path / "noisy"
    shutil.copytree(bench_dir, noisy)
    forget = {p.id for p in MLLMUBench(bench_dir).forget(10)}
    assert _replace_images(noisy, lambda pid: pid in forget or SPLIT.role(pid) == "fit") > 0
    again = fit_eraser(m, noisy, config(), contrast=given_contrast()).eraser
    for a, b in zip(base.maps, again.maps):
        assert torch.equal(a.gates, b.gates) and torch.equal(a.directions, b.directions)
    control = tmp_path / "control"
    shutil.copytree(bench_dir, control)
    victim = fit_eraser(m, bench_dir, config(), contrast=given_contrast()).report["fit_people"][0]
    _replace_images(control, lambda pid: pid != victim)
    changed = fit_eraser(m, control, config(), contrast=given_contrast()).eraser
    assert not torch.equal(base.maps[0].gates, changed.maps[0].gates)


def test_rehearsal_uses_validation_people_and_reuses_the_fit(tiny_models, bench_dir):
    m = tiny_models("llava")
    bench = MLLMUBench(bench_dir)
    cfg = config()
    res = fit_eraser(m, bench, cfg, contrast=given_contrast())
    stand, val_retain = SPLIT.rehearsal(bench.retain(10), len(bench.forget(10)))
    assert stand and val_retain and len(stand) <= len(val_retain) + 1
    assert all(SPLIT.role(p.id) == "validation" for p in stand + val_retain)
    assert not {p.id for p in stand} & {p.id for p in val_retain}
    # Refitting with the original forget people reproduces the eraser exactly (same statistics, same solve).
    same = refit_forget(m, res, bench.forget(10), cfg)
    for a, b in zip(res.eraser.maps, same.maps):
        assert torch.equal(a.gates, b.gates)
    other = refit_forget(m, res, stand, cfg)
    assert not torch.equal(res.eraser.maps[0].gates, other.maps[0].gates)
    torch.testing.assert_close(other.maps[0].directions, res.eraser.maps[0].directions)
    fit_person = [p for p in bench.retain(10) if SPLIT.role(p.id) == "fit"][:1]
    with pytest.raises(ValueError, match="in the fit's retain set"):
        refit_forget(m, res, fit_person, cfg)


def test_selection_rule():
    grid = pd.DataFrame([
        {"layer": -1, "lam": 0.0, "threshold": 0.0, "stand-ins": 1.0, "recall": 1.0},
        {"layer": 5, "lam": 4.0, "threshold": 0.0, "stand-ins": 0.04, "recall": 0.6},
        {"layer": 6, "lam": 8.0, "threshold": 0.2, "stand-ins": 0.05, "recall": 0.8},
        {"layer": 7, "lam": 2.0, "threshold": 0.0, "stand-ins": 0.30, "recall": 0.99},
        {"layer": 7, "lam": 6.0, "threshold": 0.0, "stand-ins": 0.0, "recall": 0.5},
    ])
    best, rule = choose(grid, 0.05)
    assert (best.layer, best.lam, best.threshold) == (6, 8.0, 0.2) and "highest validation recall" in rule
    best, rule = choose(grid[grid.layer != 7], 0.01)  # nothing reaches 1%: the best recall - leakage
    assert (best.layer, best.lam) == (6, 8.0) and "no fluent setting reached" in rule  # 0.8 - 0.05 > 0.6 - 0.04
    # Degenerate answers do not count as forgetting: the looping setting is passed over.
    grid["stand_in_repetition"] = [0.0, 0.05, 0.9, 0.0, 0.1]
    best, rule = choose(grid, 0.05)
    assert (best.layer, best.lam) == (5, 4.0) and "repetition <= 25%" in rule


def test_fact_rate_falls_back_to_rouge_without_answer_keys():
    df = pd.DataFrame({"leaked": [1.0, 0.0, np.nan, np.nan], "rougeL": [0.1, 0.9, 0.6, 0.2]})
    assert fact_rate(df) == pytest.approx((1 + 0 + 1 + 0) / 4)


def test_dead_zone_gate():
    torch.manual_seed(0)
    w, d = torch.randn(8, 1), torch.randn(1, 8)
    layer = EraserLayer(3, w, d)
    h = torch.randn(5, 8)
    g = h @ w
    expected = 2.0 * torch.clamp(g - 0.3, min=0) / 0.7 @ d
    torch.testing.assert_close(layer.shift(h, 2.0, 0.3), expected)
    torch.testing.assert_close(layer.shift(h, 2.0, 0.0), 2.0 * g @ d)
    assert torch.equal(dead_zone(g, 0.0), g)
    e = Eraser((layer,), lam=2.0, threshold=0.3)
    torch.testing.assert_close(e(3, h), h + expected)
    with pytest.raises(ValueError, match="threshold must be a number in"):
        Eraser((layer,), threshold=1.0)
    with pytest.raises(ValueError, match="different gate thresholds"):
        Eraser.compose(e, e.with_options(threshold=0.1))


def test_threshold_survives_save_and_load(tmp_path):
    layer = EraserLayer(0, torch.randn(4, 1), torch.randn(1, 4))
    e = Eraser((layer,), lam=3.0, threshold=0.2)
    assert Eraser.load(e.save(tmp_path / "e.safetensors")).threshold == 0.2


def test_half_split_cosines_against_direct_computation():
    torch.manual_seed(0)
    signal = torch.randn(16)
    plus, minus = signal + 0.5 * torch.randn(200, 16), 0.5 * torch.randn(200, 16)
    out = half_split_cosines(plus, minus, resamples=3)
    a = plus[0::2].double().mean(0) - minus[0::2].double().mean(0)
    b = plus[1::2].double().mean(0) - minus[1::2].double().mean(0)
    assert out["even_odd"] == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, 0)))
    few = half_split_cosines(plus[:6], minus[:6], resamples=3)
    assert out["resampled_mean"] > few["resampled_mean"]  # more pairs, a steadier direction
    assert half_split_cosines(plus, plus + 1.0)["even_odd"] == pytest.approx(1.0)


@pytest.mark.slow  # 28 s; probe_report on two layers (tests/test_probes.py) and `fit --select` on this split stay
def test_probe_cli_runs_on_published_columns_only(bench_dir, tmp_path, capsys):
    """`mllmeraser probe --layers 6,7` on a benchmark with only the published layout: validation comes from
    validation people (the rehearsal), not from the synthetic benchmark's names or paraphrases."""
    from experiments.cli import main

    bench = published_only_copy(bench_dir, tmp_path / "published")
    assert not (bench / "Paraphrase_Set").exists()
    rc = main(["probe", "--bench", str(bench), "--layers", "6,7", "--n-contrast", "6", "--pgd-steps", "0",
               "--out", str(tmp_path / "probe")])
    assert rc == 0, capsys.readouterr().err
    stability = pd.read_csv(tmp_path / "probe" / "stability.csv")
    assert list(stability.layer) == [6, 7] and stability.even_odd.between(-1, 1).all()
    groups = pd.read_csv(tmp_path / "probe" / "gate_groups.csv")
    assert "retain (validation, never in the fit)" in set(groups.group)


def test_cli_fit_select_then_evaluate_reports_held_out_people(bench_dir, tmp_path, capsys):
    """`mllmeraser fit --select` chooses on the rehearsal and saves the split with the eraser; `evaluate`
    then reports that split's evaluation people as Retain / Real and fit people beside them."""
    from experiments.cli import main

    out = tmp_path / "e.safetensors"
    rc = main(["fit", "--bench", str(bench_dir), "--layers", "6,7", "--select", "--lams", "8", "--thresholds",
               "0,0.2", "--rank", "ratio:0.9", "--retain-weight", "10", "--n-contrast", "6", "--pgd-steps", "0",
               "--people-seed", "1", "--fit-share", "0.4", "--validation-share", "0.3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    eraser = Eraser.load(out)
    grid = pd.read_csv(out.with_suffix(".selection.csv"))
    chosen = grid[(grid.layer == eraser.layers[0]) & (grid.lam == eraser.lam) & (grid.threshold == eraser.threshold)
                  & (grid.positions == eraser.positions)]
    assert len(eraser.layers) == 1 and len(chosen) == 1
    assert eraser.settings["people"] == {"seed": 1, "fit": 0.4, "validation": 0.3}
    rc = main(["evaluate", "--bench", str(bench_dir), "--eraser", str(out), "--in-fit-people", "3",
               "--out", str(tmp_path / "ev")])
    assert rc == 0, capsys.readouterr().err
    results = pd.read_csv(tmp_path / "ev" / "results.csv", dtype={"person": str})
    bench = MLLMUBench(bench_dir)
    retain = set(results[results.split == "Retain"].person)
    assert retain == {p.id for p in SPLIT.people(bench.retain(10), "evaluation")}
    assert set(results[results.split == "Retain (in fit)"].person) <= {p.id for p in SPLIT.people(bench.retain(10), "fit")}


def test_reward_rule_takes_the_highest_asru_reward():
    grid = pd.DataFrame([
        {"layer": -1, "lam": 0.0, "threshold": 0.0, "stand-ins": 1.0, "recall": 1.0, "reward": 0.5},
        {"layer": 5, "lam": 4.0, "threshold": 0.0, "stand-ins": 0.04, "recall": 0.6, "reward": 0.7},
        {"layer": 6, "lam": 8.0, "threshold": 0.2, "stand-ins": 0.2, "recall": 0.9, "reward": 0.8},
    ])
    best, rule = choose(grid, 0.05, rule="reward")
    assert (best.layer, best.lam) == (6, 8.0) and "ASRU reward" in rule
    with pytest.raises(ValueError, match="rule must be"):
        choose(grid, 0.05, rule="vibes")


def test_boundary_items_are_held_out_phrasings_of_evaluation_people(bench_dir):
    from toolkit.evaluate import benchmark_items

    bench = MLLMUBench(bench_dir)
    items = benchmark_items(bench, 10, people=SPLIT)
    boundary = [it for it in items if it.split == "Boundary"]
    assert boundary
    evaluation = {p.id for p in SPLIT.people(bench.retain(10), "evaluation")}
    shared = {q.answer_key for p in bench.forget(10) for q in p.generation}
    benchmark_phrasings = {q.question for p in bench.retain(10) for q in p.generation}
    assert all(it.person in evaluation and it.answer_key in shared for it in boundary)
    assert not {it.question for it in boundary} & benchmark_phrasings  # held-out phrasings
    assert not [it for it in benchmark_items(bench, 10) if it.split == "Boundary"]  # only with a split


def test_match_leakage_takes_the_weakest_setting_that_reaches_the_target():
    from toolkit.selection import match_leakage

    leak = {1: 0.5, 2: 0.2, 4: 0.1, 8: 0.0}
    asked = []

    def measure(x):
        asked.append(x)
        return leak[x]

    assert match_leakage([1, 2, 4, 8], measure, 0.2) == (2, {1: 0.5, 2: 0.2})
    assert asked == [1, 2]  # measuring stops at the first that reaches the target
    # Nothing reaches it: the lowest leakage, the weaker on ties.
    assert match_leakage([1, 2, 3], {1: 0.4, 2: 0.3, 3: 0.3}.get, 0.1)[0] == 2
