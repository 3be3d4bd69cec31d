"""Hand-written forget / retain lists: the reader, its one-line errors, and ``erase`` on them."""

import json
from pathlib import Path

import pytest

from toolkit.data.request import ForgetRequest, read_people, read_request, write_people
from toolkit.data.splits import PeopleSplit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_people"


def _png(path: Path) -> str:
    from conftest import random_image

    random_image(0).save(path)
    return path.name


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_example_lists_read_into_people_with_every_task():
    forget = read_people(EXAMPLE / "forget.jsonl")
    retain = read_people(EXAMPLE / "retain.csv")
    assert [p.id for p in forget] == ["Vuvos Zibrigo", "Celu Stuhadres", "Pani Zehodrin"]
    assert len(retain) == 16 and all(len(p.generation) == 4 and len(p.image_bytes) == 1 for p in retain)
    vuvos = forget[0]
    assert [q.modality for q in vuvos.generation] == ["image", "image", "text", "text"]
    assert vuvos.generation[1].answer_key == "Marbury" and vuvos.generation[1].ground_truth.endswith("Marbury.")
    assert vuvos.classification[0].answer == "A" and vuvos.classification[0].options["A"] == "Marbury"
    assert forget[1].cloze[0].ground_truth == "Dunmore" and forget[1].cloze[0].modality == "text"


def test_benchmark_people_round_trip_through_a_written_list(tmp_path):
    from toolkit.data.items import items_from_profiles
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark

    people = MLLMUBench(default_benchmark()).forget(5)
    back = read_people(write_people(tmp_path / "forget.jsonl", people))
    assert [p.id for p in back] == [p.id for p in people]
    for a, b in zip(people, back):
        assert (a.classification, a.generation, a.cloze, a.image_bytes) == (b.classification, b.generation, b.cloze,
                                                                            b.image_bytes)
    # The evaluation asks exactly the same prompts of the same images.
    assert items_from_profiles(people, "Forget") == items_from_profiles(back, "Forget")


def test_each_question_shows_its_own_image_and_text_only_people_are_asked(tmp_path):
    from toolkit.data.items import items_from_profiles
    from conftest import random_image

    random_image(1).save(tmp_path / "b.png")
    _png(tmp_path / "a.png")
    rows = [{"person": "Ann", "image": "a.png", "question": "Who is this?", "answer": "Ann Lee", "fact": "Ann Lee"},
            {"person": "Ann", "image": "b.png", "question": "Where is this person from?", "answer": "Oslo"},
            {"person": "Bo", "question": "Where was Bo born?", "answer": "Bo was born in Rome.", "fact": "Rome"}]
    ann, bo = read_people(_jsonl(tmp_path / "f.jsonl", rows))
    assert len(ann.image_bytes) == 2 and [q.image for q in ann.generation] == [0, 1]
    items = items_from_profiles([ann, bo], "Forget")
    assert [it.image for it in items[:2]] == [(tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()]
    assert bo.image_bytes == () and items[2].image is None and items[2].modality == "text"
    assert items[1].answer_key is None  # no fact given: recall falls back to ROUGE-L (toolkit.selection.fact_hits)


@pytest.mark.parametrize("rows, message", [
    ([{"person": "A", "question": "Q?", "answer": ""}], "empty 'answer'"),
    ([{"person": "", "question": "Q?", "answer": "x"}], "empty 'person'"),
    ([{"person": "A", "question": "Q?", "answer": "x", "image": "missing.png"}], "image 'missing.png' not found"),
    ([{"person": "A", "question": "Q?", "answer": "x", "image": "broken.png"}], "Could not decode"),
    ([{"person": "A", "question": "Q?", "answer": "x", "task": "essay"}], "unknown task 'essay'"),
    ([{"person": "A", "question": "Q?", "answer": "E", "options": {"A": "1", "B": "2"}}], "one of A, B; got 'E'"),
    ([{"person": "A", "question": "Q?", "answer": "A", "options": "A=1"}], "options must be a JSON object"),
    ([{"person": "A", "question": "No blank here.", "answer": "x", "task": "cloze"}], "marks the blank with '__'"),
    ([{"person": "A", "question": "Q?", "answer": "A", "task": "mcq"}], "an mcq row needs options"),
])
def test_every_bad_row_is_one_line_naming_file_row_and_fix(tmp_path, rows, message):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path / "forget.jsonl", rows)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        read_people(path)
    text = str(err.value)
    assert message in text and f"{path}:1" in text and "\n" not in text


