"""Gates as swappable parts: each kind against a direct computation, calibration, the three routes, the
eraser file, composition, the rotate edit, and no evaluation person in the fit or the calibration."""

import shutil

import nnsight
import numpy as np
import pytest
import torch

from conftest import given_contrast, random_image
from test_splits import SPLIT, _replace_images, config
from toolkit import tracing
from toolkit.data import synthetic
from toolkit.data.mllmu import MLLMUBench
from toolkit.eraser import Eraser, EraserLayer
from toolkit.data.samples import calibration_samples
from toolkit.benchmark_fit import eraser_with_gate, fit_eraser
from toolkit.fitter import EraserFitter
from toolkit.gates import (GateStack, LinearGate, LogisticGate, MLPGate, PrototypeGate, auroc, calibrate, fit_logistic,
                           fit_mlp, fit_prototype, gate_from_parts)
from toolkit.models.loading import Sample
from toolkit.config import SelectConfig
from toolkit.selection import select_setting

SMALL = synthetic.SyntheticConfig(seed=5, num_fictitious=30, num_real=6, num_unknown=4)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), SMALL)


def rows(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_logistic_gate_equals_sklearn_and_the_formula():
    from sklearn.linear_model import LogisticRegression

    forget, retain = rows(40, 12, 0.8, 1), rows(200, 12, 0.0, 2)
    gate = fit_logistic(forget, retain, l2=2.0)
    x = rows(30, 12, 0.4, 3)
    # Direct: standardise by the pooled rows, the same regression fitted here, its decision function.
    pooled = torch.cat([forget, retain]).double()
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    clf = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000, tol=1e-6)
    clf.fit(((pooled - mu) / sd).numpy(), [1] * 40 + [0] * 200)
    want = clf.decision_function(((x.double() - mu) / sd).numpy())
    np.testing.assert_allclose(gate.score(x).numpy(), want, rtol=1e-4, atol=1e-4)
    hard = LogisticGate(gate.coef, gate.bias, gate.center, gate.scale, threshold=0.3)
    assert torch.equal(hard(x)[:, 0], (torch.tensor(want) > 0.3).float())
    soft = LogisticGate(gate.coef, gate.bias, gate.center, gate.scale, threshold=0.3, temperature=0.5)
    np.testing.assert_allclose(soft(x)[:, 0].numpy(), 1 / (1 + np.exp(-(want - 0.3) / 0.5)), rtol=1e-4, atol=1e-5)


def test_mlp_gate_equals_its_formula_learns_a_nonlinear_boundary_and_is_repeatable():
    # Forget rows on a shell (|x| large), retain rows near the centre: no linear gate separates them.
    g = torch.Generator().manual_seed(7)
    inner = torch.randn(300, 6, generator=g) * 0.5
    outer = torch.nn.functional.normalize(torch.randn(80, 6, generator=g), dim=-1) * 3.0
    gate = fit_mlp(outer, inner, hidden=16, steps=400, seed=1)
    x = rows(20, 6, 0.3, 8)
    pooled = torch.cat([outer, inner]).double()
    mu, sd = pooled.mean(0).float(), (pooled.std(0) + 1e-6).float()
    want = torch.relu(((x - mu) / sd) @ gate.w1 + gate.b1) @ gate.w2 + gate.b2
    torch.testing.assert_close(gate.score(x), want, rtol=1e-5, atol=1e-5)
    assert auroc(gate.score(outer), gate.score(inner)) > 0.97
    assert auroc(fit_logistic(outer, inner).score(outer), fit_logistic(outer, inner).score(inner)) < 0.8
    again = fit_mlp(outer, inner, hidden=16, steps=400, seed=1)
    assert torch.equal(again.w1, gate.w1) and again.b2 == gate.b2
    back = gate_from_parts(gate.meta(), gate.tensors())
    assert isinstance(back, MLPGate) and torch.equal(back.score(x), gate.score(x))
    with pytest.raises(ValueError, match="mlp gate reads 6 features"):
        gate.score(torch.randn(3, 5))


