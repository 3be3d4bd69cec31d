"""How many retain (or calibration) questions the fit needs: held-out figures against the budget.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/retain_budget_curve.py``).
Produces: docs/results.md, "How many retain questions the fit needs" (and docs/retain_budget.png); with
``--kind calibration``, "How many validation questions the gate's threshold needs" (docs/calibration_budget.png).

For each default and people seed, the shipped setting of that default (the gate kind, read, rate, layer and
strength its rehearsal chose on seed 0: ``SETTINGS``) is fitted at each budget (``FitConfig.retain_budget``:
whole fit people in a seeded order, the last one cut), everything else fixed (the contrastive sets are drawn
once per seed and shared by the budgets). Each eraser is measured on that seed's evaluation people (clean
questions; the fit and the rehearsal never saw them) and the forget people. Vanilla once per seed.

``--kind calibration`` varies ``FitConfig.calibration_budget`` instead (the validation questions the membership
gate's threshold is set on, whole validation people in a seeded order), at the shipped retain budget.

    .venv/bin/python studies/retain_budget_curve.py [--model default --model default-qwen] [--seeds 0 1 2]
        [--budgets 200 400 800 all] [--out results/retain_budget] [--append] [--kind retain|calibration]
    .venv/bin/python studies/retain_budget_curve.py --replot results/retain_budget/curve.csv

Writes ``curve.csv`` (one row per model, seed and budget) and ``retain_budget.png``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

SETTINGS = {  # the rehearsal's choice on seed 0 (docs/results.md, "The demo" and the gate section)
    "default": dict(layer=4, lam=6.0, gate="prototype_whitened", gate_reads="last+image-max", gate_fpr=0.02),
    "default-qwen": dict(layer=4, lam=4.0, gate="prototype_whitened", gate_reads="last+image-max", gate_fpr=0.02),
}
COLUMNS = ["forget_leak_img", "forget_leak_txt", "test_leak_img", "retain_recall", "retain_mcq_acc", "real_recall",
           "retain_refused", "retain_people_refused", "real_people_refused"]


def run(models: list[str], seeds: list[int], budgets: list[str], out: Path, rows: list[dict] | None = None,
        contrast_options: dict | None = None, kind: str = "retain") -> pd.DataFrame:
    from toolkit.contrastive import privacy_sets
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.splits import PeopleSplit
    from toolkit.data.synthetic import default_benchmark
    from toolkit.adversarial import PGDConfig
    from toolkit.config import SHIPPED
    from toolkit.job import evaluate_people
    from toolkit.headline import headline_table
    from toolkit.evaluate import summarize
    from toolkit.benchmark_fit import fit_eraser
    from toolkit.data.samples import calibration_samples, fit_groups, fit_people, retain_question_samples
    from toolkit.models.loading import load_model

    rows = list(rows or [])
    bench = MLLMUBench(default_benchmark())
    for name in models:
        model = load_model(name)
        s = SETTINGS[name]
        for seed in seeds:
            # Held-out people only: in-fit people are not what the budget is judged on.
            options = dict(contrast_options or {})
            steps = options.pop("pgd_steps", SHIPPED.fit.pgd.steps if SHIPPED.fit.pgd else 0)
            config = SHIPPED.with_fit(people=PeopleSplit(seed=seed), pgd=PGDConfig(steps=steps) if steps else None,
                                      **options)
            config = replace(config, in_fit_people=0)
            base = replace(config.fit_config((s["layer"],), s["lam"]), gate=s["gate"], gate_reads=s["gate_reads"],
                           gate_fpr=s["gate_fpr"], gate_reads_kept=(), positions="prompt")
            t = time.time()
            contrast = privacy_sets(model, fit_people(bench, base, real=False), n=base.n_contrast, pgd=base.pgd,
                                    pgd_limit=base.pgd_limit)
            contrast_s = time.time() - t
            frames = [evaluate_people(model, bench, config, None, "vanilla")]
            table = headline_table(frames[0], summarize(frames[0]).assign(method="vanilla"))
            fixed = dict(n_contrast=config.fit.n_contrast or "all", pgd_images=config.fit.pgd_limit if steps else 0,
                         pgd_steps=steps, pairs=contrast.info["refused_clean"])
            rows.append(dict(model=name, seed=seed, budget="vanilla", n_retain=0, fit_s=0.0, **fixed,
                             **{c: table[c].iloc[0] for c in COLUMNS}))
            for budget in budgets:
                b = None if budget == "all" else int(budget)
                if kind == "retain":
                    cfg = replace(base, retain_budget=b, budget_seed=seed)
                    questions = len(retain_question_samples(fit_groups(bench, base), b))
                else:
                    cfg = replace(base, calibration_budget=b, budget_seed=seed)
                    cal = calibration_samples(bench, replace(cfg, wrap=0))
                    questions = len(cal[0])
                t = time.time()
                fit = fit_eraser(model, bench, cfg, contrast=contrast)
                fit_s = time.time() - t
                df = evaluate_people(model, bench, config, fit.eraser, "MLLMEraser", unsteered=frames[0])
                table = headline_table(df, summarize(df).assign(method="MLLMEraser"))
                extra = {} if kind == "retain" else {
                    "calibration_people": len(set(cal[1])),
                    "threshold": float(fit.eraser.layer_map(s["layer"]).gate_object.threshold)}
                row = dict(model=name, seed=seed, budget=budget, kind=kind, **fixed, questions=questions, **extra,
                           n_retain=int(fit.report["n_retain"]),
                           retain_people_read=len(fit.report["retain_read"]), fit_s=round(fit_s, 1),
                           contrast_s=round(contrast_s, 1), **{c: table[c].iloc[0] for c in COLUMNS})
                rows.append(row)
                print(row, flush=True)
                pd.DataFrame(rows).to_csv(out / "curve.csv", index=False)
    return pd.DataFrame(rows)


def plot(df: pd.DataFrame, path: Path, kind: str = "retain") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df[df.budget != "vanilla"].copy()
    if "pgd_steps" in df:  # the curve is drawn at the shipped contrast settings; other settings are rows of the CSV
        shipped = df[["n_contrast", "pgd_images", "pgd_steps"]].astype(str).agg("/".join, axis=1)
        df = df[shipped == shipped.mode().iloc[0]]
    panels = (("retain_recall", "held-out retain recall (%)"),
              ("retain_people_refused", "held-out people with a refusal (%)"),
              ("forget_leak_img", "forget leakage, image questions (%)")) if kind == "retain" else (
              ("retain_people_refused", "held-out people with a refusal (%)"),
              ("real_people_refused", "held-out real people with a refusal (%)"),
              ("test_leak_img", "Test_Set image leakage (%)"))
    # Budgets as categories in increasing order, "all" last (its question count differs by seed: in its label).
    order = sorted({b for b in df.budget if b != "all"}, key=int) + (["all"] if (df.budget == "all").any() else [])
    full = df[df.budget == "all"].questions
    labels = [b if b != "all" else f"all\n({int(full.min()):,}-{int(full.max()):,})" for b in order]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for (name, g), marker in zip(df.groupby("model", sort=False), "os^"):
        stats = g.groupby("budget")[[c for c, _ in panels]].agg(["mean", "min", "max"]).reindex(order)
        x = range(len(order))
        for ax, (col, _) in zip(axes, panels):
            line, = ax.plot(x, stats[col]["mean"], marker=marker, label=name)
            ax.fill_between(x, stats[col]["min"], stats[col]["max"], color=line.get_color(), alpha=0.15)
    for ax, (_, label) in zip(axes, panels):
        ax.set_ylabel(label)
        ax.set_xticks(range(len(order)), labels)
        ax.set_xlabel("retain questions the fit reads (budget)" if kind == "retain"
                      else "validation questions the threshold reads (budget)")
        ax.grid(alpha=0.3)
    top = axes[2].get_ylim()[1]
    axes[2].set_ylim(top=top + 0.35 * max(top, 1.0))  # room above the data for the legend
    axes[2].legend(loc="upper right", frameon=False)
    fig.suptitle(f"{kind.capitalize()} budget, shipped setting of each default: mean over "
                 f"{df.seed.nunique()} people seeds (band: min to max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=["200", "400", "800", "all"])
    ap.add_argument("--out", type=Path, default=None, help="default results/retain_budget (or calibration_budget)")
    ap.add_argument("--kind", choices=("retain", "calibration"), default="retain",
                    help="the budget varied: retain questions (the fit) or validation questions (the gate's threshold)")
    ap.add_argument("--replot", type=Path)
    ap.add_argument("--append", action="store_true", help="keep the rows of OUT/curve.csv (another model or seed)")
    ap.add_argument("--n-contrast", type=int, help="questions asked for the contrastive pairs (default: all)")
    ap.add_argument("--pgd-limit", type=int, help="images PGD attacks (default: the shipped fit's)")
    ap.add_argument("--pgd-steps", type=int, help="PGD steps (0: no adversarial images)")
    args = ap.parse_args()
    if args.replot:
        plot(pd.read_csv(args.replot, dtype={"budget": str}), args.replot.with_name(f"{args.kind}_budget.png"),
             args.kind)
        return
    args.out = args.out or Path(f"results/{args.kind}_budget")
    args.out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(args.out / "curve.csv", dtype={"budget": str}).to_dict("records") if args.append else []
    options = {k: v for k, v in (("n_contrast", args.n_contrast), ("pgd_limit", args.pgd_limit),
                                 ("pgd_steps", args.pgd_steps)) if v is not None}
    df = run(args.model or list(SETTINGS), args.seeds, args.budgets, args.out, done, options, args.kind)
    plot(df, args.out / f"{args.kind}_budget.png", args.kind)
    summary = df.groupby(["model", "budget"], sort=False)[["n_retain", "fit_s"] + COLUMNS].agg(["mean", "min", "max"])
    print(summary.round(1).to_string())


if __name__ == "__main__":
    main()