def test_file_level_errors(tmp_path):
    (tmp_path / "x.csv").write_text("name,question\nA,Q?\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) person, answer in the header \(found: name, question\); the columns are"):
        read_people(tmp_path / "x.csv")
    (tmp_path / "x.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match=r"x.jsonl:1: not a JSON object"):
        read_people(tmp_path / "x.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        read_people(tmp_path / "e.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_people(tmp_path / "absent.jsonl")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv file"):
        read_people(tmp_path / "x.txt")
    empty = tmp_path / "folder"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl or .csv file in this folder"):
        read_people(empty)


def test_a_folder_of_lists_is_read_in_name_order(tmp_path):
    _jsonl(tmp_path / "b.jsonl", [{"person": "B", "question": "Q?", "answer": "y"}])
    (tmp_path / "a.csv").write_text("person,question,answer\nA,Q?,x\nB,R?,z\n")
    people = read_people(tmp_path)
    assert [p.id for p in people] == ["A", "B"] and len(people[1].generation) == 2


def test_a_person_in_both_lists_and_too_few_retain_people_are_refused():
    forget = read_people(EXAMPLE / "forget.jsonl")
    retain = read_people(EXAMPLE / "retain.csv")
    with pytest.raises(ValueError, match=r"'Vuvos Zibrigo' in both the forget and the retain list"):
        read_request(forget, retain + forget[:1])
    with pytest.raises(ValueError, match="The retain list is empty"):
        ForgetRequest(tuple(forget), ())
    small = read_request(forget, retain[:3])
    with pytest.raises(ValueError, match=r"3 retain people split into .* too few for a people split"):
        small.check_split(PeopleSplit(), minimum=3)
    read_request(forget, retain).check_split(PeopleSplit(), minimum=3)  # the example's 16 are enough


def test_erase_refuses_a_forget_list_without_a_retain_list():
    from toolkit.data.request import as_benchmark

    with pytest.raises(ValueError, match="A forget list needs a retain list"):
        as_benchmark(EXAMPLE / "forget.jsonl")
    from toolkit.data.synthetic import default_benchmark

    with pytest.raises(ValueError, match="is a benchmark, which holds its retain and real people"):
        as_benchmark(default_benchmark(), real=EXAMPLE / "retain.csv")


def test_holding_out_is_seeded_keeps_two_questions_and_takes_every_marked_row(tmp_path):
    from toolkit.data.request import hold_out

    _png(tmp_path / "a.png")
    rows = [{"person": "Ann", "image": "a.png", "question": f"Image question {i}?", "answer": f"a{i}"}
            for i in range(6)]
    rows += [{"person": "Ann", "question": f"What does Ann do, {i}?", "answer": f"b{i}"} for i in range(4)]
    rows += [{"person": "Ann", "question": "Where does Ann live?", "answer": "Oslo", "held_out": True},
             {"person": "Bo", "question": "Bo's job?", "answer": "baker"},
             {"person": "Bo", "question": "Bo's town?", "answer": "Rome", "held_out": "yes"},
             {"person": "Cy", "question": "Cy's job?", "answer": "cook"},
             {"person": "Cy", "question": "Cy's town?", "answer": "Bern"}]
    people = read_people(_jsonl(tmp_path / "f.jsonl", rows))
    kept, held = hold_out(people, 0.2, seed=0)
    by = {p.id: p for p in held}
    # Ann: 10 unmarked generation questions -> 2 drawn, plus the marked one; Bo: the marked one; Cy: 2 questions, none.
    assert len(by["Ann"].generation) == 3 and "Where does Ann live?" in {q.question for q in by["Ann"].generation}
    assert [q.question for q in by["Bo"].generation] == ["Bo's town?"] and "Cy" not in by
    assert [len(p.generation) for p in kept] == [8, 1, 2]
    for k, h in zip(kept, held):  # nothing lost, nothing twice
        assert not {q.question for q in k.generation} & {q.question for q in h.generation}
    assert hold_out(people, 0.2, seed=0) == (kept, held)
    assert hold_out(people, 0.2, seed=1)[1] != held
    assert [len(p.generation) for p in hold_out(people, 0.0)[1]] == [1, 1]  # share 0: the marked rows only
    with pytest.raises(ValueError, match="every question is marked held_out"):
        hold_out(read_people(_jsonl(tmp_path / "g.jsonl", [rows[-3] | {"person": "Di"}])), 0.2)
