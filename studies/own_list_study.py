"""A forget list as a user writes one, then the benchmark's own questions about the same people.

A study, not part of the installed library (run from a clone). Produces: docs/results.md, "The name gate
(`--name-gate`): the attack suite again, and a list in a user's own words".

For a shipped default: ``--people`` benchmark forget people (forget_10, in id order from ``--first``) written as a
hand-written list of five questions each in our words, not the benchmark's (three on the portrait, two naming the
person; ``--words a`` or ``b``, two sets written apart), with ``examples/my_people/retain.csv`` as the retain list.
``toolkit.erase`` fits and chooses on that list alone. Then every *benchmark* generation question about those
people (never read by the fit, the rehearsal or the calibration) and about ``--strangers`` benchmark retain people
in neither list is answered by vanilla, the chosen eraser, and the same eraser with a name gate
(:mod:`toolkit.names`, what ``erase --name-gate`` adds after the rehearsal). Percent: forget leakage and strangers'
recall, per question kind.

    .venv/bin/python studies/own_list_study.py [--model default] [--words a] [--out results/own_list]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from toolkit.config import SHIPPED
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.request import read_people
from toolkit.data.synthetic import default_benchmark
from toolkit.evaluate import run_items
from toolkit.job import erase
from toolkit.models.loading import load_model
from toolkit.names import NameKeys
from toolkit.selection import fact_hits

ROOT = Path(__file__).resolve().parent.parent
RETAIN = ROOT / "examples" / "my_people" / "retain.csv"

# Five questions a person in a user's own words: (on the portrait?, question, profile field the answer holds).
WORDS = {
    "a": [(True, "Who is this?", "name"),
          (True, "Which town does the person pictured here come from?", "Birthplace"),
          (True, "What does the person in this photo do for work?", "Occupation"),
          (False, "What animal does {name} keep as a pet?", "Pet"),
          (False, "What does {name} like to do in their free time?", "Hobby")],
    "b": [(True, "Can you tell me this person's name?", "name"),
          (True, "What is this person's job?", "Occupation"),
          (True, "What does the person shown enjoy doing on weekends?", "Hobby"),
          (False, "Tell me the hometown of {name}.", "Birthplace"),
          (False, "Does {name} have a pet? Which one?", "Pet")],
}


def write_list(path: Path, people, words: str) -> Path:
    """The forget list as JSONL, one portrait per person saved beside it."""
    images = path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for p in people:
        image = images / f"{p.id}.png"
        p.images[0].save(image)
        for portrait, question, key in WORDS[words]:
            fact = str(p.fields[key])
            row = {"person": p.name, "question": question.format(name=p.name),
                   "answer": f"{fact}.", "fact": fact}
            if portrait:
                row["image"] = f"images/{image.name}"
            lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def people_and_strangers(bench: MLLMUBench, first: int, n: int, strangers: int) -> tuple[list, list]:
    """``n`` forget_10 people from ``first`` (in id order), and the first ``strangers`` retain people (in id order)
    who are in no list: the study's and ``tests/test_own_list.py``'s people."""
    people = sorted(bench.forget(10), key=lambda p: p.id)[first:first + n]
    kept = {p.name for p in read_people(RETAIN)}
    return people, [p for p in sorted(bench.retain(10), key=lambda p: p.id) if p.name not in kept][:strangers]


def benchmark_questions(people, strangers) -> list:
    """Every benchmark generation question about the listed people (split "forget") and the strangers."""
    return items_from_profiles(people, "forget", ("generation",)) + \
        items_from_profiles(strangers, "strangers", ("generation",))


def rates(df: pd.DataFrame) -> dict:
    out = {}
    for kind in ("image", "text"):
        part = df[df.modality == kind]
        out[kind] = round(100 * float(fact_hits(part).mean()), 1) if len(part) else float("nan")
        out[f"n_{kind}"] = len(part)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--people", type=int, default=4)
    ap.add_argument("--first", type=int, default=0, help="the first forget person taken (in id order)")
    ap.add_argument("--strangers", type=int, default=20)
    ap.add_argument("--words", choices=sorted(WORDS), default="a")
    ap.add_argument("--out", default="results/own_list")
    ap.add_argument("--reads", default=None, help="the reads the rehearsal may choose among (default: the shipped)")
    args = ap.parse_args()
    config = SHIPPED if args.reads is None else SHIPPED.with_select(gate_reads=tuple(args.reads.split(",")))
    out = Path(args.out) / (f"{args.model}_{args.words}_{args.first}" + (f"_{args.reads}" if args.reads else ""))
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    bench = MLLMUBench(default_benchmark())
    people, strangers = people_and_strangers(bench, args.first, args.people, args.strangers)
    listed = write_list(out / "forget.jsonl", people, args.words)
    start = time.time()
    result = erase(model, listed, RETAIN, config=config, out=out / "erase", progress=True)
    seconds = round(time.time() - start, 1)
    eraser = result.eraser
    named = eraser.with_names(NameKeys.from_names([p.name for p in people]))
    items = benchmark_questions(people, strangers)
    rows = []
    for label, steers in (("vanilla", None), ("eraser", eraser), ("eraser + name gate", named)):
        df = run_items(model, items, steers=steers, batch_size=32, progress=True, label=label)
        df["leaked"] = fact_hits(df)
        for split in ("forget", "strangers"):
            r = rates(df[df.split == split])
            rows.append({"method": label, "split": split, **r})
        df.assign(method=label).to_csv(out / f"answers_{label.replace(' ', '_').replace('+', 'and')}.csv",
                                       index=False)
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False)
    info = {k: result.info[k] for k in ("gate", "gate_reads", "layer", "lam", "positions", "latch", "settings")}
    info.update(seconds=seconds, people=[p.name for p in people], strangers=len(strangers),
                report_table=result.table.to_dict("records"))
    (out / "info.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps({k: v for k, v in info.items() if k != "report_table"}, default=str))
    print(result.table.to_string())
    print(table.to_string())


if __name__ == "__main__":
    main()
