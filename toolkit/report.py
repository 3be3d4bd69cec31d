"""What a run writes for a reader: the markdown report (:func:`report_markdown`) and its figures (seaborn; every
plotting function returns the figure)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from typing import Any

from .config import settings_fingerprint
from .goals import check_goals
from .headline import method_name

__all__ = ["report_markdown", "plot_summary", "plot_grid"]


def _held_out_line(info: dict, table: pd.DataFrame) -> str:
    """A hand-written list's first line: leakage on the questions no fit read against its goals
    (:mod:`toolkit.goals`), or that there are none."""
    checks = check_goals(table) if info.get("held_out_questions") and method_name(table, "MLLMEraser") else None
    held = checks[checks.column.str.startswith("held_out_leak_")] if checks is not None else []
    if not len(held):
        return ("**Read this first:** every forget question scored here was also read by the fit, so these forget "
                "figures are in-fit figures. The same people asked in other words can leak more (docs: limits, "
                "\"A hand-written forget list\"): hold some questions out (`held_out` rows, `--held-out-share`).")
    shown = " / ".join(f"{r.value:g}% of {'image' if r.column.endswith('img') else 'text'} questions"
                       for r in held.itertuples())
    bars = " / ".join(dict.fromkeys(held.bar))
    verdict = (f"**over the goal (leakage {bars}%)**: the eraser does not generalise to these people's other "
               "questions" if not held.met.all() else f"within the goal (leakage {bars}%)")
    return (f"**Read this first:** on the {info['held_out_questions']} forget questions held out of the fit, the "
            f"rehearsal and the calibration, the eraser leaks {shown}, {verdict}. The other forget figures are on "
            "questions the fit read (in-fit).")


def _goal_lines(table: pd.DataFrame) -> list[str]:
    """The eraser's row against the project's goals (:mod:`toolkit.goals`), misses named first."""
    if method_name(table, "MLLMEraser") is None:
        return []
    checks = check_goals(table).drop(columns="column")
    missed = checks[~checks.met].goal.tolist()
    lead = (f"**Missed: {', '.join(missed)}.**" if missed else "**Every goal the table measures is met.**")
    shown = checks.assign(met=checks.met.map({True: "met", False: "**missed**"}))
    return ["## Against the goals (toolkit.goals; evaluation people)", "", lead, "",
            shown.to_markdown(index=False, floatfmt="g"), ""]


def plot_summary(summary: pd.DataFrame):
    """Bars per split: answer leakage (generation) and MCQ accuracy, one hue per method."""
    gen = summary[summary.task == "generation"].copy()
    mcq = summary[summary.task == "classification"].copy()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    for ax, df, col, title in ((axes[0], gen, "leaked", "generation: fact in the answer"),
                               (axes[1], mcq, "accuracy", "classification accuracy")):
        df = df.assign(value=100 * df[col], where=df.split + " / " + df.modality)
        sns.barplot(df, x="where", y="value", hue="method", ax=ax, legend=ax is axes[0])
        ax.set(title=title, xlabel="split / modality", ylabel="% of answers", ylim=(0, 105))
        for label in ax.get_xticklabels():
            label.set_rotation(40)
            label.set_horizontalalignment("right")
    # One legend, below the panels: never over the bars.
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.legend(handles, labels, title="method", loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_grid(grid: pd.DataFrame, value: str = "refusal_rate"):
    """Heatmaps layer x lambda of ``value`` for each prompt set."""
    sets = [s for s in grid.set.unique()]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sets):
        g = grid[(grid.set == name) & (grid.layer >= 0)].pivot_table(index="layer", columns="lam", values=value)
        sns.heatmap(g, annot=True, fmt=".2f", vmin=0, vmax=1 if "rate" in value or "prob" in value else None,
                    cmap="viridis", ax=ax, cbar=False)
        ax.set(title=f"{name}: {value}", xlabel="lambda", ylabel="layer")
    fig.tight_layout()
    return fig


def _name_gate_line(names: dict) -> str:
    kept = names.get("kept_named") or []
    return (f"Name gate: on (added after the rehearsal): a prompt naming any of the {names['forget_names']} forget "
            "people is steered whatever the state gate says. "
            + (f"**It also names {len(kept)} of the {names['kept_people']} kept people** ({', '.join(kept)}): "
               "their questions that name them will be refused." if kept else
               f"None of the {names['kept_people']} kept people's names is taken for a forget person's."))


def report_markdown(title: str, info: dict, table: pd.DataFrame, selection: Any, note: str = "") -> str:
    """The report a run writes: the choice (then ``note``), the people, the headline table, the rehearsal grid."""
    where = f"forget_{info['forget_ratio']} of {info['source']}" if info.get("forget_ratio") else info["source"]
    lines = [f"# {title}", "",
             *([f"**Warning:** {info['warning']}.", ""] if info.get("warning") else []),
             *([] if info.get("forget_ratio") else [_held_out_line(info, table), ""]),
             f"Forget: {len(info['forget_people'])} people ({where}). Model: {info['model']}. Settings "
             f"`{info.get('settings', '?')}` (`toolkit.config.settings_fingerprint`; the shipped ones: "
             f"`{settings_fingerprint()}`).", "",
             f"Chosen on the rehearsal (validation people, never reported): a {info['gate']} gate at layer "
             f"{info['layer']} (reading {info.get('gate_reads', 'last')}"
             f"{', latched through generation' if info.get('latch') else ''}), lambda {info['lam']}, threshold {info['threshold']}, positions {info['positions']} "
             f"({info['selection']}).{' ' + note if note else ''}", "",
             *([_name_gate_line(info["name_gate"]), ""] if info.get("name_gate") else []),
             f"People: {json.dumps(info['people'])}. `retain_*` / `real_*`: evaluation people (never in the fit or "
             "the selection); `in_fit_*`: people whose activations built the fit.", "",
             "Percent. `leak` / `recall`: the fact appears in the answer (where a question gives no fact: "
             "ROUGE-L >= 0.5 against its answer). `*_refused`: share of questions refused; `*_people_refused`: "
             "share of people with any question refused.", "",
             table.to_markdown(index=False), "",
             *_goal_lines(table),
             "## Selection grid (rehearsal, validation people)", "",
             selection.grid.round(3).to_markdown(index=False), ""]
    if selection.screening is not None:
        lines += ["## Gate screening (rehearsal, validation people; no generation)", "",
                  selection.screening.round(3).to_markdown(index=False), ""]
    lines += [f"Total time: {info['seconds']} s."]
    return "\n".join(lines)
