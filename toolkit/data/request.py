"""A forget request written by hand: your people, your questions, no benchmark layout.

One row per question, in a JSONL or CSV file (or a folder of them, read in name order):

=============  ========  ===================================================================
column         needed    meaning
=============  ========  ===================================================================
``person``     yes       who the question is about (an id or a name; the people split hashes it)
``question``   yes       the question as a user would ask it
``answer``     yes       the true answer (generation), the correct letter (with ``options``), or
                         the word that fills ``__`` (``task: cloze``)
``image``      no        a path to a picture of the person, relative to the file; empty: a
                         text-only question
``fact``       no        the short fact whose appearance in an answer counts as recall
                         ("Lisbon"); without it recall is ROUGE-L >= 0.5 against ``answer``
``options``    no        multiple choice: ``{"A": .., "B": .., ...}`` (a JSON object; in a CSV
                         its JSON text)
``task``       no        ``generation`` (default), ``mcq`` or ``cloze``
``held_out``   no        ``true``: a forget list's row is never read by the fit, the rehearsal or the
                         calibration, and is scored apart ("Held out"), beside the seeded share
                         :func:`toolkit.erase` holds out of each forget person's questions
=============  ========  ===================================================================

The retain list (the people whose knowledge must stay) has the same format. A
:class:`ForgetRequest` holds both and answers what the fit, the rehearsal and the
evaluation ask an :class:`~toolkit.data.mllmu.MLLMUBench` (``forget``, ``retain``,
``real``, ``test``), so an MLLMU-Bench folder and a hand-written list go through the
same :func:`toolkit.erase.erase`. Every problem with a file is one line naming the file,
the row and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..models.loading import load_image
from .mllmu import MCQ, ClozeQ, GenerationQ, MLLMUBench, Profile

__all__ = ["COLUMNS", "ForgetRequest", "read_people", "read_request", "write_people", "as_benchmark",
           "hold_out"]

COLUMNS = ("person", "question", "answer", "image", "fact", "options", "task", "held_out")
TRUE = {"true", "yes", "1", "y"}
REQUIRED = ("person", "question", "answer")
TASKS = {"generation": "generation", "gen": "generation", "mcq": "mcq", "classification": "mcq", "cloze": "cloze"}
SUFFIXES = (".jsonl", ".csv")


def _rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` for every row of a JSONL / CSV file; ``where`` is ``file:line`` for messages."""
    out = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON object ({err.msg}); write one JSON object per line.") \
                    from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: a JSONL row must be an object with keys {', '.join(REQUIRED)}.")
            out.append((f"{path}:{n}", row))
    elif path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} in the header "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'nothing'}); the columns are "
                                 f"{', '.join(COLUMNS)}.")
            for n, row in enumerate(reader, 2):
                out.append((f"{path}:{n}", row))
    else:
        raise ValueError(f"{path}: a forget or retain list is a .jsonl or .csv file (or a folder of them).")
    return out


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no .jsonl or .csv file in this folder.")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder.")
    return [path]


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _options(where: str, value: Any) -> dict[str, str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f'{where}: options must be a JSON object such as {{"A": "Paris", "B": "Rome"}}.') \
                from None
    if not isinstance(value, dict) or len(value) < 2:
        raise ValueError(f'{where}: options must map at least two letters to answers, e.g. {{"A": "Paris", '
                         '"B": "Rome"}.')
    return {str(k).strip(): str(v) for k, v in value.items()}


