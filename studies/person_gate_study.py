"""A gate keyed to the person, against today's gate: the rehearsal's choice, then the attack suite.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/person_gate_study.py``).
Produces: docs/results.md, "Forgetting under attack" and (``--eraser``, ``--names``) "The name gate".

For one shipped default and one forget split, two runs of :func:`toolkit.erase.erase` on the same
people: ``person`` (the defaults: reads among last+mean / image-max / last+image-max, the best of
each tried in the generation grid, the fit pool's wrappers in the gate rows, calibration and rehearsal, screening charged per
person) and ``prompt`` (the earlier gate settings exactly: last+mean only, no latch, no wrappers, the
screening charged per question). Then every non-adaptive attack of
:mod:`toolkit.attacks` (the evaluation pool, which neither run ever saw) and the white-box
``gate_text`` suffix search and ``gate_pgd`` (PGD on the image against the gate's score), on the forget people and, as control, the evaluation people (never
in a fit, a calibration or a choice), for vanilla and both erasers.

    .venv/bin/python studies/person_gate_study.py [--model default] [--forget 10] [--out results/person_gate]

``--eraser PATH``: attack a saved eraser (run ``person``, e.g. ``make demo``'s ``results/demo/eraser.safetensors``,
the same job) instead of erasing again. ``--names``: add the run ``person+names``, the ``person`` eraser with a
name gate for the forget people (:mod:`toolkit.names`; ``--name-gate`` of ``erase`` adds the same after the
rehearsal, which chooses without it).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from toolkit.attacks import NON_ADAPTIVE, AttackConfig, run_attacks
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.config import SHIPPED, EraseConfig
from toolkit.eraser import Eraser
from toolkit.job import erase
from toolkit.models.loading import load_model


def configs(base: EraseConfig) -> dict[str, EraseConfig]:
    previous = replace(base.select, gate_reads=("last+mean",), latch=(False,), wrap=0, screen_top=1,
                       screen_fp="questions")
    return {"person": base, "prompt": replace(base, select=previous)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--forget", type=int, default=10)
    ap.add_argument("--out", default="results/person_gate")
    ap.add_argument("--attacks", default=",".join([a for a in NON_ADAPTIVE] + ["gate_text", "gate_pgd"]))
    ap.add_argument("--runs", default="person,prompt")
    ap.add_argument("--eraser", default=None, help="a saved eraser to attack as the run 'person' (no erase)")
    ap.add_argument("--names", action="store_true", help="add the run 'person+names' (a name gate)")
    ap.add_argument("--no-vanilla", action="store_true", help="attack the erasers only")
    args = ap.parse_args()
    out = Path(args.out) / f"{args.model}_forget{args.forget}"
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    bench = MLLMUBench(default_benchmark())  # both defaults were trained on the same synthetic benchmark
    base = SHIPPED.with_fit(forget_ratio=args.forget)
    erasers, heads, timing = {}, [], {}
    if args.eraser:
        erasers["person"] = Eraser.load(args.eraser, model)
    for name in ([] if args.eraser else args.runs.split(",")):
        start = time.time()
        result = erase(model, bench, config=configs(base)[name], out=out / name, progress=True)
        timing[name] = round(time.time() - start, 1)
        erasers[name] = result.eraser
        heads.append(result.table.assign(run=name))
        print(result.table.to_string(), flush=True)
    if heads:
        pd.concat(heads).to_csv(out / "headline.csv", index=False)
    if args.names:
        erasers["person+names"] = erasers["person"].with_names([p.name for p in bench.forget(args.forget)])
    split = base.people
    control = split.people(bench.retain(args.forget), "evaluation")
    forget = bench.forget(args.forget)
    attacks = tuple(args.attacks.split(","))
    frames = []
    for name, eraser in ([] if args.no_vanilla else [("vanilla", None)]) + list(erasers.items()):
        start = time.time()
        frames.append(run_attacks(model, forget, control, steers=eraser, eraser=eraser,
                                  attacks=[a for a in attacks if eraser is not None or not a.startswith("gate_")],
                                  config=AttackConfig(batch_size=48), label=name))
        timing[f"attacks {name}"] = round(time.time() - start, 1)
        print(frames[-1].to_string(), flush=True)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out / "attacks.csv", index=False)
    wide = table.pivot_table(index="attack", columns=["method", "split"], values="rate", sort=False)
    (out / "attacks.md").write_text(wide.to_markdown())
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print(wide.to_string())
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
