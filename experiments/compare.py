"""``make compare``: MLLMEraser against the training-based baselines on the same model, data, people and metrics.

Rows: vanilla, MLLMEraser (the demo's chosen setting), the paper's map and the
raw direction at matched forgetting, GA, GA_Diff, KL_Min, NPO at *matched
forgetting* and at MLLMU-Bench's own budget (4 epochs, labelled), and ASRU:
stage 1 (activation redirection) and full (stage 1 + GRPO with ASRU's reward on
forget and boundary questions) with its direction as published (never-seen faces minus the forget people, at
the reference's relative depth), its forget_scale matched like the baselines' epochs (the published
forget_scale 3 beside it when another is chosen). Columns: forget / test
metrics, retain and real utility on the evaluation people (never in any fit or
choice) with fit people beside them, ASRU reward, fit or training time, peak
memory added.

Matched forgetting, chosen on the rehearsal like the eraser's settings: each
baseline unlearns the stand-ins (validation people) with the fit people as its
retain set, for 1, 2, 4, 8, 16 epochs; the smallest budget whose stand-in
leakage is at most the eraser's rehearsal leakage (else the lowest leakage) is
then used to unlearn the forget list. ASRU's forget_scale (1, 2, 3, 4, 8) is matched the same
way, on its stage 1. Every method trains on the same fit people.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from toolkit.baselines import (METHODS, ASRUConfig, BaselineConfig, RedirectConfig, asru, asru_direction, qa_pairs,
                               unlearn)
from toolkit.data.boundary import boundary_questions
from toolkit.data.mllmu import MLLMUBench
from experiments.demo import direction_steer
from toolkit.config import EraseConfig
from toolkit.headline import headline
from toolkit.job import evaluate_people
from toolkit.evaluate import run_items, summarize
from toolkit.judge import OfflineJudge
from toolkit.benchmark_fit import refit_forget
from toolkit.nullspace import FixedRatio
from toolkit.selection import fact_rate, match_leakage, rehearsal_items
from toolkit.memory import PeakMemory
from toolkit.data.synthetic import default_benchmark
from toolkit.models.loading import load_model

__all__ = ["run_compare", "matched_epochs", "matched_forget_scale", "asru_config", "check_same_model"]


def check_same_model(chosen: dict, model, demo_dir: Path) -> None:
    """One line if the demo run in ``demo_dir`` was measured on another model than ``model``."""
    theirs = chosen.get("fingerprint")
    if theirs is None:
        raise ValueError(f"{demo_dir}/metrics.json records no model (an older demo run): rerun `mllmeraser demo "
                         f"--model {model.name} --out {demo_dir}` first.")
    if json.dumps(theirs, sort_keys=True, default=str) != json.dumps(model.fingerprint(), sort_keys=True,
                                                                     default=str):
        raise ValueError(f"{demo_dir}/metrics.json was measured on model {chosen.get('model')!r}, not "
                         f"{model.name!r}: its layer and gate do not apply. Run `mllmeraser demo --model "
                         f"{model.name} --out DIR` and pass `--demo DIR`.")

EPOCHS = (1, 2, 4, 8, 16)
# ASRU's forget_scale candidates around the published run's 3 (its flag's default is 1), matched on the rehearsal.
FORGET_SCALES = (1.0, 2.0, 3.0, 4.0, 8.0)


def matched_epochs(model, method: str, stand_ins, train_retain, stand_in_items, target: float,
                   epochs: tuple[int, ...] = EPOCHS) -> tuple[int, pd.DataFrame]:
    """The smallest epoch budget at which ``method`` unlearning the stand-ins leaks at most ``target``
    on their questions (else the lowest leakage), with the budget curve."""

    def leakage(e: int) -> float:
        res = unlearn(model, qa_pairs(stand_ins), qa_pairs(train_retain), BaselineConfig(method=method, epochs=e))
        return fact_rate(run_items(res.model, stand_in_items, batch_size=48))

    chosen, measured = match_leakage(epochs, leakage, target)
    curve = pd.DataFrame([{"method": method, "epochs": e, "stand_in_leak": v} for e, v in measured.items()])
    return int(chosen), curve


def asru_config(forget_scale: float, stages: int = 2) -> ASRUConfig:
    """ASRU with its redirection target ``h + forget_scale * direction`` (``RedirectConfig.forget_scale``)."""
    return ASRUConfig(redirect=RedirectConfig(forget_scale=forget_scale), stages=stages)


def matched_forget_scale(model, stand_ins, train_retain, stand_in_items, direction, target: float,
                         scales: tuple[float, ...] = FORGET_SCALES) -> tuple[float, pd.DataFrame]:
    """The smallest of ``scales`` at which ASRU's redirection (stage 1) of the stand-ins, with the fit people
    held, leaks at most ``target`` on their questions (else the lowest leakage), with the curve."""

    def leakage(scale: float) -> float:
        res = asru(model, stand_ins, train_retain, [], direction, asru_config(scale, stages=1))
        return fact_rate(run_items(res.model, stand_in_items, batch_size=48))

    chosen, measured = match_leakage(scales, leakage, target)
    curve = pd.DataFrame([{"method": "ASRU stage 1", "forget_scale": k, "stand_in_leak": v}
                          for k, v in measured.items()])
    return float(chosen), curve


def run_compare(out_dir: str | Path = "results/compare", cfg: EraseConfig = EraseConfig(),
                demo_metrics: str | Path | None = None, model=None) -> pd.DataFrame:
    """Every method on ``model`` (default: the embedded default). The eraser's setting is the demo's choice
    in ``demo_metrics`` (default ``results/demo``, run there first if absent), which must have been measured
    on the same model: its layer and gate mean nothing for another."""
    from toolkit.benchmark_fit import fit_eraser
    from toolkit.data.samples import fit_people

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model("default")
    bench = MLLMUBench(default_benchmark())
    r = cfg.forget_ratio
    demo_dir = Path(demo_metrics or "results/demo")
    if not (demo_dir / "metrics.json").exists():
        from experiments.demo import run_demo

        run_demo(demo_dir, cfg, model=model)
    chosen = json.loads((demo_dir / "metrics.json").read_text())
    check_same_model(chosen, model, demo_dir)
    layer, lam = chosen["layer"], chosen["lam"]
    # Time the eraser's fit for the chosen layer alone: what a user pays once the setting is known.
    with PeakMemory() as meter:
        start = time.time()
        # The demo's gate (kind, read and target rate, chosen on its rehearsal) at the demo's layer. The read must
        # be the chosen one: the fit config's first screened read is another (an earlier compare fitted that).
        gate = chosen.get("gate", "linear")
        base = cfg.fit_config((layer,), lam)
        gated = replace(base, gate=gate, gate_fpr=chosen["gate_fpr"] if gate != "linear" else 0.05,
                        gate_reads=chosen.get("gate_reads") if gate != "linear" and chosen.get("gate_reads")
                        else base.gate_reads)
        fit = fit_eraser(model, bench, gated)
        fit_seconds = time.time() - start
    eraser = fit.eraser.with_options(threshold=chosen.get("threshold", 0.0),
                                     positions=chosen.get("positions") or fit.eraser.positions,
                                     latch=bool(chosen.get("latch", False)) and gate != "linear")
    saved = demo_dir / "eraser.safetensors"
    if saved.exists():  # the demo's own eraser, as it chose and reported it (the refit above gives the cost)
        from toolkit.eraser import Eraser

        eraser = Eraser.load(saved, model)
    costs = {"MLLMEraser": (fit_seconds, meter.added_mb)}
    vanilla = evaluate_people(model, bench, cfg, None, "vanilla")
    # The eraser's gate decides at prefill: the questions it leaves alone keep vanilla's answers (job.erase does so).
    frames = [vanilla, evaluate_people(model, bench, cfg, eraser, "MLLMEraser", unsteered=vanilla)]
    # The baselines train on the same fit people as the eraser: evaluation people stay unseen by every method.
    train_retain = fit_people(bench, cfg.fit_config((layer,)), real=False)
    forget_qa, retain_qa = qa_pairs(bench.forget(r)), qa_pairs(train_retain)
    sets, stand_ins = rehearsal_items(bench, r, cfg.people)
    if "rehearsal_leak" in chosen:
        target = float(chosen["rehearsal_leak"])
    else:  # an older demo run: its selection grid has the chosen setting's rehearsal leakage
        g = pd.read_csv(demo_dir / "selection_grid.csv")
        target = float(g[(g.layer == layer) & (g.lam == lam) & (g.threshold == chosen.get("threshold", 0.0))]
                       ["stand-ins"].min())
    curves = []
    # The paper's map (rank ratio 0.3, no penalty, no answer rows, prompt positions) at the same layer, its
    # lambda matched on the rehearsal; and the unconditional direction at the demo's matched strength.
    paper_cfg = replace(cfg.fit_config((layer,)), rank_policy=FixedRatio(0.3), retain_weight=0.0, answer_weight=0.0)
    start = time.time()
    paper = fit_eraser(model, bench, paper_cfg, contrast=fit.contrast)
    rehearsal = refit_forget(model, paper, stand_ins, paper_cfg)
    paper_lam, _ = match_leakage((1.0, 2.0, 4.0, 8.0, 16.0, 32.0), lambda x: fact_rate(
        run_items(model, sets["stand-ins"], steers=rehearsal.with_options(lam=x), batch_size=48)), target)
    label = f"paper's map (matched: lambda {paper_lam:g})"
    costs[label] = (time.time() - start, 0.0)
    frames.append(evaluate_people(model, bench, cfg, paper.eraser.with_options(lam=paper_lam), label))
    if "direction_only_lam" in chosen:
        label = f"direction only (matched: lambda {chosen['direction_only_lam']:g})"
        frames.append(evaluate_people(model, bench, cfg, [direction_steer(layer, fit.direction.vectors[layer],
                                                                    chosen["direction_only_lam"])], label))
    for method in METHODS:
        epochs, curve = matched_epochs(model, method, stand_ins, train_retain, sets["stand-ins"], target)
        curves.append(curve.assign(chosen=curve.epochs == epochs))
        for label, budget in ((f"{method} (matched: {epochs} ep)", epochs), (f"{method} (MLLMU budget)", 4)):
            res = unlearn(model, forget_qa, retain_qa, BaselineConfig(method=method, epochs=budget), progress=True)
            costs[label] = (res.seconds, res.peak_added_mb)
            frames.append(evaluate_people(res.model, bench, cfg, None, label))
    pd.concat(curves, ignore_index=True).to_csv(out / "matched_budgets.csv", index=False)
    # ASRU: stage 1 (redirection) and stage 1 + GRPO, boundary questions from the fit people; its
    # forget_scale matched on the rehearsal like the baselines' epochs, and the published 3 beside it.
    # ASRU's direction as published (never-seen faces minus the people to forget), at its relative depth: the
    # stand-ins' for the rehearsal's match, the forget people's for the run reported.
    rehearsal_direction, _ = asru_direction(model, stand_ins)
    direction, direction_info = asru_direction(model, bench.forget(r))
    scale, scale_curve = matched_forget_scale(model, stand_ins, train_retain, sets["stand-ins"], rehearsal_direction,
                                              target)
    scale_curve.assign(chosen=scale_curve.forget_scale == scale).to_csv(out / "asru_forget_scales.csv", index=False)
    (out / "asru_direction.json").write_text(json.dumps(direction_info, indent=1))
    boundary = boundary_questions(bench.forget(r), train_retain)
    res = asru(model, bench.forget(r), train_retain, boundary, direction, asru_config(scale),
               progress=True)
    stage1, full = f"ASRU stage 1 (matched: forget_scale {scale:g})", f"ASRU full (matched: forget_scale {scale:g})"
    costs[stage1] = (res.stage1.seconds, res.stage1.peak_added_mb)
    costs[full] = (res.seconds, max(res.stage1.peak_added_mb, res.stage2.peak_added_mb))
    frames.append(evaluate_people(res.stage1.model, bench, cfg, None, stage1))
    frames.append(evaluate_people(res.stage2.model, bench, cfg, None, full))
    if scale != 3:
        label = "ASRU stage 1 (as published: forget_scale 3)"
        reference = asru(model, bench.forget(r), train_retain, [], direction, asru_config(3, stages=1))
        costs[label] = (reference.stage1.seconds, reference.stage1.peak_added_mb)
        frames.append(evaluate_people(reference.stage1.model, bench, cfg, None, label))
    pd.DataFrame({"step": range(1, len(res.stage2.rewards) + 1), "mean_reward": res.stage2.rewards}).to_csv(
        out / "asru_rewards.csv", index=False)
    _plot_rewards(res.stage2.rewards).savefig(out / "asru_rewards.png", dpi=110, bbox_inches="tight")
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline(summary)
    reward = summary[summary.task == "generation"].groupby("method", sort=False).apply(
        lambda g: round(100 * float((g.asru_reward * g.n).sum() / g.n.sum()), 1), include_groups=False)
    table["asru_reward"] = table.method.map(reward)
    judge = OfflineJudge(model=model)  # trained once on the labelled outputs, shared by every row
    quality = {f.method.iloc[0]: generation_quality(f, judge) for f in frames}
    for col in ("forget_contextual_refusal", "forget_degenerate", "forget_naturalness", "boundary_answer_rate"):
        table[col] = table.method.map(lambda m, c=col: quality[m][c])
    table["fit_or_train_s"] = table.method.map(lambda m: round(costs[m][0], 1) if m in costs else 0.0)
    table["peak_added_mb"] = table.method.map(lambda m: round(costs[m][1], 1) if m in costs else 0.0)
    summary.to_csv(out / "summary.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(table.to_markdown(index=False))
    return table


def generation_quality(frame: pd.DataFrame, judge: OfflineJudge, naturalness_sample: int = 40) -> dict:
    """Judge columns for one method's results (percent; naturalness: mean log-prob per token under the vanilla
    model, on the first ``naturalness_sample`` forget answers). Boundary: the evaluation retain people's questions
    whose fact a forget person shares, in held-out phrasings, answered (the fact appears, not a refusal)."""
    gen = frame[frame.task == "generation"]
    forget = gen[gen.split == "Forget"]
    labels = [judge.classify(str(o)) for o in forget.output]
    leaked = forget.leaked.fillna(0.0).tolist()
    contextual = sum(lab == "refusal" and not lk for lab, lk in zip(labels, leaked)) / max(1, len(labels))
    sample = forget.head(naturalness_sample)
    natural = [judge.naturalness(q, str(o)) for q, o in zip(sample.question, sample.output) if str(o).strip()]
    boundary = gen[gen.split == "Boundary"]  # evaluation people, held-out phrasings (benchmark_items)
    answered = ((boundary.leaked == 1.0) & (boundary.refused != 1.0)).mean() if len(boundary) else float("nan")
    return {"forget_contextual_refusal": round(100 * contextual, 1),
            "forget_degenerate": round(100 * labels.count("degenerate") / max(1, len(labels)), 1),
            "forget_naturalness": round(sum(natural) / max(1, len(natural)), 2),
            "boundary_answer_rate": round(100 * float(answered), 1)}


def _plot_rewards(rewards):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(rewards) + 1), rewards, marker="o", ms=3)
    ax.set(xlabel="GRPO step", ylabel="mean rollout reward", title="ASRU stage 2 on the default")
    return fig