def test_prototype_gate_equals_a_loop():
    forget, retain, x = rows(15, 10, 1.0, 4), rows(60, 10, 0.0, 5), rows(9, 10, 0.5, 6)
    gate = fit_prototype(forget, retain, max_retain=40, seed=3)
    assert gate.retain.shape == (40, 10)  # subsampled, as documented
    mu, sd = retain.double().mean(0), retain.double().std(0) + 1e-6
    kept = retain[torch.randperm(60, generator=torch.Generator().manual_seed(3))[:40].sort().values]

    def cos(a, b):
        a, b = (a.double() - mu) / sd, (b.double() - mu) / sd
        return float(a @ b / (a.norm() * b.norm()))

    want = [max(cos(r, f) for f in forget) - max(cos(r, k) for k in kept) for r in x]
    np.testing.assert_allclose(gate.score(x).numpy(), want, rtol=1e-4, atol=1e-5)


def test_whitened_prototype_gate_equals_the_formula():
    forget, retain, x = rows(12, 6, 1.0, 14), rows(80, 6, 0.0, 15), rows(7, 6, 0.5, 16)
    gate = fit_prototype(forget, retain, whiten=True, shrinkage=0.1)
    assert gate.kind == "prototype_whitened"
    r = retain.double()
    cov = (r - r.mean(0)).T @ (r - r.mean(0)) / (len(r) - 1)
    eig, vec = torch.linalg.eigh(cov)
    w = vec @ torch.diag((eig + 0.1 * eig.mean()) ** -0.5) @ vec.T
    assert torch.allclose(w @ (cov + 0.1 * eig.mean() * torch.eye(6)) @ w, torch.eye(6, dtype=torch.float64), atol=1e-8)

    def z(a):
        return torch.nn.functional.normalize((a.double() - r.mean(0)) @ w, dim=-1)

    want = (z(x) @ z(forget).T).max(1).values - (z(x) @ z(retain).T).max(1).values
    np.testing.assert_allclose(gate.score(x).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_calibration_hits_its_target_rate_and_auroc_is_the_pair_count():
    forget, retain, outside = rows(30, 8, 1.5, 7), rows(300, 8, 0, 8), rows(400, 8, 0, 9)
    for gate in (fit_logistic(forget, retain), fit_prototype(forget, retain), fit_prototype(forget, retain, whiten=True)):
        for fpr in (0.02, 0.05, 0.2):
            tuned, report = calibrate(gate, outside, fpr)
            fired = float((tuned(outside)[:, 0] > 0.5).float().mean())
            assert fired == pytest.approx(report["fpr_calibration"])
            assert fpr - 2 / 400 <= fired <= fpr + 1e-9  # "higher" quantile: never above the target
        soft, _ = calibrate(gate, outside, 0.05, softness=0.5)
        assert 0 < float(soft(outside).min()) and float(soft(outside).max()) < 1
    p, n = torch.tensor([0.9, 0.3, 0.5]), torch.tensor([0.1, 0.5, 0.4, 0.95])
    pairs = [(a > b) + 0.5 * (a == b) for a in p.tolist() for b in n.tolist()]
    assert auroc(p, n) == pytest.approx(sum(pairs) / len(pairs))
    with pytest.raises(ValueError, match="validation people"):
        calibrate(fit_logistic(forget, retain), outside[:0], 0.05)


def membership_eraser(model, kind, positions, reads="last+mean", edit="add", layers=(0, 2)):
    d = model.hidden_size
    f = 2 * d if reads == "last+mean" else d
    g = torch.Generator().manual_seed(11)
    maps = []
    for l in layers:
        forget, retain = torch.randn(8, f, generator=g), torch.randn(40, f, generator=g)
        gate = fit_logistic(forget, retain, reads=reads) if kind == "logistic" else \
            fit_mlp(forget, retain, reads=reads, steps=20) if kind == "mlp" else \
            fit_prototype(forget, retain, reads=reads, whiten=kind == "prototype_whitened")
        # A soft gate with a low threshold: it fires partly on every input, so the routes are compared on an edit.
        gate = type(gate)(**{**gate.__dict__, "threshold": -1e3 if kind in ("logistic", "mlp") else -1.0,
                             "temperature": 5.0})
        maps.append(EraserLayer(l, gate, torch.randn(1, d, generator=g)))
    return Eraser(tuple(maps), 3.0, positions, model.fingerprint(), edit=edit)


def routes(model, eraser, samples):
    enc = model.encode(samples, device=model.device)
    width = enc["input_ids"].shape[1]
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    toolkit_ids = [t.tolist() for t in tracing.generate(model, samples, steers=eraser, max_new_tokens=5,
                                                        return_ids=True)]
    with model.nn.generate(**kw) as tracer:
        with tracer.invoke(**enc):
            eraser.intervene(model, mask=enc["attention_mask"])
        with tracer.invoke():
            ids = nnsight.save(tracer.result)
    mine = [row[width:].tolist() for row in ids]
    with eraser.attached(model):
        hooked = [row[width:].tolist() for row in model.module.generate(**enc, **kw)]
    plain = [t.tolist() for t in tracing.generate(model, samples, max_new_tokens=5, return_ids=True)]
    return toolkit_ids, mine, hooked, plain


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
@pytest.mark.parametrize("kind,reads,positions,edit", [("logistic", "last+mean", "prompt", "add"),
                                                       ("prototype_whitened", "last+mean", "prompt", "add"),
                                                       ("prototype", "last+mean", "last", "rotate"),
                                                       ("prototype", "last", "all", "add")])
def test_every_gate_kind_gives_identical_ids_through_the_three_routes(family, kind, reads, positions, edit,
                                                                        tiny_models):
    model = tiny_models(family)
    samples = [Sample("who is this", random_image(0)),
               Sample("what is shown in this picture of a person please", random_image(1))]
    eraser = membership_eraser(model, kind, positions, reads, edit)
    toolkit_ids, mine, hooked, plain = routes(model, eraser, samples)
    assert toolkit_ids == mine == hooked
    assert toolkit_ids != plain, "the edit changed the generation"


def test_a_mean_reading_gate_equals_its_formula_on_a_padded_batch(tiny_models):
    """The state the route hands the gate is [last token, masked prompt mean]: compare with a capture."""
    model = tiny_models("llava")
    samples = [Sample("who is this", random_image(0)), Sample("what is shown in this picture please", random_image(1))]
    eraser = membership_eraser(model, "logistic", "prompt", layers=(1,))
    log = tracing.GateLog()
    tracing.generate(model, samples, steers=eraser, max_new_tokens=2, gate_log=log)
    feats = tracing.capture(model, samples, [1], "last+mean")[1]
    want = eraser.layer_map(1).gates(feats)[:, 0]
    got = log.records[0]["gates"][:, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="attention mask"):
        with model.nn.trace(**model.encode(samples, device=model.device)):
            eraser.intervene(model, generating=False)


def test_rotate_edit_preserves_the_norm_and_a_closed_gate_changes_nothing():
    d = 16
    h = rows(5, d, 0, 12)
    direction = torch.randn(1, d)
    layer = EraserLayer(0, LogisticGate(torch.zeros(d), 1.0, torch.zeros(d), torch.ones(d), reads="last"), direction)
    new = h + layer.shift(h, 4.0, edit="rotate")
    torch.testing.assert_close(new.norm(dim=1), h.norm(dim=1))
    added = h + 4.0 * direction
    torch.testing.assert_close(new, added * (h.norm(dim=1, keepdim=True) / added.norm(dim=1, keepdim=True)))
    closed = EraserLayer(0, LogisticGate(torch.zeros(d), -1.0, torch.zeros(d), torch.ones(d)), direction)
    assert torch.equal(closed.shift(h, 4.0, edit="rotate"), torch.zeros_like(h))
    with pytest.raises(ValueError, match="edit"):
        Eraser((layer,), 1.0, "prompt", edit="scale")


@pytest.mark.parametrize("kind", ["logistic", "prototype", "prototype_whitened", "mlp"])
def test_an_eraser_file_with_each_gate_kind_round_trips(kind, tiny_models, tmp_path):
    model = tiny_models("llava")
    eraser = membership_eraser(model, kind, "prompt", edit="rotate")
    back = Eraser.load(eraser.save(tmp_path / "e.safetensors"), model)
    assert back.edit == "rotate" and back.gate_kinds == (kind, kind)
    x = torch.randn(4, 2 * model.hidden_size)
    for a, b in zip(eraser.maps, back.maps):
        assert a.gates.meta() == b.gates.meta()
        assert torch.equal(a.weights(x), b.weights(x)) and torch.equal(a.directions, b.directions)


def test_compose_stacks_membership_and_linear_gates_as_applying_them_together(tiny_models):
    model = tiny_models("llava")
    member = membership_eraser(model, "prototype", "prompt", reads="last", layers=(1,))
    g = torch.Generator().manual_seed(2)
    linear = Eraser((EraserLayer(1, torch.randn(model.hidden_size, 1, generator=g) * 0.3,
                                 torch.randn(1, model.hidden_size, generator=g)),), 2.0, "prompt", model.fingerprint())
    merged = Eraser.compose(member, linear)
    assert isinstance(merged.layer_map(1).gates, GateStack) and merged.rank == 2
    h = torch.randn(3, model.hidden_size)
    torch.testing.assert_close(merged(1, h), h + (member(1, h) - h) + (linear(1, h) - h))
    stack = merged.layer_map(1).gates
    rebuilt = gate_from_parts(stack.meta(), stack.tensors())
    assert torch.equal(rebuilt(h), stack(h))
    with pytest.raises(ValueError, match="cannot share"):
        GateStack((LinearGate(torch.zeros(4, 1)), PrototypeGate(torch.zeros(1, 8), torch.zeros(1, 8), torch.zeros(8),
                                                               torch.ones(8), reads="last+mean")))
    with pytest.raises(ValueError, match="decides once per prompt"):
        membership_eraser(model, "logistic", "all", reads="last+mean")


def test_fitter_keeps_a_bounded_reservoir_of_retain_rows():
    fitter = EraserFitter(4, [0], gate_reads="last", max_retain_rows=50)
    seen = rows(300, 4, 0, 13)
    for chunk in seen.split(37):
        fitter.update_gate_rows("retain", chunk)
    kept = fitter.gate_rows["retain"][0]
    assert kept.shape == (50, 4) and fitter.retain_rows_seen == 300
    assert all(any(torch.equal(k, s) for s in seen) for k in kept)  # real rows, not averages
    assert (torch.cdist(kept, seen[50:]).min(1).values == 0).any()  # later rows can enter


@pytest.mark.parametrize("reads,wrap", [("last+mean", 0), ("image-max", 1)])
def test_membership_fit_calibrates_on_validation_people_and_never_reads_evaluation_people(tiny_models, bench_dir,
                                                                                         tmp_path, reads, wrap):
    """The noise test extended to the calibration step: noise on every evaluation person's images leaves the gate
    and its threshold bit-identical; noise on the validation people moves the threshold (so the check can fail).
    Also with the image read and the fit pool's wrapped questions in the gate rows and the calibration."""
    m = tiny_models("llava")
    cfg = config(gate="prototype", gate_fpr=0.1, gate_reads=reads, wrap=wrap)
    base = fit_eraser(m, bench_dir, cfg, contrast=given_contrast())
    bench = MLLMUBench(bench_dir)
    samples, people = calibration_samples(bench, cfg)
    assert people and {SPLIT.role(p) for p in people} == {"validation"}
    report = base.report["layers"][1]
    assert report["kind"] == "prototype" and report["n_calibration"] == len(samples)
    assert report["fpr_calibration"] <= 0.1 + 1e-9
    noisy = tmp_path / "noisy"
    shutil.copytree(bench_dir, noisy)
    forget = {p.id for p in bench.forget(10)}
    assert _replace_images(noisy, lambda pid: pid in forget or SPLIT.role(pid) != "evaluation") > 0
    again = fit_eraser(m, noisy, cfg, contrast=given_contrast())
    for a, b in zip(base.eraser.maps, again.eraser.maps):
        assert a.gates.meta() == b.gates.meta()
        assert all(torch.equal(a.gates.tensors()[k], b.gates.tensors()[k]) for k in a.gates.tensors())
    control = tmp_path / "control"
    shutil.copytree(bench_dir, control)
    _replace_images(control, lambda pid: SPLIT.role(pid) != "validation")
    moved = fit_eraser(m, control, cfg, contrast=given_contrast())
    assert moved.eraser.maps[0].gates.threshold != base.eraser.maps[0].gates.threshold
    # The same fit gives the other kinds without a new capture; the linear one is the paper's map.
    linear = eraser_with_gate(m, base, cfg, "linear")
    assert linear.gate_kinds == ("linear", "linear")
    with pytest.raises(ValueError, match="validation people"):
        fit_eraser(m, bench_dir, config(gate="logistic", people=None), contrast=given_contrast())


def test_the_rehearsal_screens_gate_kinds_and_chooses_one(tiny_models, bench_dir):
    m = tiny_models("llava")
    cfg = config(gate_rows=True)
    fit = fit_eraser(m, bench_dir, cfg, contrast=given_contrast())
    select = SelectConfig(layers=(2,), lams=(2.0,), gates=("prototype_whitened", "prototype", "logistic", "linear"),
                          gate_fprs=(0.05, 0.2), positions=(None,))
    eraser, sel = select_setting(m, fit, MLLMUBench(bench_dir), cfg, select)
    s = sel.screening
    assert set(s.gate) == {"prototype_whitened", "prototype", "logistic", "linear"} and set(s.layer) == {2}
    assert np.allclose(s.score, s.caught - s.fp_people)
    best = s.sort_values(["score", "gate_fpr"], ascending=[False, True], kind="stable").iloc[0]
    assert sel.gate == best.gate and eraser.gate_kinds == (sel.gate,) and eraser.layers == (2,)
    if sel.gate != "linear":
        assert eraser.positions in ("prompt", "last")  # a mean-reading gate decides at prefill


def test_gates_fitted_from_kept_rows_equal_gates_fitted_on_their_read_alone(tiny_models, bench_dir):
    """One capture keeps every screened read (last first); a gate for one read, fitted from those columns, is the
    gate a fit of that read alone gives. The screening covers each read, the fit pool's rows included."""
    m = tiny_models("qwen2_5_vl")
    both = fit_eraser(m, bench_dir, config(gate="prototype", gate_reads="image-max", gate_reads_kept=("last+mean",),
                                           wrap=1), contrast=given_contrast())
    alone = fit_eraser(m, bench_dir, config(gate="prototype", gate_reads="last+mean", wrap=1), contrast=given_contrast())
    fitter = both.fitter
    d = m.hidden_size
    assert fitter.gate_reads == "last+mean+image-max" and fitter.default_reads == "image-max"
    assert both.eraser.layer_map(1).reads == "image-max" and both.eraser.layer_map(1).width == d
    for kind in ("forget", "retain", "calibration"):
        torch.testing.assert_close(fitter.rows(kind, 1, "last+mean"), alone.fitter.rows(kind, 1))
    g_both, r_both = fitter.gate(1, "prototype", fpr=0.1, reads="last+mean")
    g_alone, r_alone = alone.fitter.gate(1, "prototype", fpr=0.1)
    assert r_both["threshold"] == r_alone["threshold"] and torch.equal(g_both.forget, g_alone.forget)
    # the fit pool's wrapped questions are gate rows, not statistics: the map's moments are the unwrapped fit's
    plain = fit_eraser(m, bench_dir, config(gate="prototype", gate_reads="last+mean"), contrast=given_contrast())
    assert len(plain.fitter.rows("forget", 1)) < len(alone.fitter.rows("forget", 1))
    assert alone.fitter.forget[1].count == plain.fitter.forget[1].count
    assert alone.fitter.retain[1].count == plain.fitter.retain[1].count
    select = SelectConfig(layers=(2,), lams=(2.0,), gates=("prototype",), gate_fprs=(0.1,), positions=(None,),
                          gate_reads=("last+mean", "image-max"), latch=(False, True))
    eraser, sel = select_setting(m, both, MLLMUBench(bench_dir), config(gate="prototype", gate_reads="image-max",
                                                                        gate_reads_kept=("last+mean",), wrap=1),
                                 select)
    assert set(sel.screening.reads) == {"last+mean", "image-max"}
    assert eraser.layer_map(2).reads == sel.gate_reads and eraser.latch == sel.latch
    assert set(sel.grid[sel.grid.layer >= 0].latch) == {False, True}
    assert sel.screening.fp_people.between(0, 1).all()


def test_pooled_exemplars_are_group_means_and_small_groups_join_their_person():
    from toolkit.gates import pool_exemplars

    unit = torch.nn.functional.normalize(rows(9, 5, 0, 21), dim=-1)
    groups = ["a|image"] * 4 + ["a|text"] * 2 + ["b|image"] * 3
    pooled = pool_exemplars(unit, groups)
    # a|text has 2 rows (< 3): it joins a|image, so "a" is one exemplar of 6 rows; "b|image" keeps its 3.
    want = torch.stack([torch.nn.functional.normalize(unit[:6].double().mean(0), dim=0),
                        torch.nn.functional.normalize(unit[6:].double().mean(0), dim=0)]).float()
    torch.testing.assert_close(pooled, want)
    with pytest.raises(ValueError, match="group labels"):
        pool_exemplars(unit, groups[:-1])


def test_a_prototype_gate_pooled_per_person_stores_no_single_row_and_scores_by_the_formula():
    forget, retain, x = rows(12, 6, 1.0, 31), rows(40, 6, 0.0, 32), rows(5, 6, 0.5, 33)
    f_groups = [f"f{i // 4}|image" for i in range(12)]
    r_groups = [f"r{i // 5}|{'image' if i % 5 < 3 else 'text'}" for i in range(40)]
    gate = fit_prototype(forget, retain, forget_groups=f_groups, retain_groups=r_groups)
    assert gate.forget.shape == (3, 6) and gate.retain.shape == (8, 6)  # 3 people; 8 people, text rows joined
    unit = torch.nn.functional.normalize(gate.standardise(forget), dim=-1)
    assert torch.cdist(gate.forget, unit).min() > 1e-3  # no exemplar is one question's state
    centroids = torch.nn.functional.normalize(torch.stack([unit[i:i + 4].mean(0) for i in (0, 4, 8)]), dim=-1)
    runit = torch.nn.functional.normalize(gate.standardise(retain), dim=-1)
    rcent = torch.nn.functional.normalize(torch.stack([runit[i:i + 5].mean(0) for i in range(0, 40, 5)]), dim=-1)
    z = torch.nn.functional.normalize(gate.standardise(x), dim=-1)
    want = (z @ centroids.T).max(-1).values - (z @ rcent.T).max(-1).values
    torch.testing.assert_close(gate.score(x), want, rtol=1e-4, atol=1e-5)


def test_the_fitter_pools_by_the_samples_people_and_refuses_rows_without_one():
    fitter = EraserFitter(4, [0], gate_reads="last", max_retain_rows=50)
    fitter.update_gate_rows("forget", rows(6, 4, 1.0, 41), groups=["p|image"] * 3 + ["q|image"] * 3)
    fitter.update_gate_rows("retain", rows(80, 4, 0.0, 42), groups=[f"r{i % 7}|text" for i in range(80)])
    fitter.update_gate_rows("calibration", rows(20, 4, 0.0, 43), people=[f"v{i % 4}" for i in range(20)])
    # The reservoir keeps each kept row's label with it.
    assert len(fitter.gate_groups["retain"]) == 50
    gate, report = fitter.gate(0, "prototype", fpr=0.1, pool="people")
    assert gate.forget.shape[0] == 2 and gate.retain.shape[0] == 7 and report["pool"] == "people"
    rows_gate, _ = fitter.gate(0, "prototype", fpr=0.1)
    assert rows_gate.forget.shape[0] == 6
    bare = EraserFitter(4, [0], gate_reads="last")
    bare.update_gate_rows("forget", rows(6, 4, 1.0, 41))
    bare.update_gate_rows("retain", rows(30, 4, 0.0, 42))
    bare.update_gate_rows("calibration", rows(20, 4, 0.0, 43), people=["v"] * 20)
    with pytest.raises(ValueError, match="person of every forget row"):
        bare.gate(0, "prototype", pool="people")


def test_a_fit_pooled_per_person_writes_a_file_with_no_question_row_and_no_name(tiny_models, bench_dir, tmp_path):
    m = tiny_models("llava")
    cfg = config(gate="prototype", gate_fpr=0.1, gate_reads="last+mean", gate_pool="people")
    pooled = fit_eraser(m, bench_dir, cfg, contrast=given_contrast())
    rows_fit = fit_eraser(m, bench_dir, config(gate="prototype", gate_fpr=0.1, gate_reads="last+mean"),
                          contrast=given_contrast())
    forget = [p.id for p in MLLMUBench(bench_dir).forget(10)]
    for layer_pooled, layer_rows in zip(pooled.eraser.maps, rows_fit.eraser.maps):
        # Each forget person asks image and text questions (3 or more of each): two exemplars a person.
        assert layer_pooled.gates.forget.shape[0] == 2 * len(forget) < layer_rows.gates.forget.shape[0]
        assert torch.cdist(layer_pooled.gates.forget, layer_rows.gates.forget).min() > 1e-3
    path = pooled.eraser.save(tmp_path / "pooled.safetensors")
    text = path.read_bytes()
    assert not any(pid.encode() in text for pid in forget)
    assert all(pid.encode() in rows_fit.eraser.save(tmp_path / "rows.safetensors").read_bytes() for pid in forget)
    again = Eraser.load(path, m)
    x = torch.randn(3, 2 * m.hidden_size)
    torch.testing.assert_close(again.maps[0].gates.score(x), pooled.eraser.maps[0].gates.score(x))
