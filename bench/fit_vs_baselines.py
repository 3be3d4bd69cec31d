"""Eraser fit time and memory against each baseline's training on the same forget split (goal: ratio <= 0.1).

    .venv/bin/python bench/fit_vs_baselines.py [--forget 10] [--layer 6]

The eraser's fit is timed whole (privacy contrastive sets with PGD, retain and
forget captures, eigendecomposition, solve) and also without PGD. The baselines
train with the defaults of ``toolkit.baselines.BaselineConfig`` (MLLMU-Bench's
recipe scaled to the default model). Peak memory is what each adds to the
process's resident set while it runs.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--forget", type=int, default=10)
ap.add_argument("--layer", type=int, default=6)
args = ap.parse_args()
torch = quiet_torch()

import time  # noqa: E402

from toolkit.baselines import METHODS, BaselineConfig, qa_pairs, unlearn  # noqa: E402
from toolkit.data.mllmu import MLLMUBench  # noqa: E402
from toolkit.fit import FitConfig, fit_eraser  # noqa: E402
from toolkit.memory import PeakMemory  # noqa: E402
from toolkit.data.synthetic import default_benchmark  # noqa: E402
from toolkit.models.loading import load_model  # noqa: E402

model = load_model("default")
bench = MLLMUBench(default_benchmark())
rows = {}
for name, cfg in (("eraser fit", FitConfig(layers=(args.layer,), forget_ratio=args.forget)),
                  ("eraser fit, no PGD", FitConfig(layers=(args.layer,), forget_ratio=args.forget, pgd=None))):
    with PeakMemory() as pm:
        t = time.perf_counter()
        fit_eraser(model, bench, cfg)
        rows[name] = (time.perf_counter() - t, pm.added_mb)
forget, retain = qa_pairs(bench.forget(args.forget)), qa_pairs(bench.retain(args.forget))
for method in METHODS:
    res = unlearn(model, forget, retain, BaselineConfig(method=method))
    rows[method] = (res.seconds, res.peak_added_mb)
print(f"machine: {machine()}; forget_{args.forget}, eraser at layer {args.layer}")
for name, (sec, mb) in rows.items():
    print(f"  {name:20s} {sec:7.1f} s   peak +{mb:7.1f} MB")
for method in METHODS:
    print(f"eraser fit / {method} training: {rows['eraser fit'][0] / rows[method][0]:.2f} "
          f"(without PGD {rows['eraser fit, no PGD'][0] / rows[method][0]:.2f}; goal <= 0.1)")
