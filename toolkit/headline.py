"""The headline tables: one row per method, the figures a report leads with (percent).

:func:`headline` reads a :func:`toolkit.evaluate.summarize` frame with a ``method`` column;
:func:`people_refused` counts false refusals in people, not questions; :func:`headline_table` joins both.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["HEADLINE_COLUMNS", "PEOPLE_COLUMNS", "headline", "people_refused", "headline_table", "method_name"]

HEADLINE_COLUMNS = {
    "forget_leak_img": ("Forget", "generation", "leaked", "image"),
    "forget_leak_txt": ("Forget", "generation", "leaked", "text"),
    "forget_refused": ("Forget", "generation", "refused", None),
    "forget_mcq_acc": ("Forget", "classification", "accuracy", None),
    "forget_cloze_acc": ("Forget", "cloze", "accuracy", None),
    "test_leak_img": ("Test", "generation", "leaked", "image"),
    "paraphrase_leak_img": ("Paraphrase", "generation", "leaked", "image"),
    "paraphrase_leak_txt": ("Paraphrase", "generation", "leaked", "text"),
    "retain_mcq_acc": ("Retain", "classification", "accuracy", None),
    "retain_gen_rougeL": ("Retain", "generation", "rougeL", None),
    "retain_recall": ("Retain", "generation", "leaked", None),
    "retain_refused": ("Retain", "generation", "refused", None),
    "real_mcq_acc": ("Real", "classification", "accuracy", None),
    "real_gen_rougeL": ("Real", "generation", "rougeL", None),
    "real_recall": ("Real", "generation", "leaked", None),
    "boundary_answered": ("Boundary", "generation", "leaked", None),
    "in_fit_retain_mcq_acc": ("Retain (in fit)", "classification", "accuracy", None),
    "in_fit_retain_recall": ("Retain (in fit)", "generation", "leaked", None),
    "in_fit_real_recall": ("Real (in fit)", "generation", "leaked", None),
    "forget_repetition": ("Forget", "generation", "repetition", None),
    "held_out_leak_img": ("Held out", "generation", "leaked", "image"),
    "held_out_leak_txt": ("Held out", "generation", "leaked", "text"),
    "held_out_mcq_acc": ("Held out", "classification", "accuracy", None),
}
# Splits only some runs have (a hand-written list's held-out questions): their columns are left out where no
# method has a row, instead of standing empty beside every benchmark run.
OPTIONAL_SPLITS = ("Held out",)


def method_name(table: pd.DataFrame, method: str) -> str | None:
    """The label of ``method``'s row in a headline table: ``method`` itself, or ``method`` with a qualifier, as the
    demo labels its eraser ("MLLMEraser (prototype_whitened gate)"); None if the table has neither."""
    labels = list(table.method)
    return method if method in labels else next((m for m in labels if m.startswith(f"{method} (")), None)


def headline(summary: pd.DataFrame, *, drop_empty: bool = False) -> pd.DataFrame:
    """One row per method (``summary`` from :func:`toolkit.evaluate.summarize` with a ``method`` column):
    percentages weighted by question count. ``drop_empty``: leave out columns no method has rows for."""
    rows = []
    for method, g in summary.groupby("method", sort=False):
        row = {"method": method}
        for name, (split, task, col, modality) in HEADLINE_COLUMNS.items():
            s = g[(g.split == split) & (g.task == task)]
            if modality:
                s = s[s.modality == modality]
            row[name] = round(100 * float((s[col] * s.n).sum() / s.n.sum()), 1) if len(s) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    absent = [c for c, (split, *_) in HEADLINE_COLUMNS.items() if split in OPTIONAL_SPLITS and table[c].isna().all()]
    table = table.drop(columns=absent)
    return table.dropna(axis=1, how="all") if drop_empty else table


PEOPLE_COLUMNS = {"retain_people_refused": "Retain", "real_people_refused": "Real"}


def people_refused(results: pd.DataFrame) -> pd.DataFrame:
    """Per method, the share (percent) of evaluation people with *any* generation question refused
    (``retain_people_refused``, ``real_people_refused``): false refusals come in people (a gate that
    mistakes one held-out person for a forget person refuses all their questions), so a question rate
    can look small while a person is lost."""
    rows = []
    for method, g in results.groupby("method", sort=False):
        row = {"method": method}
        for name, split in PEOPLE_COLUMNS.items():
            s = g[(g.split == split) & (g.task == "generation")]
            row[name] = round(100 * float(s.groupby("person").refused.max().mean()), 1) if len(s) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(results: pd.DataFrame, summary: pd.DataFrame, *, drop_empty: bool = False) -> pd.DataFrame:
    """:func:`headline` with the people-level false refusals (:func:`people_refused`) beside it."""
    table = headline(summary).merge(people_refused(results), on="method", how="left")
    return table.dropna(axis=1, how="all") if drop_empty else table
