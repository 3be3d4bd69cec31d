"""The results page's headline table for one run folder, from its ``metrics.json`` (what ``make demo`` and
``mllmeraser erase`` write): vanilla and the eraser on evaluation people, each headline goal met or missed
(:mod:`toolkit.goals`), the in-fit figures below, labelled.

    .venv/bin/python tools/headline_tables.py results/demo results/demo-qwen
    .venv/bin/python tools/headline_tables.py --splits results/demo_f5 results/demo results/demo_f15 ...

``--splits``: one row per run (the held-out table of the results page: forget_5 / 10 / 15 on both defaults).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from toolkit.goals import check_goals
from toolkit.headline import method_name

IN_FIT = {"in_fit_retain_recall": "in-fit retain recall (fit people, labelled: not a held-out figure)",
          "in_fit_retain_mcq_acc": "in-fit retain MCQ"}


def headline_markdown(run: Path) -> str:
    info = json.loads((run / "metrics.json").read_text())
    table = pd.DataFrame(info["headline"])
    row = table.set_index("method")
    eraser = method_name(table, "MLLMEraser")
    lines = [f"Chosen on the rehearsal: {info['gate']} gate reading `{info['gate_reads']}` at layer {info['layer']}, "
             f"lambda {info['lam']:g}, positions `{info['positions']}`; settings `{info.get('settings', '?')}`.", "",
             "| measure | vanilla | MLLMEraser | goal | |", "|:--|--:|--:|:--|:--|"]
    for c in check_goals(table).itertuples():
        lines.append(f"| {c.goal} (`{c.column}`) | {c.vanilla:g} | **{c.value:g}** | {c.bar} | "
                     f"{'met' if c.met else '**missed**'} |")
    for column, label in IN_FIT.items():
        if column in row:
            lines.append(f"| {label} | {row.loc['vanilla', column]:g} | {row.loc[eraser, column]:g} | | |")
    return "\n".join(lines)


def splits_markdown(runs: list[Path]) -> str:
    """One row per run: the choice, the rehearsal, forgetting, held-out utility (vanilla -> eraser), the linear gate
    with the same edit, the run's settings fingerprint and seconds."""
    lines = ["| model | split | chosen (read / layer / lambda) | rehearsal leak / recall | forget leak img / txt | "
             "forget MCQ / cloze | Test img / paraphrase img, txt | retain recall (held out) | retain MCQ (held out) | "
             "real recall (held out) | people with any refusal: retain / real | retain recall (in fit) | "
             "linear gate, same edit: leak img / held-out recall | settings | seconds |",
             "|:--|:--|:--|:--|:--|:--|:--|:--|:--|:--|:--|--:|:--|:--|--:|"]
    for run in runs:
        info = json.loads((run / "metrics.json").read_text())
        t = pd.DataFrame(info["headline"]).set_index("method")
        v = t.loc["vanilla"]
        e = t.loc[method_name(t.reset_index(), "MLLMEraser")]
        lin = t.loc[method_name(t.reset_index(), "linear gate, same edit")]
        model = "default (LLaVA)" if info["model"] == "default" else info["model"]
        lines.append(
            f"| {model} | forget_{info['forget_ratio']} | {info['gate_reads']} / {info['layer']} / {info['lam']:g} | "
            f"{100 * info['rehearsal_leak']:.1f} / {100 * info['validation_recall']:.1f} | "
            f"{e.forget_leak_img:g} / {e.forget_leak_txt:g} | {e.forget_mcq_acc:g} / {e.forget_cloze_acc:g} | "
            f"{e.test_leak_img:g} / {e.paraphrase_leak_img:g}, {e.paraphrase_leak_txt:g} | "
            f"{v.retain_recall:g} -> **{e.retain_recall:g}** | {v.retain_mcq_acc:g} -> **{e.retain_mcq_acc:g}** | "
            f"{v.real_recall:g} -> **{e.real_recall:g}** | {e.retain_people_refused:g} / {e.real_people_refused:g} | "
            f"{e.in_fit_retain_recall:g} | {lin.forget_leak_img:g} / {lin.retain_recall:g} | "
            f"`{info.get('settings', '?')}` | {info['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--splits"]:
        print(splits_markdown([Path(f) for f in sys.argv[2:]]))
    else:
        for folder in sys.argv[1:]:
            print(f"<!-- {folder} -->\n{headline_markdown(Path(folder))}\n")
