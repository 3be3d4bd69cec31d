"""How the demo's fit settings were chosen: validation questions only.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/settings_study.py``).
Produces: docs/method.md, "Our extensions: the retain penalty and answer-token rows"; docs/research-log.md, "2026-12-01: Method notes measured on an earlier default".

For each candidate (rank ratio, retain weight, answer weight), fit at one layer
and generate answers to the validation questions (another phrasing of the same
facts, never the evaluation questions) across lambdas; report the setting
:func:`probes.steering_effects.choose_setting` would take (lowest forget leakage
with retain recall within 3 points) and its numbers. PGD is skipped (it does not
flip this model's refusals; docs/results.md), which makes each fit ~25 s.

    .venv/bin/python studies/settings_study.py        # about 13 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from probes.steering_effects import choose_setting, leakage_grid
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import validation_items
from toolkit.config import EraseConfig
from toolkit.benchmark_fit import fit_eraser
from toolkit.data.synthetic import default_benchmark
from toolkit.models.loading import load_model
from toolkit.nullspace import FixedRatio

# Validation recall may fall this much (the demo's rule before the rehearsal; this study predates it:
# its logged figures are on fit people, docs/limits.md).
RETAIN_MAX = 0.03

# (rank ratio, retain weight, answer weight); the first was the demo's before answer-token rows
# (last prompt token only).
CANDIDATES = [(0.5, 20.0, 0.0), (0.8, 40.0, 0.3), (0.9, 40.0, 0.3), (0.95, 40.0, 0.3), (0.97, 40.0, 0.3),
              (1.0, 40.0, 0.3), (0.95, 20.0, 0.3), (0.95, 80.0, 0.3), (0.9, 40.0, 0.6), (0.9, 40.0, 1.0),
              (0.9, 80.0, 0.6)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--lams", default="2,3,4,5,6")
    ap.add_argument("--candidates", default=None,
                    help="RHO:RETAIN_WEIGHT:ANSWER_WEIGHT,... instead of the built-in list")
    args = ap.parse_args()
    lams = [float(x) for x in args.lams.split(",")]
    model, bench = load_model("default"), MLLMUBench(default_benchmark())
    cfg = EraseConfig()  # everything but the three candidate settings, as the demo has it
    r = cfg.forget_ratio
    sets = {"forget": validation_items(bench.forget(r), "forget"),
            "retain": validation_items(cfg.people.people(bench.retain(r), "validation"), "retain")}
    rows = []
    candidates = CANDIDATES if args.candidates is None else [
        tuple(float(x) for x in c.split(":")) for c in args.candidates.split(",")]
    for rho, rw, aw in candidates:
        fit = fit_eraser(model, bench, replace(cfg.fit_config((args.layer,)), rank_policy=FixedRatio(rho),
                                               retain_weight=rw, answer_weight=aw, pgd=None))
        grid = leakage_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam), sets,
                            [args.layer], lams)
        layer, lam = choose_setting(grid, retain_max=RETAIN_MAX)
        at = grid[(grid.layer == layer) & (grid.lam == lam)].set_index("set")
        rows.append({"rank ratio": rho, "retain weight": rw, "answer weight": aw,
                     "positions": fit.eraser.positions, "chosen lambda": lam,
                     "forget leak img": 100 * at.loc["forget"].answer_rate_image,
                     "forget leak txt": 100 * at.loc["forget"].answer_rate_text,
                     "retain recall": 100 * at.loc["retain"].answer_rate})
        print(rows[-1], flush=True)
    print(f"layer {args.layer}, lambdas {lams}; validation questions; percent")
    rates = {"forget leak img": 1, "forget leak txt": 1, "retain recall": 1}  # the settings keep their digits
    print(pd.DataFrame(rows).round(rates).to_markdown(index=False))


if __name__ == "__main__":
    main()
