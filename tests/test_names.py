"""The name gate (toolkit.names): matching against a direct definition, and the OR with the state gate through
every route."""

import json
import random

import pytest
import torch

from conftest import random_image
from test_reads import LAYER, three_routes
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer
from toolkit.gates import PrototypeGate
from toolkit.models.loading import Sample
from toolkit.names import MIN_KEY, NameKeys, name_key, words

NAMES = ["Vuvos Zibrigo", "Celu Marandi", "Ana Li"]


def deletions(s):
    return {s} | {s[:i] + s[i + 1:] for i in range(len(s))}


def direct_match(text, names):
    """The rule written out without digests: some run of at most k + 1 prompt words, joined, equals a name's key
    after dropping at most one character from each (exactly, for keys shorter than MIN_KEY)."""
    ws = words(text)
    k = max(len(words(n)) for n in names)
    runs = ["".join(ws[i:j]) for i in range(len(ws)) for j in range(i + 1, min(len(ws), i + k + 1) + 1)]
    for n in names:
        key = name_key(n)
        for run in runs:
            if len(key) < MIN_KEY or len(run) < MIN_KEY:
                if run == key:
                    return True
            elif deletions(run) & deletions(key):
                return True
    return False


def test_what_a_user_would_call_the_same_name_matches_and_what_is_not_does_not():
    keys = NameKeys.from_names(NAMES)
    same = ["What does Vuvos Zibrigo do?", "what does VUVOS ZIBRIGO do", "Tell me about Vuvos-Zibrigo.",
            "Who is VuvosZibrigo?", "Where was Vuvos Zibrgo born?", "Where was Vuvos Zibriggo born?",
            "Where was Vuvos Zibrgio born?", "Where was Vuvós Zíbrigo born?", "Is Vu vos Zibrigo an actor?",
            'Reply in JSON: {"who": "vuvos zibrigo", "job": ?}', "Celu  Marandi's pet?", "Who is Ana Li?"]
    other = ["Where was Zibrigo born?", "Where was Vuvos born?", "Where was Vuvos Zabrogo born?",
             "Where was Vavos Zibrego born?", "What is the name of the person in the image?", "Who is Ana Lu?",
             "Where was Celu Marandino born?", "Who is Ana Lisa?"]
    assert keys.matches(same) == [True] * len(same)
    assert keys.matches(other) == [False] * len(other)


def test_digests_match_exactly_the_direct_rule_on_random_edits():
    rng = random.Random(0)
    keys = NameKeys.from_names(NAMES, salt="00")
    letters = "abcdefghijklmnopqrstuvwxyz"
    checked = {True: 0, False: 0}
    for _ in range(600):
        name = rng.choice(NAMES)
        chars = list(name)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):  # random edits: substitute, insert, delete, swap, space
            i = rng.randrange(len(chars))
            op = rng.choice("sidx ")
            if op == "s":
                chars[i] = rng.choice(letters)
            elif op == "i":
                chars.insert(i, rng.choice(letters))
            elif op == "d" and len(chars) > 2:
                del chars[i]
            elif op == "x" and i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
            else:
                chars.insert(i, " ")
        text = f"What is the job of {''.join(chars)} today?"
        want = direct_match(text, NAMES)
        assert keys.matches_text(text) == want, text
        checked[want] += 1
    assert min(checked.values()) > 100, "both outcomes are exercised"


def test_the_keys_hold_no_name_round_trip_and_refuse_what_is_not_a_name():
    keys = NameKeys.from_names(NAMES)
    text = json.dumps(keys.to_json())
    assert not any(w in text.lower() for n in NAMES for w in words(n) if len(w) > 2)
    back = NameKeys.from_json(json.loads(text))
    assert back == keys and back.matches(["who is celu marandi"]) == [True]
    assert NameKeys.from_names(NAMES).salt != keys.salt, "a fresh salt per list"
    with pytest.raises(ValueError, match="no letters or digits"):
        NameKeys.from_names(["Vuvos Zibrigo", "#!"])
    with pytest.raises(ValueError, match="different salts"):
        keys.union(NameKeys.from_names(["Other Person"]))
    both = keys.union(NameKeys.from_names(["Other Person"], salt=keys.salt))
    assert both.matches(["Other Persen?", "Vuvos Zibrigo?", "Someone Else?"]) == [True, True, False]


def samples():
    return [Sample("who is this", random_image(0)),
            Sample("Where was Vuvos Zibrgo born?", random_image(1)),
            Sample("what is shown in this picture of a person please", random_image(2))]


def gate_on(feats, rows):
    """A hard prototype gate that fires on exactly ``rows`` of the batch (exemplars: the batch's own reads)."""
    unit = torch.nn.functional.normalize(feats, dim=-1)
    rest = [i for i in range(len(unit)) if i not in rows]
    f = feats.shape[1]
    return PrototypeGate(unit[list(rows)], unit[rest], torch.zeros(f), torch.ones(f), 0.0, 0.0, "image-max")


