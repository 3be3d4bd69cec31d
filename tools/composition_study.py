"""Two erasers for two disjoint forgetting requests, applied together (issue: composition).

Eraser A forgets ``forget_5``; eraser B forgets ``forget_15`` minus ``forget_10``
(disjoint from A). Both are fitted with the demo's settings at the demo's layer
and strength; then A, B and A+B (``Eraser.compose``) are evaluated on both forget
groups and on retain people outside ``forget_15``. Prints one table (percent).

    .venv/bin/python tools/composition_study.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from toolkit.data.mllmu import MLLMUBench
from toolkit.demo import DemoConfig
from toolkit.eraser import Eraser
from toolkit.evaluate import items_from_profiles, run_items
from toolkit.fit import fit_eraser
from toolkit.models.default import default_benchmark
from toolkit.models.loading import load_model


class _Request(MLLMUBench):
    """The benchmark with one custom forget group (retain: everyone else among the fictitious people)."""

    def __init__(self, root, forget_people, everyone):
        super().__init__(root)
        self._forget = forget_people
        ids = {p.id for p in forget_people}
        self._retain = [p for p in everyone if p.id not in ids]

    def forget(self, ratio):
        return self._forget

    def retain(self, ratio):
        return self._retain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=None, help="default: the demo's chosen layer (results/demo)")
    ap.add_argument("--lam", type=float, default=None)
    ap.add_argument("--retain-people", type=int, default=20)
    args = ap.parse_args()
    chosen = Path("results/demo/metrics.json")
    demo = json.loads(chosen.read_text()) if chosen.exists() else {"layer": 7, "lam": 4.0}
    layer = args.layer if args.layer is not None else demo["layer"]
    lam = args.lam if args.lam is not None else demo["lam"]

    model, root = load_model("default"), default_benchmark()
    bench = MLLMUBench(root)
    group_a = bench.forget(5)
    ids10 = {p.id for p in bench.forget(10)}
    group_b = [p for p in bench.forget(15) if p.id not in ids10]
    everyone = bench.forget(15) + bench.retain(15)
    cfg = DemoConfig()
    erasers = {}
    for name, group in (("A", group_a), ("B", group_b)):
        fit = fit_eraser(model, _Request(root, group, everyone), cfg.fit_config((layer,), lam), progress=True)
        erasers[name] = fit.eraser
    erasers["A+B"] = Eraser.compose(erasers["A"], erasers["B"])
    items = (items_from_profiles(group_a, "A") + items_from_profiles(group_b, "B")
             + items_from_profiles(bench.retain(15)[: args.retain_people], "Retain"))
    rows = []
    for name, eraser in (("vanilla", None), *erasers.items()):
        df = run_items(model, items, steers=eraser, batch_size=48, progress=name)
        gen, mcq = df[df.task == "generation"], df[df.task == "classification"]
        rows.append({"applied": name,
                     "A leak": 100 * gen[gen.split == "A"].leaked.mean(),
                     "B leak": 100 * gen[gen.split == "B"].leaked.mean(),
                     "retain gen ROUGE-L": 100 * gen[gen.split == "Retain"].rougeL.mean(),
                     "retain recall": 100 * gen[gen.split == "Retain"].leaked.mean(),
                     "retain MCQ": 100 * mcq[mcq.split == "Retain"].accuracy.mean()})
    print(f"layer {layer}, lambda {lam}; A = forget_5 ({len(group_a)} people), B = forget_15 - forget_10 "
          f"({len(group_b)} people); retain: first {args.retain_people} of retain_85")
    print(pd.DataFrame(rows).round(1).to_markdown(index=False))


if __name__ == "__main__":
    main()
