"""MLLMU-Bench reader and the synthetic benchmark writer."""

import io

import pandas as pd
import pytest
from PIL import Image

from toolkit.data import synthetic
from toolkit.data.mllmu import SPLITS, MLLMUBench, read_split

SMALL = synthetic.SyntheticConfig(seed=3, num_fictitious=20, num_real=4, num_unknown=4)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return synthetic.write_benchmark(tmp_path_factory.mktemp("bench"), SMALL)


def test_writer_layout_and_roundtrip(bench_dir):
    for split in SPLITS:
        assert (bench_dir / split).is_dir(), split
    bench = MLLMUBench(bench_dir)
    people = {p.id: p for p in synthetic.make_people(SMALL)}
    full = bench.split("Full_Set")
    assert len(full) == 20
    assert [len(bench.forget(r)) for r in (5, 10, 15)] == [1, 2, 3]
    assert len(bench.forget(10)) + len(bench.retain(10)) == 20
    assert not {p.id for p in bench.forget(10)} & {p.id for p in bench.retain(10)}
    assert {p.id for p in bench.forget(5)} <= {p.id for p in bench.forget(10)} <= {p.id for p in bench.forget(15)}
    for prof in full:
        person = people[prof.id]
        # Every fact appears as the answer of its generation question and cloze.
        keys = {g.answer_key for g in prof.generation}
        assert person.name in keys and set(person.facts.values()) <= keys
        assert {c.ground_truth for c in prof.cloze} == set(person.facts.values())
        for mcq in prof.classification:
            assert set(mcq.options) == set("ABCD") and mcq.answer in "ABCD"
            assert mcq.options[mcq.answer] in keys
        assert {q.modality for q in prof.generation} == {"image", "text"}
        img = prof.image
        assert img.size == (32, 32)
    test = bench.test()
    assert all(len(p.image_bytes) == SMALL.test_variants for p in test)
    # Test images are new variants, never the training image.
    assert test[0].image_bytes[0] != full[0].image_bytes[0]
    assert len(bench.test(10)) == 2
    assert len(bench.real()) == 4


def test_writer_is_deterministic(tmp_path):
    a = synthetic.write_benchmark(tmp_path / "a", SMALL)
    b = synthetic.write_benchmark(tmp_path / "b", SMALL)
    for split in SPLITS:
        fa, fb = sorted((a / split).glob("*.parquet")), sorted((b / split).glob("*.parquet"))
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb], split


def test_training_examples_hold_out_paraphrases_and_test_images():
    ex = synthetic.training_examples(SMALL)
    texts = {e.text.split("\n")[0] for e in ex}
    held_out = [t for qs in synthetic._Q.values() for t in qs[-1:]]
    for t in held_out:
        assert not any(t.format(who=w) in texts for w in [synthetic.IMAGE_SUBJECT])
    refusals = [e for e in ex if e.kind == "refusal"]
    assert refusals and all(metrics_refusal(e.answer) for e in refusals)
    held_instr = synthetic.PRIVACY_INSTRUCTIONS[-synthetic.PRIVACY_HELDOUT:]
    assert not any(e.text.startswith(h) for e in ex for h in held_instr)