def read_people(path: str | Path, *, check_images: bool = True) -> list[Profile]:
    """The people of one forget or retain list (a ``.jsonl`` / ``.csv`` file or a folder of them), in
    the order they first appear, each with every question about them.

    Images are read as bytes (relative paths from the file's folder). Raises ``ValueError`` /
    ``FileNotFoundError`` with one line naming the file, the row and the fix for: a missing column,
    an empty person / question / answer, a missing or undecodable image, an unknown task, an MCQ
    answer that is not one of its option letters, a cloze question without ``__``.
    """
    people: dict[str, dict] = {}
    for file in _files(Path(path)):
        for where, row in _rows(file):
            for key in REQUIRED:
                if not _text(row, key):
                    raise ValueError(f"{where}: empty {key!r}; every row needs a person, a question and an answer.")
            person, question, answer = (_text(row, k) for k in REQUIRED)
            task = TASKS.get(_text(row, "task").lower() or "generation")
            if task is None:
                raise ValueError(f"{where}: unknown task {_text(row, 'task')!r}; use generation, mcq or cloze.")
            options = _options(where, row.get("options"))
            if options is not None:
                task = "mcq"
            entry = people.setdefault(person, {"images": [], "mcq": [], "gen": [], "cloze": [], "held_out": []})
            image_path = _text(row, "image")
            index = None
            if image_path:
                full = Path(image_path) if Path(image_path).is_absolute() else file.parent / image_path
                if not full.is_file():
                    raise FileNotFoundError(f"{where}: image {image_path!r} not found (looked for {full}); paths "
                                            "are relative to the list's folder.")
                data = full.read_bytes()
                if check_images:
                    try:
                        load_image(data)
                    except ValueError as err:
                        raise ValueError(f"{where}: {err}") from None
                if data not in entry["images"]:
                    entry["images"].append(data)
                index = entry["images"].index(data)
            modality = "image" if index is not None else "text"
            if _text(row, "held_out").lower() in TRUE:  # a JSON true reads as "True"
                entry["held_out"].append((task, question))
            if task == "mcq":
                if options is None:
                    raise ValueError(f"{where}: an mcq row needs options, e.g. {{\"A\": \"Paris\", \"B\": \"Rome\"}}.")
                if answer not in options:
                    raise ValueError(f"{where}: the answer of a multiple-choice row is the correct letter, one of "
                                     f"{', '.join(options)}; got {answer!r}.")
                entry["mcq"].append(MCQ(question, options, answer, modality, image=index or 0))
            elif task == "cloze":
                if "__" not in question:
                    raise ValueError(f"{where}: a cloze question marks the blank with '__'.")
                entry["cloze"].append(ClozeQ(question, answer, modality, image=index or 0))
            else:
                entry["gen"].append(GenerationQ(question, answer, modality, _text(row, "fact") or None,
                                                image=index or 0))
    if not people:
        raise ValueError(f"{path}: no rows; write one row per question with {', '.join(REQUIRED)}.")
    return [Profile(pid, tuple(e["images"]), tuple(e["mcq"]), tuple(e["gen"]), tuple(e["cloze"]),
                    {"name": pid, **({"held_out": tuple(e["held_out"])} if e["held_out"] else {})})
            for pid, e in people.items()]


def hold_out(profiles: Sequence[Profile], share: float, seed: int = 0) -> tuple[list[Profile], list[Profile]]:
    """Each person's questions split into the ones the fit may read and the ones it never does.

    Held out: every row marked ``held_out`` in the list, and a seeded share of each person's generation questions
    (``round(share x n)``, at least one where a person has three or more, always leaving two or more to the fit;
    drawn by ``sha256(seed:person:question)``, so the same list gives the same rows). Returns ``(kept, held)``:
    profiles of the same people, ``held`` only for people with a held-out row."""
    if not 0 <= share < 1:
        raise ValueError(f"The held-out share must be in [0, 1), got {share}.")
    kept, held = [], []
    for p in profiles:
        marked = set(p.fields.get("held_out", ()))
        gen = [q for q in p.generation if ("generation", q.question) not in marked]
        draw = min(max(round(share * len(gen)), 1 if share and len(gen) >= 3 else 0), max(0, len(gen) - 2))
        order = sorted(gen, key=lambda q: hashlib.sha256(f"{seed}:{p.id}:{q.question}".encode()).hexdigest())
        drawn = {q.question for q in order[:draw]}

        def out(task: str, q: Any) -> bool:
            return (task, q.question) in marked or (task == "generation" and q.question in drawn)

        parts = {"classification": ("mcq", p.classification), "generation": ("generation", p.generation),
                 "cloze": ("cloze", p.cloze)}
        keep = {k: tuple(q for q in qs if not out(t, q)) for k, (t, qs) in parts.items()}
        away = {k: tuple(q for q in qs if out(t, q)) for k, (t, qs) in parts.items()}
        fields = {k: v for k, v in p.fields.items() if k != "held_out"}
        if not any(keep.values()):
            raise ValueError(f"{p.id!r}: every question is marked held_out; the fit needs at least one question of "
                             "each person to forget. Unmark some rows.")
        kept.append(replace(p, **keep, fields=fields))
        if any(away.values()):
            held.append(replace(p, **away, fields=fields))
    return kept, held


