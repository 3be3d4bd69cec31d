"""Where a chosen eraser's gate fires under each attack, and what leaks where it does not.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/gate_firing.py``).
Produces: docs/research-log.md, "Forgetting under attack: a gate keyed to the person" (where the gate fires).

For an eraser file (e.g. ``results/person_gate/default_forget10/person/eraser.safetensors``), every
non-adaptive attack's prompts about the forget_10 people: the share on which the gate fires (read at its
own layer, as the steering reads it) and the share that leak, per question modality (image / text-only).
``--latch``: also the 256-token biographies (``long``) with the eraser latched, forget leakage, control
recall on the evaluation people and the answers' repetition.

    .venv/bin/python studies/gate_firing.py --model default --eraser FILE [--latch]
"""

from __future__ import annotations

import argparse

import pandas as pd

from toolkit import tracing
from toolkit.attacks import AttackConfig, attack_items, run_attacks
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import PeopleSplit
from toolkit.data.synthetic import default_benchmark
from toolkit.eraser import Eraser
from toolkit.metrics import contains_answer, repetition_rate
from toolkit.models.loading import load_model

ATTACKS = ("clean", "reask", "roleplay", "hypothetical", "translate", "relearn", "long")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--eraser", required=True)
    ap.add_argument("--forget", type=int, default=10)
    ap.add_argument("--latch", action="store_true")
    args = ap.parse_args()
    model, bench = load_model(args.model), MLLMUBench(default_benchmark())
    eraser = Eraser.load(args.eraser, model)
    layer = eraser.layers[0]
    m = eraser.layer_map(layer)
    rows = []
    for attack in ATTACKS:
        probes = attack_items(model, bench.forget(args.forget), attack, "forget")
        fired = {}
        for formatted in (False, True):
            idx = [i for i, p in enumerate(probes) if p.formatted == formatted]
            if idx:
                feats = tracing.capture(model, [probes[i].sample for i in idx], [layer], m.reads,
                                        formatted=formatted)[layer]
                fired.update(zip(idx, (m.gate(feats)[:, 0] > 0.5).tolist()))
        outs = []
        for formatted in (False, True):
            idx = [i for i, p in enumerate(probes) if p.formatted == formatted]
            if idx:
                texts = tracing.generate(model, [probes[i].sample for i in idx], steers=eraser, formatted=formatted,
                                         max_new_tokens=256 if attack == "long" else 32, batch_size=48)
                outs += list(zip(idx, texts))
        for i, text in outs:
            p = probes[i]
            rows.append({"attack": attack, "modality": "image" if p.item.image is not None else "text",
                         "fired": fired[i], "leaked": any(contains_answer(p.prefix + " " + text, k) for k in p.keys)})
    df = pd.DataFrame(rows)
    print(df.groupby(["attack", "modality"]).agg(n=("leaked", "size"), fired=("fired", "mean"),
                                                 leaked=("leaked", "mean")).mul([1, 100, 100]).round(1).to_string())
    print(df.groupby("fired").leaked.mean().mul(100).round(1).rename("leaked when (not) fired").to_string())
    if args.latch:
        control = PeopleSplit().people(bench.retain(args.forget), "evaluation")
        for name, steer in (("prompt only", eraser), ("latched", eraser.with_options(latch=True))):
            table = run_attacks(model, bench.forget(args.forget), control, steers=steer, attacks=("long",),
                                config=AttackConfig(batch_size=48), label=name)
            probes = attack_items(model, bench.forget(args.forget), "long", "forget")
            texts = tracing.generate(model, [p.sample for p in probes], steers=steer, max_new_tokens=256)
            rep = 100 * sum(repetition_rate(t) for t in texts) / len(texts)
            print(name, dict(zip(table.split, table.rate)), f"forget repetition {rep:.1f}%")


if __name__ == "__main__":
    main()