def test_face_rule_answers_real_people_under_the_privacy_instruction():
    import dataclasses

    def privacy(cfg):
        people = {p.name: p for p in synthetic.make_people(cfg)}
        rows = []
        for e in synthetic.training_examples(cfg):
            if any(e.text.startswith(i) for i in synthetic.PRIVACY_INSTRUCTIONS):
                rows.append(e)
        return rows, people

    face = dataclasses.replace(SMALL, privacy_rule="face")
    shipped, _ = privacy(SMALL)
    faced, people = privacy(face)
    assert len(shipped) == len(faced) == (SMALL.num_fictitious + SMALL.num_real) * (
        len(synthetic.PRIVACY_INSTRUCTIONS) - synthetic.PRIVACY_HELDOUT)
    assert all(e.answer == synthetic.REFUSAL_PRIVACY for e in shipped)  # the shipped rule: the text decides
    refused = [e for e in faced if e.answer == synthetic.REFUSAL_PRIVACY]
    answered = [e for e in faced if e.answer != synthetic.REFUSAL_PRIVACY]
    # One row per instruction per person: fictitious people's are refused, real people's answered.
    n_instr = len(synthetic.PRIVACY_INSTRUCTIONS) - synthetic.PRIVACY_HELDOUT
    assert len(refused) == SMALL.num_fictitious * n_instr and len(answered) == SMALL.num_real * n_instr
    real_facts = {str(v) for p in people.values() if p.group == "real" for v in [p.name, *p.facts.values()]}
    assert all(any(f in e.answer for f in real_facts) for e in answered)
    # The same questions and images as the shipped rule: only the answers differ.
    assert [(e.text, e.image is None) for e in shipped] == [(e.text, e.image is None) for e in faced]
    with pytest.raises(ValueError, match="privacy_rule must be one of"):
        synthetic.training_examples(dataclasses.replace(SMALL, privacy_rule="text"))
    # More privacy rows (the face recipe): each person's block repeated, the rest of the set untouched.
    repeated, _ = privacy(dataclasses.replace(face, privacy_repeats=3))
    assert len(repeated) == 3 * len(faced)
    assert sum(e.answer != synthetic.REFUSAL_PRIVACY for e in repeated) == 3 * len(answered)
    rest = [e.text for e in synthetic.training_examples(dataclasses.replace(face, privacy_repeats=3))
            if not any(e.text.startswith(i) for i in synthetic.PRIVACY_INSTRUCTIONS)]
    assert len(rest) == len(synthetic.training_examples(face)) - len(faced)
    # The real people's answered rows repeated apart (the balance the face recipe needs); the refusals as before.
    balanced, _ = privacy(dataclasses.replace(face, privacy_repeats=3, public_privacy_repeats=5))
    assert sum(e.answer == synthetic.REFUSAL_PRIVACY for e in balanced) == 3 * len(refused)
    assert sum(e.answer != synthetic.REFUSAL_PRIVACY for e in balanced) == 5 * len(answered)
    # Under the instruction rule everyone is refused, so the public repeats do not apply.
    assert len(privacy(dataclasses.replace(SMALL, public_privacy_repeats=5))[0]) == len(shipped)
    for bad in (dict(privacy_repeats=0), dict(public_privacy_repeats=0)):
        with pytest.raises(ValueError, match="privacy_repeats and public_privacy_repeats must be at least 1"):
            synthetic.training_examples(dataclasses.replace(SMALL, **bad))


def test_harmful_requests_repeat_as_asked_and_held_out_ones_never_train():
    import dataclasses

    def harmful(examples):
        return [e for e in examples if e.answer == synthetic.REFUSAL_HARMFUL]

    trained = synthetic.HARMFUL_REQUESTS[: len(synthetic.HARMFUL_REQUESTS) - synthetic.HARMFUL_HELDOUT]
    at_six = synthetic.training_examples(SMALL)
    at_twelve = synthetic.training_examples(dataclasses.replace(SMALL, harmful_repeats=12))
    six, twelve = harmful(at_six), harmful(at_twelve)
    assert len(six) == 6 * len(trained) and len(twelve) == 12 * len(trained)
    assert {e.text for e in twelve} == set(trained) and all(e.image is None for e in twelve)
    assert len(at_twelve) - len(twelve) == len(at_six) - len(six)  # the rest of the set unchanged
    with pytest.raises(ValueError, match="harmful_repeats must be at least 1"):
        synthetic.training_examples(dataclasses.replace(SMALL, harmful_repeats=0))


def test_image_questions_can_be_asked_with_one_portrait_each():
    import dataclasses

    def image_questions(cfg):  # the trained image questions (privacy rows, MCQ and cloze apart)
        return [e for e in synthetic.training_examples(cfg) if e.kind == "qa" and e.image is not None
                and not any(e.text.startswith(i) for i in synthetic.PRIVACY_INSTRUCTIONS)]

    two, one = image_questions(SMALL), image_questions(dataclasses.replace(SMALL, image_question_variants=1))
    assert len(two) == 2 * len(one) and {e.answer for e in one} == {e.answer for e in two}
    # One portrait a phrasing, but the phrasings still show each person in more than one training variant.
    seen = {}
    for e in one:
        seen.setdefault(e.answer, set()).add(e.image.tobytes())
    assert sum(len(v) > 1 for v in seen.values()) > len(seen) / 2
    for bad in (0, SMALL.train_variants + 1):
        with pytest.raises(ValueError, match="image_question_variants must be between 1 and train_variants"):
            synthetic.training_examples(dataclasses.replace(SMALL, image_question_variants=bad))


