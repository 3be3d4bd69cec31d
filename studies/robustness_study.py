"""Forgetting under attack on the LLaVA default: the robustness table of docs/results.md.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/robustness_study.py``).
Produces: docs/research-log.md, "Forgetting under attack with the previous gate, beside NPO and ASRU".

Methods: vanilla; MLLMEraser with the gate `make demo` chooses on the rehearsal
for forget_10 on the face-rule default (prototype_whitened, layer 7, lambda 2, 2% target
rate, positions "prompt"; ``--gate/--gate-layer/--gate-lam`` to change), and the paper's linear gate
fitted with the demo's settings (layer 7, lambda 4) applied with positions
"prompt" and "all"; both with the real-person set held out of the fit and of the
gate's calibration; NPO at MLLMU-Bench's budget (the training baseline with the
lowest image leakage in `make compare`); ASRU's redirection stage. Every attack
is run on the forget_10 people and, as the control, on the 30 real people, whom
no fit, calibration, setting choice or baseline training ever saw.

    .venv/bin/python studies/robustness_study.py [--out results/robustness]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from toolkit.attacks import AttackConfig, run_attacks
from toolkit.baselines import BaselineConfig, asru_direction, qa_pairs, unlearn
from toolkit.baselines.redirect import redirect
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.config import EraseConfig
from toolkit.benchmark_fit import fit_eraser
from toolkit.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/robustness")
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--lam", type=float, default=4.0)
    ap.add_argument("--gate", default="prototype_whitened", help="membership gate kind (the demo's choice)")
    ap.add_argument("--gate-layer", type=int, default=7)
    ap.add_argument("--gate-lam", type=float, default=2.0)
    ap.add_argument("--gate-fpr", type=float, default=0.02)
    ap.add_argument("--skip-baselines", action="store_true", help="vanilla and the erasers only")
    args = ap.parse_args()
    start = time.time()
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    demo = EraseConfig()
    forget, control = bench.forget(demo.forget_ratio), bench.real()
    # The control people stay out of the fit (null space and penalty).
    cfg = replace(demo.fit_config((args.layer,), lam=args.lam), include_real=False)
    fit = fit_eraser(model, bench, cfg, progress=True)
    eraser = fit.eraser
    config = AttackConfig()
    tables = [run_attacks(model, forget, control, label="vanilla", config=config)]
    gate_cfg = replace(demo.fit_config((args.gate_layer,), lam=args.gate_lam), include_real=False, gate=args.gate,
                       gate_fpr=args.gate_fpr)
    gated = fit_eraser(model, bench, gate_cfg, progress=True, contrast=fit.contrast).eraser
    tables.append(run_attacks(model, forget, control, steers=gated, eraser=gated, label=f"MLLMEraser {args.gate}",
                              config=config))
    for positions in ("prompt", "all"):
        e = eraser.with_options(positions=positions)
        tables.append(run_attacks(model, forget, control, steers=e, eraser=e, label=f"MLLMEraser linear {positions}",
                                  config=config))
    if args.skip_baselines:
        return _write(tables, args, start)
    npo = unlearn(model, qa_pairs(forget), qa_pairs(bench.retain(demo.forget_ratio)), BaselineConfig(method="NPO"))
    tables.append(run_attacks(npo.model, forget, control, label="NPO (MLLMU budget)", config=config))
    # ASRU's stage 1 as published (the research log's figures were recorded with the earlier stand-in: the
    # refusal-minus-recall difference at the middle layer, the whole MLP trained on prompts).
    direction, _ = asru_direction(model, forget)
    asru = redirect(model, qa_pairs(forget), qa_pairs(bench.retain(demo.forget_ratio)[:40]), direction)
    tables.append(run_attacks(asru.model, forget, control, label="ASRU redirect", config=config))
    _write(tables, args, start)


def _write(tables: list, args: argparse.Namespace, start: float) -> None:
    long = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    long.to_csv(out / "robustness_long.csv", index=False)
    wide = long.pivot_table(index="attack", columns=["split", "method"], values="rate", sort=False)
    wide.to_csv(out / "robustness.csv")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(wide.to_string())
    print(f"({time.time() - start:.0f} s)")
    (out / "robustness.md").write_text(wide.to_markdown())


if __name__ == "__main__":
    main()