def write_people(path: str | Path, profiles: Iterable[Profile], *, image_dir: str | Path | None = None) -> Path:
    """Write ``profiles`` as a JSONL list :func:`read_people` reads back to equal questions: every
    question of every task, images saved as PNG files under ``image_dir`` (default: ``images/``
    beside the file). For turning benchmark people into a hand-written list, or a starting point."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = Path(image_dir) if image_dir else path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in profiles:
        names = []
        for i, data in enumerate(p.image_bytes):
            f = images / f"{p.id}-{i}.png"
            load_image(data).save(f)
            names.append(str(f.relative_to(path.parent)) if f.is_relative_to(path.parent) else str(f))

        def image(q):
            return names[q.image] if q.modality == "image" else None

        for q in p.classification:
            lines.append({"person": p.id, "question": q.question, "answer": q.answer, "options": q.options,
                          "image": image(q)})
        for q in p.generation:
            lines.append({"person": p.id, "question": q.question, "answer": q.ground_truth, "fact": q.answer_key,
                          "image": image(q)})
        for q in p.cloze:
            lines.append({"person": p.id, "question": q.question, "answer": q.ground_truth, "task": "cloze",
                          "image": image(q)})
    path.write_text("".join(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n" for row in lines))
    return path


@dataclass(frozen=True)
class ForgetRequest:
    """People to forget and people to keep, read as a benchmark.

    Answers the calls the fit, the rehearsal and the evaluation make on an
    :class:`~toolkit.data.mllmu.MLLMUBench`: ``forget(r)`` (the forget list; ``r`` is ignored,
    a request has one list), ``retain(r)`` (the retain list), ``real()`` (an optional second
    group of kept people, reported apart: MLLMU-Bench's real celebrities), ``test(r)`` (empty: a
    hand-written request has no held-out images of the forget people). Retain (and real) people
    are split into fit / validation / evaluation by :class:`~toolkit.data.splits.PeopleSplit`.
    """

    forget_people: tuple[Profile, ...]
    retain_people: tuple[Profile, ...]
    real_people: tuple[Profile, ...] = ()
    source: str = ""
    held_out_people: tuple[Profile, ...] = ()
    """The forget people's held-out questions (:func:`hold_out`): never read by a fit, scored apart."""

    def __post_init__(self) -> None:
        if not self.forget_people:
            raise ValueError("The forget list is empty: name at least one person to forget.")
        if not self.retain_people:
            raise ValueError("The retain list is empty: the fit needs people whose knowledge must stay.")
        forget = {p.id for p in self.forget_people}
        for name, group in (("retain", self.retain_people), ("real", self.real_people)):
            both = sorted(forget & {p.id for p in group})
            if both:
                raise ValueError(f"{', '.join(map(repr, both[:5]))} in both the forget and the {name} list: a person "
                                 "is either forgotten or kept; remove them from one list.")

    def forget(self, ratio: int | None = None) -> list[Profile]:
        return list(self.forget_people)

    def retain(self, ratio: int | None = None) -> list[Profile]:
        return list(self.retain_people)

    def real(self) -> list[Profile]:
        return list(self.real_people)

    def test(self, ratio: int | None = None) -> list[Profile]:
        return []

    def held_out(self, ratio: int | None = None) -> list[Profile]:
        """The forget people's questions no fit reads (:meth:`holding_out`), scored as "Held out"."""
        return list(self.held_out_people)

    def holding_out(self, share: float, seed: int = 0) -> "ForgetRequest":
        """This request with each forget person's held-out questions moved out of :meth:`forget`
        (:func:`hold_out`); a request that holds some out already is returned as it is."""
        if self.held_out_people:
            return self
        kept, held = hold_out(self.forget_people, share, seed)
        return replace(self, forget_people=tuple(kept), held_out_people=tuple(held))

    def has_split(self, name: str) -> bool:
        return False

    def check_split(self, people: Any, minimum: int = 2) -> None:
        """One line if ``people`` (a PeopleSplit) leaves too few retain people in a role: the fit needs
        one, the rehearsal ``minimum`` validation people, the report one evaluation person."""
        counts = people.counts(self.retain_people + self.real_people)
        need = {"fit": 1, "validation": minimum, "evaluation": 1}
        short = {r: counts[r] for r, n in need.items() if counts[r] < n}
        if short:
            n = len(self.retain_people) + len(self.real_people)
            raise ValueError(f"{n} retain people split into {counts['fit']} fit / {counts['validation']} validation / "
                             f"{counts['evaluation']} evaluation (seed {people.seed}): too few for a people split, "
                             f"which needs at least 1 / {minimum} / 1. Add retain people (about 10 or more) or change "
                             "the split's shares.")


def read_request(forget: str | Path | Sequence[Profile], retain: str | Path | Sequence[Profile],
                 real: str | Path | Sequence[Profile] | None = None) -> ForgetRequest:
    """A :class:`ForgetRequest` from list files (or folders, or profiles already read)."""
    def people(x):
        return tuple(x) if isinstance(x, (list, tuple)) else tuple(read_people(x))

    return ForgetRequest(people(forget), people(retain), people(real) if real is not None else (),
                         source=str(forget) if isinstance(forget, (str, Path)) else "")


def _is_mllmu_folder(path: Path) -> bool:
    return path.is_dir() and any((path / s).is_dir() for s in ("Full_Set", "forget_10", "forget_5", "forget_15"))


def as_benchmark(forget: Any, retain: Any = None, real: Any = None) -> MLLMUBench | ForgetRequest:
    """What :func:`erase` reads: an :class:`MLLMUBench` (or its folder, with ``retain=None``), a
    :class:`ForgetRequest`, or forget / retain lists (files, folders of them, or profiles)."""
    folder = isinstance(forget, (str, Path)) and _is_mllmu_folder(Path(forget))
    if isinstance(forget, (MLLMUBench, ForgetRequest)) or folder:
        if retain is not None or real is not None:
            raise ValueError(f"{forget} is a benchmark, which holds its retain and real people: pass no retain or "
                             "real list with it.")
        return MLLMUBench(forget) if folder else forget
    if retain is None:
        raise ValueError("A forget list needs a retain list (the people whose knowledge must stay): "
                         "erase(model, forget=..., retain=...).")
    return read_request(forget, retain, real)
