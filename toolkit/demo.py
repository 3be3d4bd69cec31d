"""``make demo``: the whole erasure on the embedded default, start to result.

1. Fit the eraser for a forget split at every layer (one capture pass).
2. Choose the layer and strength on validation questions (other phrasings of
   the same facts; never the evaluation questions) with the steering-grid probe.
3. Calibrate the naive alternative, the unconditional direction ``lam * d`` at
   the same layer, to the same forgetting on the validation questions.
4. Evaluate vanilla, eraser and direction on Forget, Test, Retain and Real
   (MLLMU-Bench metrics, refusal, leakage, fluency); write report.md,
   metrics.json, results.csv and plots under ``results/demo``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import tracing
from .data.mllmu import MLLMUBench
from .data.synthetic import validation_samples
from .eraser import Eraser
from .evaluate import benchmark_items, run_items, summarize
from .fit import FitConfig, fit_eraser
from .models.default import default_benchmark
from .models.loading import LoadedModel, load_model
from .nullspace import FixedRatio

__all__ = ["DemoConfig", "run_demo", "direction_steer", "headline"]


@dataclass(frozen=True)
class DemoConfig:
    forget_ratio: int = 10
    lams: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    rho: float = 0.5
    gamma: float = 0.1
    retain_weight: float = 20.0
    forget_min: float = 0.9  # validation refusal the chosen setting must reach on forget ...
    retain_max: float = 0.03  # ... while retain refusal rises by at most this
    retain_people: int = 20  # evaluated subset of the retain split (all are used to fit)
    real_people: int = 10
    n_contrast: int = 16
    pgd_steps: int = 20
    batch_size: int = 48


def direction_steer(layer: int, direction: torch.Tensor, lam: float) -> tracing.Steer:
    """The unconditional alternative: add ``lam * d`` whatever the input."""
    d = direction.to(torch.float32)
    return tracing.Steer(layer, lambda h: lam * d.to(h.dtype).expand_as(h), "prompt")


def _evaluate(model: LoadedModel, bench: MLLMUBench, cfg: DemoConfig, steers, label: str) -> pd.DataFrame:
    items = benchmark_items(bench, cfg.forget_ratio, retain_people=cfg.retain_people, real_people=cfg.real_people)
    df = run_items(model, items, steers=steers, batch_size=cfg.batch_size, progress=True, label=label)
    df.insert(0, "method", label)
    return df


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per method: the numbers the README quotes."""
    rows = []
    for method, g in summary.groupby("method", sort=False):
        def pick(split, task, col, modality=None):
            s = g[(g.split == split) & (g.task == task)]
            if modality:
                s = s[s.modality == modality]
            return round(100 * float((s[col] * s.n).sum() / s.n.sum()), 1) if len(s) else float("nan")

        rows.append({
            "method": method,
            "forget_leak_img": pick("Forget", "generation", "leaked", "image"),
            "forget_leak_txt": pick("Forget", "generation", "leaked", "text"),
            "forget_refused": pick("Forget", "generation", "refused"),
            "forget_mcq_acc": pick("Forget", "classification", "accuracy"),
            "forget_cloze_acc": pick("Forget", "cloze", "accuracy"),
            "test_leak_img": pick("Test", "generation", "leaked", "image"),
            "retain_mcq_acc": pick("Retain", "classification", "accuracy"),
            "retain_gen_rougeL": pick("Retain", "generation", "rougeL"),
            "retain_leak(=recall)": pick("Retain", "generation", "leaked"),
            "real_mcq_acc": pick("Real", "classification", "accuracy"),
            "real_gen_rougeL": pick("Real", "generation", "rougeL"),
            "forget_repetition": pick("Forget", "generation", "repetition"),
        })
    return pd.DataFrame(rows)


