"""``make demo``: the whole erasure on the embedded default, start to result.

People are split by :class:`toolkit.data.splits.PeopleSplit` (seeded hash of
the ID): fit people build the null space, penalty, answer rows and contrastive
pairs; validation people choose the settings; evaluation people are only
reported.

1-2. :func:`toolkit.erase` with the shipped preset (:data:`toolkit.config.SHIPPED`): fit the eraser for a forget split at every layer
   (one capture pass) from fit people only, then choose gate, layer, strength and
   threshold on the rehearsal (:mod:`toolkit.selection`): validation people stand
   in for the forget list.
3. Calibrate the naive alternative, the unconditional direction ``lam * d`` at
   the same layer, to the same rehearsal forgetting.
4. Evaluate vanilla, eraser and direction on Forget, Test, Paraphrase and on
   the *evaluation* retain and real people (the headline), with fit people beside
   them, labelled "in fit"; write report.md, metrics.json, results.csv and plots
   under ``results/demo``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from toolkit import tracing
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.config import SHIPPED, EraseConfig
from toolkit.job import erase, evaluate_people
from toolkit.headline import headline_table
from toolkit.evaluate import run_items, summarize
from toolkit.benchmark_fit import eraser_with_gate
from toolkit.models.loading import LoadedModel, load_model
from toolkit.selection import fact_rate, match_leakage, rehearsal_items

__all__ = ["run_demo", "direction_steer"]


def direction_steer(layer: int, direction: torch.Tensor, lam: float) -> tracing.Steer:
    """The unconditional alternative: add ``lam * d`` whatever the input."""
    d = direction.to(torch.float32)
    return tracing.Steer(layer, lambda h: lam * d.to(h.device, h.dtype).expand_as(h), "prompt")


def run_demo(out_dir: str | Path = "results/demo", cfg: EraseConfig = SHIPPED, model: LoadedModel | None = None,
             bench_root: str | Path | None = None) -> dict:
    """:func:`toolkit.erase` on a benchmark folder, then two alternatives at the chosen layer: the
    paper's linear gate with the chosen edit, and the direction alone calibrated to the same rehearsal
    forgetting. Writes report.md, metrics.json, results.csv, plots and the eraser under ``out_dir``."""
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model("default")
    bench = MLLMUBench(bench_root or default_benchmark())
    print(f"MLLMEraser demo: forget_{cfg.forget_ratio} of {bench.root} on {model.name}", flush=True)
    res = erase(model, bench, config=cfg, progress=True)
    sel, fit, layer, lam = res.selection, res.fit, res.selection.layer, res.selection.lam

    print("[+] calibrating the unconditional direction to the same rehearsal forgetting ...", flush=True)
    d = fit.direction.vectors[layer]
    sets, _ = rehearsal_items(bench, cfg.forget_ratio, cfg.people)
    target = res.info["rehearsal_leak"]
    lam_dir, rates = match_leakage(
        [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0],
        lambda x: fact_rate(run_items(model, sets["stand-ins"], steers=[direction_steer(layer, d, x)],
                                      batch_size=cfg.batch_size)), target)
    print(f"      direction-only strength {lam_dir} (rehearsal leakage {rates[lam_dir]:.2f})")
    print("[+] evaluating the linear gate and direction-only ...", flush=True)
    frames = [res.results[res.results.method == m] for m in ("vanilla", "MLLMEraser")]
    frames[1] = frames[1].assign(method=f"MLLMEraser ({sel.gate} gate)")
    if sel.gate != "linear":
        # The paper's kind of gate (the same fit's null-space map) with the chosen edit: layer, lambda, positions.
        linear = eraser_with_gate(model, fit, res.fit_config, "linear").with_options(
            layers=[layer], lam=lam, positions=sel.positions, threshold=0.0)
        frames.append(evaluate_people(model, bench, cfg, linear, "linear gate, same edit"))
    frames.append(evaluate_people(model, bench, cfg, [direction_steer(layer, d, lam_dir)], "direction only"))
    summary = pd.concat([summarize(f.drop(columns="method")).assign(method=f.method.iloc[0]) for f in frames],
                        ignore_index=True)
    results = pd.concat(frames, ignore_index=True)
    shown = replace(res, results=results, summary=summary, table=headline_table(results, summary),
                    info=dict(res.info, direction_only_lam=lam_dir, seconds=round(time.time() - t0, 1)))
    shown.save(out, "MLLMEraser demo on the embedded default",
               note=f"Direction-only alternative at lambda {lam_dir}, calibrated to the same rehearsal forgetting.")
    from toolkit.report import plot_summary

    plot_summary(summary).savefig(out / "metrics.png", dpi=110, bbox_inches="tight")
    with open(out / "report.md", "a") as report:
        report.write("\n\n![metrics](metrics.png)\n")
    return shown.metrics()
