"""Eraser fit time and peak memory against each baseline's training on the same forget split, in one run
(goals: fit / training <= 0.1 in time, <= 0.25 in peak memory).

    .venv/bin/python bench/fit_vs_baselines.py [--forget 10] [--model default]

The eraser's fit is the one ``erase`` runs (``EraseConfig().fit_config``: every layer, the retain budget, the
membership gates' rows and calibration, privacy contrastive sets with PGD), timed whole; then the same with
plain forwards (no shared prefix) and without PGD. The baselines train with the defaults of
``toolkit.baselines.BaselineConfig`` (MLLMU-Bench's recipe scaled to the default model). Peak memory is what
each adds to the process's resident set while it runs (the model's weights are resident before both).
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--forget", type=int, default=10)
ap.add_argument("--model", default="default")
args = ap.parse_args()
torch = quiet_torch()

import time  # noqa: E402

from toolkit.baselines import METHODS, BaselineConfig, qa_pairs, unlearn  # noqa: E402
from toolkit.data.mllmu import MLLMUBench  # noqa: E402
from toolkit.config import SHIPPED  # noqa: E402
from toolkit.benchmark_fit import fit_eraser  # noqa: E402
from toolkit.memory import PeakMemory  # noqa: E402
from toolkit.data.synthetic import default_benchmark  # noqa: E402
from toolkit.models.loading import load_model  # noqa: E402

model = load_model(args.model)
bench = MLLMUBench(default_benchmark())
shipped = SHIPPED.with_fit(forget_ratio=args.forget).fit_config(tuple(range(model.num_layers)))
rows = {}
for name, cfg in (("eraser fit", shipped), ("eraser fit, plain forwards", replace(shipped, share_prefix=False)),
                  ("eraser fit, no PGD", replace(shipped, pgd=None))):
    with PeakMemory() as pm:
        t = time.perf_counter()
        fit_eraser(model, bench, cfg)
        rows[name] = (time.perf_counter() - t, pm.added_mb)
forget, retain = qa_pairs(bench.forget(args.forget)), qa_pairs(bench.retain(args.forget))
for method in METHODS:
    res = unlearn(model, forget, retain, BaselineConfig(method=method))
    rows[method] = (res.seconds, res.peak_added_mb)
weights_mb = sum(p.numel() * p.element_size() for p in model.module.parameters()) / 2**20
print(f"machine: {machine()}; {args.model}, forget_{args.forget}; the fit at {model.num_layers} layers, retain budget "
      f"{shipped.retain_budget}; weights {weights_mb:.0f} MB resident before each")
for name, (sec, mb) in rows.items():
    print(f"  {name:28s} {sec:7.1f} s   peak +{mb:7.1f} MB")
fit_s, fit_mb = rows["eraser fit"]
for method in METHODS:
    sec, mb = rows[method]
    print(f"eraser fit / {method} training: time {fit_s:.1f} / {sec:.1f} = {fit_s / sec:.2f} (plain forwards "
          f"{rows['eraser fit, plain forwards'][0] / sec:.2f}, without PGD {rows['eraser fit, no PGD'][0] / sec:.2f}; "
          f"goal <= 0.1); peak memory (weights + added) ({weights_mb:.0f} + {fit_mb:.0f}) / ({weights_mb:.0f} + {mb:.0f})"
          f" = {(weights_mb + fit_mb) / (weights_mb + mb):.2f} (goal <= 0.25)")