def run_demo(out_dir: str | Path = "results/demo", cfg: DemoConfig = DemoConfig(), model: LoadedModel | None = None,
             bench_root: str | Path | None = None) -> dict:
    from probes.steering_effects import operating_window, recommend, steering_grid

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model("default")
    bench = MLLMUBench(bench_root or default_benchmark())
    r = cfg.forget_ratio
    from .adversarial import PGDConfig

    print(f"[1/4] fitting the eraser for forget_{r} at all {model.num_layers} layers ...", flush=True)
    fit = fit_eraser(model, bench, FitConfig(layers=tuple(range(model.num_layers)), forget_ratio=r,
                                             rank_policy=FixedRatio(cfg.rho), gamma=cfg.gamma,
                                             retain_weight=cfg.retain_weight, n_contrast=cfg.n_contrast,
                                             pgd=PGDConfig(steps=cfg.pgd_steps)),
                     progress=True)
    print(f"      PGD made the model answer {fit.report['contrast']['pgd_success']}/"
          f"{fit.report['contrast']['refused_clean']} privacy-refused questions; fit took {fit.report['fit_seconds']} s")

    print("[2/4] choosing layer and lambda on validation questions (not the evaluation ones) ...", flush=True)
    fv, fa = validation_samples(bench.forget(r))
    rv, ra = validation_samples(bench.retain(r)[:30])
    grid = steering_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
                         {"forget": fv, "retain": rv}, list(range(model.num_layers)), cfg.lams,
                         answers={"forget": fa, "retain": ra}, batch_size=cfg.batch_size, progress=True)
    window = operating_window(grid, forget_min=cfg.forget_min, retain_max=cfg.retain_max)
    layer, lam = recommend(window)
    eraser = fit.eraser.with_options(layers=[layer], lam=lam)
    eraser.save(out / "eraser.safetensors")
    chosen = grid[(grid.layer == layer) & (grid.lam == lam)].set_index("set")
    print(f"      chosen: layer {layer}, lambda {lam} (validation refusal: forget "
          f"{chosen.loc['forget'].refusal_rate:.2f}, retain {chosen.loc['retain'].refusal_rate:.2f})")

    print("[3/4] calibrating the unconditional direction to the same forgetting ...", flush=True)
    d = fit.direction.vectors[layer]
    target = float(chosen.loc["forget"].refusal_rate)
    dir_grid = steering_grid(model, lambda ls, x: [direction_steer(ls[0], d, x)], {"forget": fv, "retain": rv},
                             [layer], [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0], batch_size=cfg.batch_size)
    f_rates = dir_grid[(dir_grid.set == "forget") & (dir_grid.layer == layer)].set_index("lam").refusal_rate
    reach = [x for x, v in f_rates.items() if v >= target - 1e-9]
    lam_dir = min(reach) if reach else max(f_rates.index)
    print(f"      direction-only strength {lam_dir} (validation forget refusal {f_rates[lam_dir]:.2f})")

    print("[4/4] evaluating vanilla, eraser and direction-only on Forget / Test / Retain / Real ...", flush=True)
    frames = [_evaluate(model, bench, cfg, None, "vanilla"),
              _evaluate(model, bench, cfg, eraser, "MLLMEraser"),
              _evaluate(model, bench, cfg, [direction_steer(layer, d, lam_dir)], "direction only")]
    results = pd.concat(frames, ignore_index=True)
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline(summary)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    grid.to_csv(out / "steering_grid.csv", index=False)
    info = {"forget_ratio": r, "layer": layer, "lam": lam, "direction_only_lam": lam_dir,
            "selection": "steering-grid probe on validation questions (another phrasing of the same facts); "
                         f"layer with the most lambdas where forget refuses >= {cfg.forget_min:.0%} and retain refusal "
                         f"rises <= {cfg.retain_max:.0%}, at the median such lambda",
            "fit_report": fit.report, "headline": table.to_dict("records"),
            "summary": summary.to_dict("records"), "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(info, indent=1, default=str))
    _write_report(out, info, table, summary, window, grid)
    return info


def _write_report(out: Path, info: dict, table: pd.DataFrame, summary: pd.DataFrame, window: pd.DataFrame,
                  grid: pd.DataFrame) -> None:
    from .report import plot_summary, plot_grid

    plot_summary(summary).savefig(out / "metrics.png", dpi=110, bbox_inches="tight")
    plot_grid(grid).savefig(out / "steering_grid.png", dpi=110, bbox_inches="tight")
    lines = ["# MLLMEraser demo on the embedded default", "",
             f"Forget split: forget_{info['forget_ratio']}. Eraser at layer {info['layer']}, lambda {info['lam']} "
             f"(chosen by {info['selection']}). Direction-only alternative at lambda {info['direction_only_lam']}, "
             "calibrated to the same validation forgetting.", "",
             "All numbers in percent. `leak`: the ground-truth fact appears in the generated answer.", "",
             table.to_markdown(index=False), "", "## Operating window per layer (validation)", "",
             window.drop(columns=["ok_lams"]).to_markdown(index=False), "",
             "![metrics](metrics.png)", "", "![steering grid](steering_grid.png)", "",
             f"Fit report: `{json.dumps(info['fit_report'], default=str)[:2000]}`", "",
             f"Total time: {info['seconds']} s."]
    (out / "report.md").write_text("\n".join(lines))
