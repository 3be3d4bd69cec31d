"""ASRU's stage 2 with the published refusal test and with the judge's, and ASRU's claims against the baselines.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/asru_reward_study.py``).
Produces: docs/research-log.md, "2026-12-02: ASRU's reward with a refusal test that does not pay loops".

On the LLaVA default (forget_10, the demo's people: the fit people train, the evaluation people are
measured): ASRU stage 1 once, then stage 2 (GRPO, the compare's settings) from that same stage-1 model
twice, once with the published reward (refusal = a refusal phrase anywhere, `metrics.is_refusal`) and
once with the offline judge's refusal label (`toolkit.baselines.judged_reward`: a loop is degenerate,
not a refusal); beside them the four training baselines at MLLMU-Bench's budget (4 epochs). Every row
is evaluated on the same items; the judge columns are the compare's (`generation_quality`).

ASRU's two headline claims (arXiv 2605.15687, abstract), checked with measures fixed before the run:
* unlearning effectiveness +24.6% over the baselines: forget efficacy = 100 - mean(forget leakage on
  image and text generation questions); ASRU's relative gain over the baselines' mean efficacy;
* generation quality 5.8x the baselines': the naturalness gap of the forget answers (the vanilla
  model's mean log-probability per token of its own answers minus that of the method's answers, under
  the vanilla model: smaller is better); the baselines' mean gap over ASRU's.

    .venv/bin/python studies/asru_reward_study.py      # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from experiments.compare import generation_quality
from toolkit.config import EraseConfig
from toolkit.headline import headline
from toolkit.job import evaluate_people
from toolkit.baselines import (METHODS, ASRUConfig, BaselineConfig, GRPOConfig, asru, asru_direction, asru_reward,
                               grpo, qa_pairs, reward_prompts, unlearn)
from toolkit.data.boundary import boundary_questions
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.evaluate import summarize
from toolkit.data.samples import fit_people
from toolkit import metrics
from toolkit.judge import OfflineJudge
from toolkit.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/asru_reward_study"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cfg = EraseConfig()
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    r = cfg.forget_ratio
    forget = bench.forget(r)
    # ASRU's direction as published (the research log's figures were recorded with the earlier stand-in: the
    # refusal-minus-recall difference at the middle layer).
    direction, _ = asru_direction(model, forget)
    train_retain = fit_people(bench, cfg.fit_config((model.num_layers // 2,)), real=False)
    boundary = boundary_questions(forget, train_retain)
    stage1 = asru(model, forget, train_retain, boundary, direction, ASRUConfig(stages=1)).stage1
    models, seconds, rewards = {"ASRU stage 1": stage1.model}, {"ASRU stage 1": stage1.seconds}, {}
    for test in ("rule", "judge"):
        label = f"ASRU full ({test} refusal test)"
        res = grpo(stage1.model, reward_prompts(forget, boundary), GRPOConfig(), reward=asru_reward(test))
        models[label], seconds[label], rewards[label] = res.model, stage1.seconds + res.seconds, res.rewards
    forget_qa, retain_qa = qa_pairs(forget), qa_pairs(train_retain)
    for method in METHODS:
        res = unlearn(model, forget_qa, retain_qa, BaselineConfig(method=method, epochs=4))
        models[f"{method} (MLLMU budget)"], seconds[f"{method} (MLLMU budget)"] = res.model, res.seconds
    frames = [evaluate_people(model, bench, cfg, None, "vanilla")]
    frames += [evaluate_people(m, bench, cfg, None, label) for label, m in models.items()]
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline(summary)
    judge = OfflineJudge(model=model)
    quality = {f.method.iloc[0]: generation_quality(f, judge) for f in frames}
    for col in ("forget_contextual_refusal", "forget_degenerate", "forget_naturalness", "boundary_answer_rate"):
        table[col] = table.method.map(lambda m, c=col: quality[m][c])
    for name, refusal in (("asru_reward_rule", None), ("asru_reward_judged", judge)):
        table[name] = table.method.map({f.method.iloc[0]: _mean_reward(f, refusal) for f in frames})
    table["train_s"] = table.method.map(lambda m: round(seconds.get(m, 0.0), 1))
    table["forget_efficacy"] = (100 - (table.forget_leak_img + table.forget_leak_txt) / 2).round(1)
    cols = ["method", "forget_leak_img", "forget_leak_txt", "forget_efficacy", "forget_refused", "forget_mcq_acc",
            "retain_recall", "real_recall", "forget_contextual_refusal", "forget_degenerate", "forget_naturalness",
            "boundary_answer_rate", "asru_reward_rule", "asru_reward_judged", "train_s"]
    table = table[cols]
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(table.to_markdown(index=False))
    pd.DataFrame([{"reward": k, "step": i + 1, "mean_reward": v} for k, vs in rewards.items()
                  for i, v in enumerate(vs)]).to_csv(args.out / "rewards.csv", index=False)
    print(table.to_markdown(index=False))
    print(claims(table))
    print(f"{time.time() - start:.0f} s")


def _mean_reward(frame: pd.DataFrame, judge=None) -> float:
    """ASRU's reward averaged over the forget and held-out retain people's generation questions (retain
    questions play the boundary role): the evaluation's own ``asru_reward`` (substring refusal rule), or
    the same rule on the row's judgements with ``judge``'s refusal label."""
    gen = frame[(frame.task == "generation") & frame.split.isin(["Forget", "Retain"])]
    if judge is None:
        return round(100 * float(gen.asru_reward.mean()), 1)
    values = [metrics.asru_reward_rule(leaked == 1.0, judge.classify(str(o)) == "refusal", rouge, split == "Forget")
              for o, leaked, rouge, split in zip(gen.output, gen.leaked, gen.rougeL, gen.split)]
    return round(100 * sum(values) / max(1, len(values)), 1)


def claims(table: pd.DataFrame) -> str:
    t = table.set_index("method")
    baselines = [m for m in t.index if m.endswith("(MLLMU budget)")]
    vanilla = t.loc["vanilla", "forget_naturalness"]
    lines = []
    for asru_row in [m for m in t.index if m.startswith("ASRU full")]:
        eff = t.loc[asru_row, "forget_efficacy"]
        base = t.loc[baselines, "forget_efficacy"].mean()
        gap = vanilla - t.loc[asru_row, "forget_naturalness"]
        base_gap = (vanilla - t.loc[baselines, "forget_naturalness"]).mean()
        lines.append(f"{asru_row}: forget efficacy {eff:.1f} vs baselines' mean {base:.1f} = "
                     f"{100 * (eff - base) / base:+.1f}% (claim +24.6%); naturalness gap to vanilla {gap:.2f} vs "
                     f"baselines' {base_gap:.2f} = {base_gap / gap if gap > 0 else float('inf'):.2f}x better "
                     "(claim 5.8x)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
