"""``make demo``: the whole erasure on the embedded default, start to result.

1. Fit the eraser for a forget split at every layer (one capture pass).
2. Choose the layer and strength on validation questions (other phrasings of
   the same facts; never the evaluation questions): the next-token steering
   grid shortlists layers, then answers are generated at each shortlisted
   (layer, lambda) and the setting that leaks least on forget while retain
   recall holds is taken.
3. Calibrate the naive alternative, the unconditional direction ``lam * d`` at
   the same layer, to the same forgetting (validation leakage).
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

from toolkit import tracing
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark, validation_items, validation_samples
from toolkit.evaluate import benchmark_items, run_items, summarize
from toolkit.fit import FitConfig, fit_eraser
from toolkit.models.loading import LoadedModel, load_model
from toolkit.nullspace import FixedRatio

__all__ = ["DemoConfig", "run_demo", "direction_steer", "headline"]


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings. ``rho``, ``retain_weight`` and ``answer_weight`` were chosen on the
    validation questions (README, "How the demo's settings were chosen"), never on evaluation ones."""

    forget_ratio: int = 10
    lams: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
    rho: float = 0.97
    gamma: float = 0.1
    retain_weight: float = 40.0
    answer_weight: float = 0.3
    shortlist: int = 3  # layers the next-token grid passes on to the generation grid
    retain_max: float = 0.03  # validation retain recall (generation) / refusal (next token) may move this much
    retain_people: int = 20  # evaluated subset of the retain split (all are used to fit)
    real_people: int = 10
    validation_retain_people: int = 30
    n_contrast: int = 16
    pgd_steps: int = 20
    batch_size: int = 48

    def fit_config(self, layers: tuple[int, ...], lam: float = 1.0):
        from toolkit.adversarial import PGDConfig

        return FitConfig(layers=layers, forget_ratio=self.forget_ratio, rank_policy=FixedRatio(self.rho),
                         gamma=self.gamma, retain_weight=self.retain_weight, answer_weight=self.answer_weight,
                         lam=lam, n_contrast=self.n_contrast, pgd=PGDConfig(steps=self.pgd_steps))


def direction_steer(layer: int, direction: torch.Tensor, lam: float) -> tracing.Steer:
    """The unconditional alternative: add ``lam * d`` whatever the input."""
    d = direction.to(torch.float32)
    return tracing.Steer(layer, lambda h: lam * d.to(h.device, h.dtype).expand_as(h), "prompt")


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
            "paraphrase_leak_img": pick("Paraphrase", "generation", "leaked", "image"),
            "paraphrase_leak_txt": pick("Paraphrase", "generation", "leaked", "text"),
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
    from probes.steering_effects import choose_setting, leakage_grid, shortlist_layers, steering_grid

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model("default")
    bench = MLLMUBench(bench_root or default_benchmark())
    r = cfg.forget_ratio

    print(f"[1/4] fitting the eraser for forget_{r} at all {model.num_layers} layers ...", flush=True)
    fit = fit_eraser(model, bench, cfg.fit_config(tuple(range(model.num_layers))), progress=True)
    print(f"      PGD made the model answer {fit.report['contrast']['pgd_success']}/"
          f"{fit.report['contrast']['refused_clean']} privacy-refused questions; fit took {fit.report['fit_seconds']} s")

    print("[2/4] choosing layer and lambda on validation questions (not the evaluation ones) ...", flush=True)
    forget_val = validation_items(bench.forget(r), "forget")
    retain_val = validation_items(bench.retain(r)[: cfg.validation_retain_people], "retain")
    fv, fa = validation_samples(bench.forget(r))
    rv, ra = validation_samples(bench.retain(r)[: cfg.validation_retain_people])
    grid = steering_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
                         {"forget": fv, "retain": rv}, list(range(model.num_layers)), cfg.lams,
                         answers={"forget": fa, "retain": ra}, batch_size=cfg.batch_size, progress=True)
    shortlist = shortlist_layers(grid, cfg.shortlist, retain_max=cfg.retain_max)
    lgrid = leakage_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
                         {"forget": forget_val, "retain": retain_val}, shortlist, cfg.lams,
                         batch_size=cfg.batch_size, progress=True)
    layer, lam = choose_setting(lgrid, retain_max=cfg.retain_max)
    eraser = fit.eraser.with_options(layers=[layer], lam=lam)
    eraser.save(out / "eraser.safetensors")
    chosen = lgrid[(lgrid.layer == layer) & (lgrid.lam == lam)].set_index("set")
    print(f"      shortlisted layers {shortlist}; chosen: layer {layer}, lambda {lam} (validation: forget leakage "
          f"{chosen.loc['forget'].answer_rate:.2f}, retain recall {chosen.loc['retain'].answer_rate:.2f})")

    print("[3/4] calibrating the unconditional direction to the same forgetting ...", flush=True)
    d = fit.direction.vectors[layer]
    target = float(chosen.loc["forget"].answer_rate)
    dir_grid = leakage_grid(model, lambda ls, x: [direction_steer(ls[0], d, x)], {"forget": forget_val},
                            [layer], [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0], batch_size=cfg.batch_size)
    f_rates = dir_grid[dir_grid.layer == layer].set_index("lam").answer_rate
    reach = [x for x, v in f_rates.items() if v <= target + 1e-9]
    lam_dir = min(reach) if reach else float(f_rates.idxmin())
    print(f"      direction-only strength {lam_dir} (validation forget leakage {f_rates[lam_dir]:.2f})")

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
    lgrid.to_csv(out / "leakage_grid.csv", index=False)
    info = {"forget_ratio": r, "layer": layer, "lam": lam, "direction_only_lam": lam_dir, "shortlist": shortlist,
            "selection": "validation questions (another phrasing of the same facts): the next-token steering grid "
                         f"shortlists {cfg.shortlist} layers; answers generated at each shortlisted (layer, lambda); "
                         "lowest forget leakage with retain recall within "
                         f"{cfg.retain_max:.0%} of unsteered",
            "fit_report": fit.report, "headline": table.to_dict("records"),
            "summary": summary.to_dict("records"), "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(info, indent=1, default=str))
    _write_report(out, info, table, summary, lgrid, grid)
    return info


def _write_report(out: Path, info: dict, table: pd.DataFrame, summary: pd.DataFrame, lgrid: pd.DataFrame,
                  grid: pd.DataFrame) -> None:
    from toolkit.report import plot_summary, plot_grid

    plot_summary(summary).savefig(out / "metrics.png", dpi=110, bbox_inches="tight")
    plot_grid(grid).savefig(out / "steering_grid.png", dpi=110, bbox_inches="tight")
    lines = ["# MLLMEraser demo on the embedded default", "",
             f"Forget split: forget_{info['forget_ratio']}. Eraser at layer {info['layer']}, lambda {info['lam']} "
             f"(chosen by {info['selection']}). Direction-only alternative at lambda {info['direction_only_lam']}, "
             "calibrated to the same validation forgetting.", "",
             "All numbers in percent. `leak`: the ground-truth fact appears in the generated answer.", "",
             table.to_markdown(index=False), "", "## Generation grid on validation questions (shortlisted layers)", "",
             lgrid.round(3).to_markdown(index=False), "",
             "![metrics](metrics.png)", "", "![steering grid](steering_grid.png)", "",
             f"Fit report: `{json.dumps(info['fit_report'], default=str)[:2000]}`", "",
             f"Total time: {info['seconds']} s."]
    (out / "report.md").write_text("\n".join(lines))
