"""Gate kinds and edits side by side on the LLaVA default (forget_10): the research log's gate table (docs/research-log.md).

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/gate_study.py``).
Produces: docs/research-log.md, "2026-12-02: Gate kinds and edits side by side".

For each gate kind (the demo's fit: whitened prototype, prototype and logistic
membership gates at the demo's 2% target rate, the same fit's linear null-space
map) x edit (``add``: the paper's ``h + lam g d``; ``rotate``: the same sum
rescaled to ``|h|``) x lambda, at the layer the demo chose for forget_10 (5)
with ``positions="prompt"``:

* on the rehearsal (validation people only): stand-in leakage, refusals and
  3-gram repetition, validation recall;
* on the forget people and the **evaluation** people: forget leakage (image /
  text), MCQ and cloze accuracy, Test_Set image leakage, held-out retain recall.

Nothing here chooses a setting: the demo's choice comes from its own rehearsal.

    .venv/bin/python studies/gate_study.py          # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd

from toolkit.config import EraseConfig
from toolkit.headline import headline
from toolkit.job import evaluate_people
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.evaluate import summarize
from toolkit.benchmark_fit import eraser_with_gate, fit_eraser, refit_forget
from toolkit.models.loading import load_model
from toolkit.selection import rehearsal_items, score_setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--gate-fpr", type=float, default=0.02)
    ap.add_argument("--lams", default="1,2,4,8")
    ap.add_argument("--eval-lams", default="2,8", help="lambdas also measured on evaluation people")
    ap.add_argument("--out", default="results/gate_study.csv")
    args = ap.parse_args()
    lams = [float(x) for x in args.lams.split(",")]
    eval_lams = {float(x) for x in args.eval_lams.split(",")}
    t0 = time.time()
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    demo = EraseConfig(in_fit_people=0)
    cfg = replace(demo.fit_config((args.layer,)), gate="prototype_whitened", gate_fpr=args.gate_fpr, positions="prompt")
    fit = fit_eraser(model, bench, cfg)
    sets, stand = rehearsal_items(bench, demo.forget_ratio, demo.people)
    rows = []
    for kind in ("prototype_whitened", "prototype", "logistic", "linear"):
        kcfg = replace(cfg, gate=kind)
        final = eraser_with_gate(model, fit, kcfg, kind)
        rehearsal = refit_forget(model, fit, stand, kcfg)
        for edit in ("add", "rotate"):
            for lam in lams:
                row = {"gate": kind, "edit": edit, "lam": lam,
                       **{f"rehearsal {k}": v for k, v in score_setting(model, sets, rehearsal.with_options(
                           lam=lam, edit=edit), 48).items()}}
                if lam in eval_lams:
                    df = evaluate_people(model, bench, demo, final.with_options(lam=lam, edit=edit), "x")
                    h = headline(summarize(df).assign(method="x")).iloc[0]
                    row.update({k: h[k] for k in ("forget_leak_img", "forget_leak_txt", "forget_mcq_acc",
                                                  "forget_cloze_acc", "test_leak_img", "retain_recall",
                                                  "retain_mcq_acc", "real_recall", "forget_repetition")})
                rows.append(row)
                print(pd.DataFrame([row]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    print(table.round(3).to_markdown(index=False))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
