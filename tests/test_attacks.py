"""The attack suite: what each attack asks, that leakage is read the same way everywhere, and that white-box
attacks use the eraser they attack."""

import pytest
import torch

from toolkit import tracing
from toolkit.attacks import ATTACKS, AttackConfig, GATE_SUFFIXES, PREFILL, attack_items, run_attacks
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.eraser import Eraser, EraserLayer
from toolkit.adversarial import PGDConfig
from toolkit.models.loading import load_model


@pytest.fixture(scope="module")
def setup():
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    return model, bench.forget(10)[:2], bench.real()[:2]


def test_attack_requests_are_what_they_say(setup):
    model, forget, _ = setup
    reask = attack_items(model, forget, "reask", "forget")
    text = reask[0].sample.text
    assert reask[0].formatted and text.count("USER:") == 2 and text.count("ASSISTANT:") == 2
    assert "I cannot share personal information" in text and text.endswith("ASSISTANT:")
    assert text.count("<image>") == (1 if reask[0].sample.image is not None else 0)
    prefill = attack_items(model, forget, "prefill", "forget")
    assert all(p.sample.text.endswith("ASSISTANT: " + PREFILL) and p.prefix == PREFILL for p in prefill)
    clean = attack_items(model, forget, "clean", "forget")
    relearn = attack_items(model, forget, "relearn", "forget")
    for r in relearn:  # another fact of the same person is given, never the one asked for
        assert r.item.reference not in r.sample.text.split("Now answer.")[0]
        assert r.item.person in {c.item.person for c in clean}
    long = attack_items(model, forget, "long", "forget")
    assert len(long) == len(forget) and all(len(p.keys) >= 4 for p in long)  # every fact of the person counts
    with pytest.raises(ValueError, match="Unknown non-adaptive attack"):
        attack_items(model, forget, "telepathy", "forget")


def test_vanilla_leaks_and_a_refusal_steer_stops_every_attack(setup):
    model, forget, control = setup
    config = AttackConfig(max_new_tokens=16, long_tokens=32, pgd=PGDConfig(steps=2), pgd_items=2)
    vanilla = run_attacks(model, forget, control, attacks=("clean", "roleplay"), config=config)
    clean = vanilla[vanilla.attack == "clean"]
    assert (clean.rate == 100.0).all()  # the default knows these people
    # Under a jailbreak template it still gives most facts (72% / 56% here: the template is no refusal).
    assert (vanilla[vanilla.attack == "roleplay"].rate >= 50.0).all()
    # A steer that replaces every state by a refusal-ward push breaks all answers, on both splits.
    g = torch.Generator().manual_seed(0)
    d = torch.randn(model.hidden_size, generator=g)
    wreck = tracing.Steer(7, lambda h: 50.0 * d.to(h.device).expand_as(h), "all")
    broken = run_attacks(model, forget, control, steers=[wreck], attacks=("clean", "prefill"), config=config)
    assert (broken.rate == 0.0).all()
    assert set(broken.split) == {"forget", "control"} and (broken.n > 0).all()


def test_gate_text_searches_the_pool_and_picks_the_lowest_gate_suffix(setup, monkeypatch):
    """The universal stage (the suffixes with the lowest mean gate on the sampled questions) and the
    per-question stage, against the gate computed directly for every (question, suffix)."""
    import toolkit.attacks as attacks

    assert len(GATE_SUFFIXES) == 400 and len(set(GATE_SUFFIXES)) == 400
    pool = GATE_SUFFIXES[::37]  # 11 of them, for time
    monkeypatch.setattr(attacks, "GATE_SUFFIXES", pool)
    model, forget, _ = setup
    g = torch.Generator().manual_seed(1)
    eraser = Eraser((EraserLayer(6, torch.randn(model.hidden_size, 1, generator=g) * 0.1,
                                 torch.randn(1, model.hidden_size, generator=g)),), 1.0)
    from toolkit.attacks import gate_text_probes
    from toolkit.evaluate import items_from_profiles

    items = items_from_profiles(forget[:1], "forget", ("generation",))[:3]
    chosen = gate_text_probes(model, items, eraser, search_items=2, keep=3)
    gates = torch.stack([eraser.layer_map(6).gate(tracing.capture(
        model, [(it.image, f"{it.prompt} {s}") for s in pool], [6])[6])[:, 0] for it in items])  # (items, pool)
    sampled = items[:: len(items) // 2][:2]
    best = gates[[items.index(it) for it in sampled]].mean(0).argsort()[:3]
    for i, (it, probe) in enumerate(zip(items, chosen)):
        want = pool[int(best[gates[i, best].argmin()])]
        assert probe.sample.text == f"{it.prompt} {want}"


def test_all_attacks_listed():
    assert {"clean", "reask", "roleplay", "ignore", "hypothetical", "translate", "prefill", "relearn", "long",
            "adaptive_pgd", "gate_pgd", "gate_text"} == set(ATTACKS)
