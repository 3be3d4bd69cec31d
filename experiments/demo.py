"""``make demo``: the whole erasure on the embedded default, start to result.

People are split by :class:`toolkit.data.splits.PeopleSplit` (seeded hash of
the ID): fit people build the null space, penalty, answer rows and contrastive
pairs; validation people choose the settings; evaluation people are only
reported.

1. Fit the eraser for a forget split at every layer (one capture pass), from
   fit people only.
2. Choose layer, strength and gate threshold on the rehearsal
   (:mod:`toolkit.selection`): validation people stand in for the forget list.
3. Calibrate the naive alternative, the unconditional direction ``lam * d`` at
   the same layer, to the same rehearsal forgetting.
4. Evaluate vanilla, eraser and direction on Forget, Test, Paraphrase and on
   the *evaluation* retain and real people (the headline), with fit people beside
   them, labelled "in fit"; write report.md, metrics.json, results.csv and plots
   under ``results/demo``.
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
from toolkit.data.splits import PeopleSplit
from toolkit.data.synthetic import default_benchmark
from toolkit.evaluate import benchmark_items, run_items, summarize
from toolkit.fit import FitConfig, eraser_with_gate, fit_eraser
from toolkit.models.loading import LoadedModel, load_model
from toolkit.nullspace import FixedRatio
from toolkit.selection import SelectConfig, fact_rate, match_leakage, rehearsal_items, select_setting

__all__ = ["DemoConfig", "run_demo", "direction_steer", "evaluate_people", "headline"]


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings. ``rho``, ``retain_weight`` and ``answer_weight`` were chosen on
    validation questions (README, "How the demo's settings were chosen"); layer, lambda and
    gate threshold are chosen by the rehearsal on validation people for every run."""

    forget_ratio: int = 10
    rho: float = 0.97
    gamma: float = 0.1
    retain_weight: float = 40.0
    answer_weight: float = 0.3
    people: PeopleSplit = PeopleSplit()
    # The gate kind, its layer and target false-positive rate are screened on the rehearsal (no
    # generation), then lambda and positions are chosen by generating (toolkit.selection).
    select: SelectConfig = SelectConfig(gates=("prototype_whitened", "prototype", "logistic", "linear"),
                                        gate_fprs=(0.02, 0.05))
    in_fit_people: int = 20  # fit people evaluated beside the held-out ones (labelled "in fit")
    n_contrast: int | None = None  # every image question of every fit person
    pgd_steps: int = 20
    pgd_limit: int | None = 16
    batch_size: int = 48

    def fit_config(self, layers: tuple[int, ...], lam: float = 1.0):
        from toolkit.adversarial import PGDConfig

        return FitConfig(layers=layers, forget_ratio=self.forget_ratio, rank_policy=FixedRatio(self.rho),
                         gamma=self.gamma, retain_weight=self.retain_weight, answer_weight=self.answer_weight,
                         lam=lam, n_contrast=self.n_contrast, pgd=PGDConfig(steps=self.pgd_steps),
                         pgd_limit=self.pgd_limit, people=self.people,
                         gate_rows=any(k != "linear" for k in (self.select.gates or ())))


def direction_steer(layer: int, direction: torch.Tensor, lam: float) -> tracing.Steer:
    """The unconditional alternative: add ``lam * d`` whatever the input."""
    d = direction.to(torch.float32)
    return tracing.Steer(layer, lambda h: lam * d.to(h.device, h.dtype).expand_as(h), "prompt")


def evaluate_people(model: LoadedModel, bench: MLLMUBench, cfg: DemoConfig, steers, label: str) -> pd.DataFrame:
    items = benchmark_items(bench, cfg.forget_ratio, people=cfg.people, in_fit_people=cfg.in_fit_people)
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
            "retain_recall": pick("Retain", "generation", "leaked"),
            "retain_refused": pick("Retain", "generation", "refused"),
            "real_mcq_acc": pick("Real", "classification", "accuracy"),
            "real_gen_rougeL": pick("Real", "generation", "rougeL"),
            "real_recall": pick("Real", "generation", "leaked"),
            "boundary_answered": pick("Boundary", "generation", "leaked"),
            "in_fit_retain_mcq_acc": pick("Retain (in fit)", "classification", "accuracy"),
            "in_fit_retain_recall": pick("Retain (in fit)", "generation", "leaked"),
            "in_fit_real_recall": pick("Real (in fit)", "generation", "leaked"),
            "forget_repetition": pick("Forget", "generation", "repetition"),
        })
    return pd.DataFrame(rows)


