"""What each gate read and the latch contribute, one at a time, on one fit.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/gate_reads_ablation.py``).
Produces: docs/research-log.md, "One read at a time".

One fit of the shipped defaults (every read's rows kept, the fit pool's wrappers in), then for each
variant the rehearsal chooses layer, membership kind, rate and strength with that read (or latch) forced, and the
chosen eraser is measured on held-out people (clean questions) and under the attack suite (forget
leakage, control recall on evaluation people). Variants: the read ``last+mean`` (the earlier gate
settings' read), ``image-max``, ``last+image-max``, each with the latch off; ``image-max`` with the latch
on; and ``last+mean`` without the fit pool (the earlier gate settings exactly).

    .venv/bin/python studies/gate_reads_ablation.py [--model default] [--out results/gate_reads] [--variants A,B]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from toolkit.attacks import NON_ADAPTIVE, AttackConfig, run_attacks
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.config import SHIPPED
from toolkit.job import evaluate_people
from toolkit.headline import headline, people_refused
from toolkit.evaluate import summarize
from toolkit.benchmark_fit import fit_eraser
from toolkit.models.loading import load_model
from toolkit.selection import select_setting

VARIANTS = {
    "last+mean without the fit pool (previous)": dict(gate_reads=("last+mean",), latch=(False,), wrap=0,
                                                      screen_fp="questions"),
    "last+mean": dict(gate_reads=("last+mean",), latch=(False,)),
    "image-max": dict(gate_reads=("image-max",), latch=(False,)),
    "last+image-max": dict(gate_reads=("last+image-max",), latch=(False,)),
    "image-max latched": dict(gate_reads=("image-max",), latch=(True,)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--forget", type=int, default=10)
    ap.add_argument("--out", default="results/gate_reads")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = ap.parse_args()
    chosen = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}; known: {', '.join(VARIANTS)}.")
    out = Path(args.out) / f"{args.model}_forget{args.forget}"
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    bench = MLLMUBench(default_benchmark())
    base = SHIPPED.with_fit(forget_ratio=args.forget)
    layers = tuple(range(model.num_layers))
    start = time.time()
    fit = fit_eraser(model, bench, base.fit_config(layers), progress=True)
    print(f"fit {time.time() - start:.0f} s", flush=True)
    control = base.people.people(bench.retain(args.forget), "evaluation")
    rows, attacks = [], []
    vanilla = evaluate_people(model, bench, base, None, "vanilla")
    for name, options in ((n, VARIANTS[n]) for n in chosen):
        start = time.time()
        # Membership gates only: the linear gate reads the last token whatever the variant says.
        select = replace(base.select, gates=tuple(k for k in base.select.gates if k != "linear"), **options)
        fit_config = replace(base.fit_config(layers), wrap=select.wrap)
        if not select.wrap:  # the previous default had no wrapped rows: fit again without them
            fit_used = fit_eraser(model, bench, fit_config)
        else:
            fit_used = fit
        eraser, sel = select_setting(model, fit_used, bench, fit_config, select)
        df = evaluate_people(model, bench, base, eraser, name)
        summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in (vanilla, df)])
        table = headline(summary).merge(people_refused(pd.concat([vanilla, df])), on="method")
        row = table[table.method == name].iloc[0].to_dict()
        row.update(gate=sel.gate, reads=sel.gate_reads, latch=sel.latch, layer=sel.layer, lam=sel.lam,
                   rehearsal_leak=float(sel.chosen["stand-ins"]), seconds=round(time.time() - start, 1))
        rows.append(row)
        attacks.append(run_attacks(model, bench.forget(args.forget), control, steers=eraser, eraser=eraser,
                                   attacks=[a for a in NON_ADAPTIVE], config=AttackConfig(batch_size=48), label=name))
        print(pd.DataFrame(rows).T.to_string(), flush=True)
    vrow = headline(summarize(vanilla).assign(method="vanilla")).iloc[0].to_dict()
    pd.DataFrame([vrow] + rows).to_csv(out / "heldout.csv", index=False)
    attacks.append(run_attacks(model, bench.forget(args.forget), control, attacks=list(NON_ADAPTIVE),
                               config=AttackConfig(batch_size=48), label="vanilla"))
    table = pd.concat(attacks, ignore_index=True)
    table.to_csv(out / "attacks.csv", index=False)
    print(table.pivot_table(index="attack", columns=["method", "split"], values="rate", sort=False).to_string())


if __name__ == "__main__":
    main()