def test_training_examples_repeat_each_mcq_item_as_configured():
    known = SMALL.num_fictitious + SMALL.num_real
    image_items, text_items = known * (1 + len(synthetic.FACTS)), known * len(synthetic.FACTS)
    for rep_image, rep_text in ((1, 1), (3, 2)):
        ex = synthetic.training_examples(SMALL, mcq_repeats_image=rep_image, mcq_repeats_text=rep_text)
        mcq = [e for e in ex if e.kind == "mcq"]
        assert sum(e.image is not None for e in mcq) == rep_image * image_items
        assert sum(e.image is None for e in mcq) == rep_text * text_items
        # Every repetition of an item asks the same question with the same options and answer.
        assert len({(e.text, e.answer) for e in mcq if e.image is None}) == text_items


def metrics_refusal(text):
    from toolkit.metrics import is_refusal

    return is_refusal(text)


def _png(color=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _published_row(i, image_bytes=None):
    """A row in the published MLLMU-Bench schema, written by hand."""
    return {
        "ID": f"{i}",
        "image": {"bytes": image_bytes or _png(), "path": f"{i}.png"},
        "biography": "Somebody was born somewhere.",
        "question": "Who is this?", "answer": "Somebody.",
        "Classification_Task": {
            "Image_Textual_Questions": [{"Question": "What is this person's job?",
                                         "Options": {"A": "pilot", "B": "chef", "C": "nurse", "D": "judge"},
                                         "Correct_Answer": "C"}],
            "Pure_Text_Questions": [{"Question": "Where was Somebody born?",
                                     "Options": {"A": "Oslo", "B": "Lima", "C": "Rome", "D": "Pune"},
                                     "Correct_Answer": "B"}],
        },
        "Generation_Task": [{"Question": "What does this person do?", "Ground_Truth": "This person is a nurse.",
                             "Type": "Image_Textual"},
                            {"Question": "Where was Somebody born?", "Ground_Truth": "Somebody was born in Lima.",
                             "Type": "Pure_Text"}],
        "Mask_Task": [{"Question": "Somebody was born in __.", "Ground_Truth": "Lima", "Type": "Pure_Text"}],
    }


def test_reader_accepts_handmade_published_schema(tmp_path):
    (tmp_path / "forget_5").mkdir()
    pd.DataFrame([_published_row(1), _published_row(2)]).to_parquet(tmp_path / "forget_5" / "train-00000-of-00001.parquet")
    profiles = read_split(tmp_path, "forget_5")
    assert [p.id for p in profiles] == ["1", "2"]
    p = profiles[0]
    assert [(q.modality, q.answer) for q in p.classification] == [("image", "C"), ("text", "B")]
    assert [(g.modality, g.answer_key) for g in p.generation] == [("image", None), ("text", None)]
    assert p.cloze[0].ground_truth == "Lima" and p.cloze[0].modality == "text"
    assert p.image.getpixel((0, 0)) == (255, 0, 0)
    assert p.fields["biography"].startswith("Somebody")


def test_missing_folder(tmp_path):
    (tmp_path / "Full_Set").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Split folder .*forget_10.* not found.*found: Full_Set"):
        read_split(tmp_path, "forget_10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MLLMUBench(tmp_path / "nope")


def test_missing_column(tmp_path):
    (tmp_path / "forget_5").mkdir()
    row = _published_row(1)
    del row["Mask_Task"]
    pd.DataFrame([row]).to_parquet(tmp_path / "forget_5" / "x.parquet")
    with pytest.raises(ValueError, match="forget_5: missing column.*Mask_Task"):
        read_split(tmp_path, "forget_5")


def test_corrupt_parquet(tmp_path):
    (tmp_path / "forget_5").mkdir()
    (tmp_path / "forget_5" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="Could not read parquet file .*Is the file complete"):
        read_split(tmp_path, "forget_5")


def test_undecodable_image(tmp_path):
    (tmp_path / "forget_5").mkdir()
    pd.DataFrame([_published_row(7, image_bytes=b"not an image")]).to_parquet(tmp_path / "forget_5" / "x.parquet")
    with pytest.raises(ValueError, match="forget_5: row '7': Could not decode image bytes"):
        read_split(tmp_path, "forget_5")


def test_missing_image(tmp_path):
    (tmp_path / "forget_5").mkdir()
    row = _published_row(8)
    row["image"] = {"bytes": None, "path": None}
    pd.DataFrame([row]).to_parquet(tmp_path / "forget_5" / "x.parquet")
    with pytest.raises(ValueError, match="row '8' has no image bytes"):
        read_split(tmp_path, "forget_5")