def run_demo(out_dir: str | Path = "results/demo", cfg: DemoConfig = DemoConfig(), model: LoadedModel | None = None,
             bench_root: str | Path | None = None) -> dict:
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model("default")
    bench = MLLMUBench(bench_root or default_benchmark())
    r = cfg.forget_ratio
    counts = {"retain": cfg.people.counts(bench.retain(r)), "real": cfg.people.counts(bench.real())}
    print(f"      people (seed {cfg.people.seed}): retain {counts['retain']}, real {counts['real']}", flush=True)

    print(f"[1/4] fitting the eraser for forget_{r} at all {model.num_layers} layers (fit people only) ...", flush=True)
    fit_config = cfg.fit_config(tuple(range(model.num_layers)))
    fit = fit_eraser(model, bench, fit_config, progress=True)
    c = fit.report["contrast"]
    print(f"      {c['refused_clean']} contrastive pairs; PGD made the model answer {c['pgd_success']}/"
          f"{c.get('pgd_attacked', c['refused_clean'])} attacked; fit took {fit.report['fit_seconds']} s")

    print("[2/4] choosing gate, layer, lambda and positions on the rehearsal (validation people) ...", flush=True)
    eraser, sel = select_setting(model, fit, bench, fit_config, cfg.select, progress=True)
    eraser.save(out / "eraser.safetensors")
    chosen = sel.chosen
    layer, lam = sel.layer, sel.lam
    if sel.screening is not None:
        best = sel.screening.sort_values("score", ascending=False).iloc[0]
        print(f"      gate screening ({len(sel.screening)} candidates): {sel.gate} gate at {sel.gate_fpr:.0%} target "
              f"false positives (held-out: caught {best.caught:.2f}, fired on {best.fp:.2f} of unseen people's "
              "questions)")
    print(f"      chosen: {sel.gate} gate, layer {layer}, lambda {lam}, threshold {sel.threshold}, positions "
          f"{sel.positions} ({sel.rule}; rehearsal leakage "
          f"{chosen['stand-ins']:.2f}, validation recall {chosen['recall']:.2f})")

    print("[3/4] calibrating the unconditional direction to the same rehearsal forgetting ...", flush=True)
    d = fit.direction.vectors[layer]
    sets, _ = rehearsal_items(bench, r, cfg.people)
    target = float(chosen["stand-ins"])
    lam_dir, rates = match_leakage(
        [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0],
        lambda x: fact_rate(run_items(model, sets["stand-ins"], steers=[direction_steer(layer, d, x)],
                                      batch_size=cfg.batch_size)), target)
    print(f"      direction-only strength {lam_dir} (rehearsal leakage {rates[lam_dir]:.2f})")

    print("[4/4] evaluating vanilla, eraser, the linear gate and direction-only (held-out people are the "
          "headline) ...", flush=True)
    frames = [evaluate_people(model, bench, cfg, None, "vanilla"),
              evaluate_people(model, bench, cfg, eraser, f"MLLMEraser ({sel.gate} gate)")]
    if sel.gate != "linear":
        # The paper's kind of gate (the same fit's null-space map) with the chosen edit: layer, lambda, positions.
        linear = eraser_with_gate(model, fit, fit_config, "linear").with_options(
            layers=[layer], lam=lam, positions=sel.positions, threshold=0.0)
        frames.append(evaluate_people(model, bench, cfg, linear, "linear gate, same edit"))
    frames.append(evaluate_people(model, bench, cfg, [direction_steer(layer, d, lam_dir)], "direction only"))
    results = pd.concat(frames, ignore_index=True)
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline(summary)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    sel.grid.to_csv(out / "selection_grid.csv", index=False)
    if sel.screening is not None:
        sel.screening.to_csv(out / "gate_screening.csv", index=False)
    info = {"forget_ratio": r, "layer": layer, "lam": lam, "threshold": sel.threshold, "positions": sel.positions,
            "gate": sel.gate, "gate_fpr": sel.gate_fpr,
            "gate_report": eraser.settings.get("report", {}).get("layers", {}).get(layer, {}),
            "direction_only_lam": lam_dir,
            "rehearsal_leak": target, "validation_recall": float(chosen["recall"]),
            "people": counts, "stand_ins": sel.stand_ins, "validation_people": sel.validation_people,
            "selection": f"rehearsal on validation people: {sel.rule}",
            "fit_report": fit.report, "headline": table.to_dict("records"),
            "summary": summary.to_dict("records"), "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(info, indent=1, default=str))
    _write_report(out, info, table, summary, sel.grid, sel.screening)
    return info


def _write_report(out: Path, info: dict, table: pd.DataFrame, summary: pd.DataFrame, grid: pd.DataFrame,
                  screening: pd.DataFrame | None = None) -> None:
    from toolkit.report import plot_summary

    plot_summary(summary).savefig(out / "metrics.png", dpi=110, bbox_inches="tight")
    lines = ["# MLLMEraser demo on the embedded default", "",
             f"Forget split: forget_{info['forget_ratio']}. Eraser with a {info['gate']} gate at layer {info['layer']}, "
             f"lambda {info['lam']}, "
             f"gate threshold {info['threshold']}, positions {info['positions']} (chosen by {info['selection']}). Direction-only alternative at "
             f"lambda {info['direction_only_lam']}, calibrated to the same rehearsal forgetting.", "",
             f"People: {json.dumps(info['people'])}. `retain_*` / `real_*`: evaluation people (never in the fit or "
             "the selection); `in_fit_*`: people whose activations built the fit.", "",
             "All numbers in percent. `leak` / `recall`: the ground-truth fact appears in the generated answer.", "",
             table.to_markdown(index=False), "", "## Selection grid (rehearsal, validation people)", "",
             grid.round(3).to_markdown(index=False), "",
             *(["## Gate screening (rehearsal, validation people; no generation)", "",
                screening.round(3).to_markdown(index=False), ""] if screening is not None else []),
             "![metrics](metrics.png)", "",
             f"Fit report: `{json.dumps(info['fit_report'], default=str)[:2000]}`", "",
             f"Total time: {info['seconds']} s."]
    (out / "report.md").write_text("\n".join(lines))
