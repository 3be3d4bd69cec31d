"""The choice and the evaluation with and without generating the rows a gate leaves alone, in one run.

    .venv/bin/python bench/choice_cost.py [--model default] [--seed 0] [--json out.json]

Fits the shipped setting once (``erase``'s fit: every layer, people seed ``--seed``), then runs the rehearsal
(:func:`toolkit.selection.select_setting`) with every rehearsal question generated for every candidate
(``generate_all=True``, the earlier cost) and with only the questions each candidate's gate touches at prefill
(the default), then the evaluation of the chosen eraser both ways. The two runs of each alternate nothing (each
is one long pass), so machine load between them is not separated; the answers are compared one by one. Prints
the seconds, the generated shares, whether the grid, the choice and every answer are the same, and the ratios.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="default")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json", type=Path, default=None)
args = ap.parse_args()
torch = quiet_torch()

import pandas as pd  # noqa: E402

from toolkit.benchmark_fit import fit_eraser  # noqa: E402
from toolkit.config import SHIPPED  # noqa: E402
from toolkit.data.mllmu import MLLMUBench  # noqa: E402
from toolkit.data.synthetic import default_benchmark  # noqa: E402
from toolkit.job import evaluate_people  # noqa: E402
from toolkit.models.loading import load_model  # noqa: E402
from toolkit.selection import select_setting  # noqa: E402

model = load_model(args.model)
bench = MLLMUBench(default_benchmark())
config = SHIPPED.with_fit(people=replace(SHIPPED.people, seed=args.seed))
fit_config = config.fit_config(tuple(range(model.num_layers)))
t = time.perf_counter()
fit = fit_eraser(model, bench, fit_config)
fit_s = time.perf_counter() - t
out = {"machine": machine(), "model": args.model, "seed": args.seed, "fit_s": round(fit_s, 1)}
choices = {}
for label, generate_all in (("every row", True), ("rows the gate touches", False)):
    t = time.perf_counter()
    eraser, sel = select_setting(model, fit, bench, fit_config, config.select, generate_all=generate_all)
    choices[label] = (eraser, sel, time.perf_counter() - t)
(e_all, s_all, t_all), (e_cut, s_cut, t_cut) = choices["every row"], choices["rows the gate touches"]
shares = [c for c in s_cut.grid if c.startswith("generated ")]
same_grid = s_cut.grid.drop(columns=shares + ["prefill pass"]).equals(s_all.grid)
key = lambda s: (s.gate, s.gate_reads, s.gate_fpr, s.layer, s.lam, s.positions, s.latch)  # noqa: E731
sizes = {c: s_cut.grid[c].iloc[1:].mean() for c in shares}
t = time.perf_counter()
vanilla = evaluate_people(model, bench, config, None, "vanilla")
t_vanilla = time.perf_counter() - t
t = time.perf_counter()
full = evaluate_people(model, bench, config, e_cut, "MLLMEraser")
t_full = time.perf_counter() - t
t = time.perf_counter()
cheap = evaluate_people(model, bench, config, e_cut, "MLLMEraser", unsteered=vanilla)
t_cheap = time.perf_counter() - t
differ = int((cheap.output.fillna("") != full.output.fillna("")).sum())
out.update({
    "candidates": len(s_all.grid) - 1, "prefill_passes": int(s_cut.grid["prefill pass"].eq(True).sum()),
    "choice": str(key(s_cut)), "same_choice": key(s_all) == key(s_cut),
    "same_grid": bool(same_grid), "select_s": {"every row": round(t_all, 1), "rows the gate touches": round(t_cut, 1)},
    "generated_share_per_candidate": {c.removeprefix("generated "): round(v, 3) for c, v in sizes.items()},
    "evaluation_s": {"vanilla": round(t_vanilla, 1), "eraser, every row": round(t_full, 1),
                     "eraser, rows the gate touches": round(t_cheap, 1)},
    "evaluation_generated_share": round(float(cheap.generated.mean()), 3),
    "evaluation_generated_share_by_split": {k: round(float(v), 3) for k, v in cheap.groupby("split").generated.mean().items()},
    "evaluation_answers_differing": differ, "evaluation_items": len(full),
})
job_before = fit_s + t_all + t_vanilla + t_full
job_after = fit_s + t_cut + t_vanilla + t_cheap
out["ratios"] = {"rehearsal after / before": round(t_cut / t_all, 3),
                 "eraser evaluation after / before": round(t_cheap / t_full, 3),
                 "fit + rehearsal + evaluation after / before": round(job_after / job_before, 3)}
print(json.dumps(out, indent=1))
if args.json:
    args.json.write_text(json.dumps(out, indent=1))
