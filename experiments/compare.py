"""``make compare``: MLLMEraser against the training-based baselines on the same model, data and metrics.

Rows: vanilla, MLLMEraser (the demo's chosen layer and lambda), GA, GA_Diff,
KL_Min, NPO and ASRU's activation redirection. Columns: forget / test / retain /
real metrics (percent), ASRU reward, fit or training time, and peak memory added.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from toolkit.baselines import METHODS, BaselineConfig, RedirectConfig, qa_pairs, redirect, unlearn
from toolkit.data.mllmu import MLLMUBench
from experiments.demo import DemoConfig, _evaluate, headline
from toolkit.evaluate import summarize
from toolkit.fit import question_samples
from toolkit.memory import PeakMemory
from toolkit.data.synthetic import default_benchmark
from toolkit.models.loading import load_model

__all__ = ["run_compare"]


def run_compare(out_dir: str | Path = "results/compare", cfg: DemoConfig = DemoConfig(),
                demo_metrics: str | Path | None = None) -> pd.DataFrame:
    from toolkit.fit import fit_eraser

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    r = cfg.forget_ratio
    demo_dir = Path(demo_metrics or "results/demo")
    if not (demo_dir / "metrics.json").exists():
        from experiments.demo import run_demo

        run_demo(demo_dir, cfg, model=model)
    chosen = json.loads((demo_dir / "metrics.json").read_text())
    layer, lam = chosen["layer"], chosen["lam"]
    # Time the eraser's fit for the chosen layer alone: what a user pays once the setting is known.
    with PeakMemory() as meter:
        start = time.time()
        fit = fit_eraser(model, bench, cfg.fit_config((layer,), lam))
        fit_seconds = time.time() - start
    costs = {"MLLMEraser": (fit_seconds, meter.added_mb)}
    frames = [_evaluate(model, bench, cfg, None, "vanilla"), _evaluate(model, bench, cfg, fit.eraser, "MLLMEraser")]
    forget_qa, retain_qa = qa_pairs(bench.forget(r)), qa_pairs(bench.retain(r))
    for method in METHODS:
        res = unlearn(model, forget_qa, retain_qa, BaselineConfig(method=method), progress=True)
        costs[method] = (res.seconds, res.peak_added_mb)
        frames.append(_evaluate(res.model, bench, cfg, None, method))
    res = redirect(model, question_samples(bench.forget(r), "f"), question_samples(bench.retain(r)[:40], "r"),
                   fit.direction.vectors[model.num_layers // 2] if model.num_layers // 2 in fit.direction.vectors
                   else _middle_direction(model, fit), RedirectConfig())
    costs["ASRU redirect"] = (res.seconds, res.peak_added_mb)
    frames.append(_evaluate(res.model, bench, cfg, None, "ASRU redirect"))
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline(summary)
    reward = summary[summary.task == "generation"].groupby("method", sort=False).apply(
        lambda g: round(100 * float((g.asru_reward * g.n).sum() / g.n.sum()), 1), include_groups=False)
    table["asru_reward"] = table.method.map(reward)
    table["fit_or_train_s"] = table.method.map(lambda m: round(costs[m][0], 1) if m in costs else 0.0)
    table["peak_added_mb"] = table.method.map(lambda m: round(costs[m][1], 1) if m in costs else 0.0)
    summary.to_csv(out / "summary.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(table.to_markdown(index=False))
    return table


def _middle_direction(model, fit):
    """The refusal-minus-recall direction at the middle layer, for ASRU's redirection."""
    from toolkit.direction import erasure_direction

    plus, minus = fit.contrast.for_variant("multimodal")
    layer = model.num_layers // 2
    return erasure_direction(model, plus, minus, [layer]).vectors[layer]