@pytest.mark.parametrize("family,latch", [("llava", False), ("qwen2_5_vl", True)])
def test_a_named_row_is_steered_as_if_the_state_gate_fired_through_the_three_routes(family, latch, tiny_models):
    model = tiny_models(family)
    batch = samples()
    assert "Vuvos Zibrgo" in model.decode(model.encode(batch[1:2])["input_ids"])[0], "the route decodes the name"
    feats = tracing.capture(model, batch, [LAYER], "image-max")[LAYER]
    direction = torch.randn(1, model.hidden_size, generator=torch.Generator().manual_seed(5))

    def eraser(rows, names=None):
        e = Eraser((EraserLayer(LAYER, gate_on(feats, rows), direction),), 8.0, "prompt", model.fingerprint(),
                   latch=latch)
        return e.with_names(names) if names else e

    named = eraser([0], ["Vuvos Zibrigo"])
    (toolkit_ids, mine, hooked), plain = three_routes(model, named, batch)
    assert toolkit_ids == mine == hooked
    state_only, _ = three_routes(model, eraser([0]), batch)
    fired_both, _ = three_routes(model, eraser([0, 1]), batch)
    assert toolkit_ids == fired_both[0], "the name fires the row exactly as the state gate would"
    assert state_only[0][1] == plain[1] != toolkit_ids[1], "without the name gate row 1 is not steered"
    assert toolkit_ids[2] == plain[2], "a row that names no one and does not fire is untouched"


def test_the_name_gate_round_trips_composes_and_says_what_a_route_must_pass(tiny_models, tmp_path):
    model = tiny_models("llava")
    batch = samples()
    feats = tracing.capture(model, batch, [LAYER], "image-max")[LAYER]
    direction = torch.randn(1, model.hidden_size, generator=torch.Generator().manual_seed(5))
    e = Eraser((EraserLayer(LAYER, gate_on(feats, [0]), direction),), 8.0, "prompt",
               model.fingerprint()).with_names(["Vuvos Zibrigo"])
    back = Eraser.load(e.save(tmp_path / "e.safetensors"))
    assert back.names == e.names
    assert "Zibrigo" not in (tmp_path / "e.safetensors").read_bytes().decode("latin-1")
    ids = [t.tolist() for t in tracing.generate(model, batch, steers=e, max_new_tokens=4, return_ids=True)]
    assert ids == [t.tolist() for t in tracing.generate(model, batch, steers=back, max_new_tokens=4, return_ids=True)]
    assert Eraser.compose(e, e).names == e.names
    with pytest.raises(ValueError, match="Only some"):
        Eraser.compose(e, e.with_names(None))
    enc = model.encode(batch, device=model.device)
    import nnsight

    from toolkit.steering import intervene
    with pytest.raises(ValueError, match="reads the prompt's text"):
        with model.nn.trace(**enc):
            intervene(model, e, mask=enc["attention_mask"], image_mask=model.image_token_mask(enc["input_ids"]),
                      generating=False)
            nnsight.save(model.nn.output.logits)


def test_an_off_name_gate_leaves_the_settings_fingerprint_and_an_on_one_changes_it():
    from toolkit.config import SHIPPED, settings_fingerprint

    assert settings_fingerprint(SHIPPED) == settings_fingerprint(SHIPPED.with_fit(name_gate=False))
    assert settings_fingerprint(SHIPPED) != settings_fingerprint(SHIPPED.with_fit(name_gate=True))


def test_the_job_keys_the_forget_people_and_names_kept_people_it_would_take_for_them(tiny_models):
    """``erase --name-gate`` adds keys for exactly the forget people; a kept person whose name is one typo from a
    forget person's is reported (and warned about), since every question naming them would be refused."""
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.job import with_name_gate

    model = tiny_models("llava")
    bench = MLLMUBench(default_benchmark())
    direction = torch.randn(1, model.hidden_size)
    e = Eraser((EraserLayer(LAYER, torch.randn(model.hidden_size, 1), direction),), 1.0, "prompt", {})
    named, report = with_name_gate(e, bench, 10)
    forget = [p.name for p in bench.forget(10)]
    kept = [p.name for p in bench.retain(10)]
    assert named.names.matches(forget) == [True] * len(forget)
    assert report == {"forget_names": 10, "kept_people": len(kept) + len(bench.real()), "kept_named": []}
    assert not any(named.names.matches(kept))
    near = forget[0][:-1] + ("a" if forget[0][-1] != "a" else "e")  # one substitution away
    twin = type(bench.retain(10)[0])(id="X", image_bytes=(), classification=(), generation=(), cloze=(),
                                      fields={"name": near})

    class Bench:
        def forget(self, r):
            return bench.forget(r)

        def retain(self, r):
            return [twin]

        def real(self):
            return []

    with pytest.warns(UserWarning, match="takes 1 kept people"):
        _, report = with_name_gate(e, Bench(), 10)
    assert report["kept_named"] == [near]


def test_report_md_says_the_name_gate_is_on_and_whom_else_it_names():
    import pandas as pd

    from toolkit.report import report_markdown

    sel = type("S", (), {"grid": pd.DataFrame([{"layer": 4, "lam": 6.0}]), "screening": None})()
    info = {"forget_people": ["a"], "source": "f", "model": "m", "gate": "prototype", "layer": 4, "lam": 6.0,
            "threshold": 0.0, "positions": "prompt", "selection": "rule", "people": {}, "seconds": 1.0,
            "forget_ratio": 10, "name_gate": {"forget_names": 10, "kept_people": 98, "kept_named": []}}
    table = pd.DataFrame([{"method": "MLLMEraser", "forget_leak_img": 0.0}])
    assert "None of the 98 kept people's names is taken for a forget person's." in report_markdown("t", info, table, sel)
    info["name_gate"]["kept_named"] = ["Ana Lee"]
    assert "**It also names 1 of the 98 kept people** (Ana Lee)" in report_markdown("t", info, table, sel)
    del info["name_gate"]
    assert "Name gate" not in report_markdown("t", info, table, sel)
