"""The whole job in one call: people to forget in, a chosen and reported eraser out.

:func:`erase` takes a hand-written forget request (:mod:`toolkit.data.request`) or an
MLLMU-Bench folder and runs, with one set of defaults (:class:`EraseConfig`):

1. **people split** (:class:`~toolkit.data.splits.PeopleSplit`, a seeded hash of each kept
   person's id): *fit* people build the null space, retain penalty, answer rows and
   contrastive pairs; *validation* people choose the settings; *evaluation* people are
   only reported;
2. **fit** at every candidate layer in one capture pass (:func:`toolkit.fit.fit_eraser`);
3. **rehearsal** (:func:`toolkit.selection.select_setting`): validation people stand in for
   the forget list; gate kind, layer, target false-positive rate, strength and position mode
   are chosen on them, never on the people reported;
4. **report**: vanilla and the chosen eraser on the forget people and on held-out (evaluation)
   kept people, with up to ``in_fit_people`` fit people beside them, labelled "in fit".

``make demo``, ``mllmeraser erase`` and ``mllmeraser demo`` are users of this call.

Cost on the embedded default (2 CPU cores): about 2 minutes for forget_10 of the synthetic
benchmark; on a 7B checkpoint it is dominated by the retain captures and the PGD steps
(``bench/real_shapes.py``).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .data.mllmu import MLLMUBench, Profile
from .data.request import ForgetRequest, read_request
from .data.splits import PeopleSplit
from .eraser import Eraser
from .evaluate import benchmark_items, run_items, summarize
from .fit import FitConfig, FitResult, fit_eraser, fit_people, question_samples
from .models.loading import LoadedModel
from .nullspace import FixedRatio
from .selection import SelectConfig, Selection, fact_hits, select_setting

__all__ = ["EraseConfig", "EraseResult", "erase", "as_benchmark", "headline", "headline_table", "people_refused",
           "HEADLINE_COLUMNS",
           "PEOPLE_COLUMNS"]


@dataclass(frozen=True)
class EraseConfig:
    """The one set of defaults (``erase``, ``mllmeraser erase`` / ``demo``, the notebooks).

    ``rho`` (null-space share of the width), ``retain_weight`` and ``answer_weight`` were chosen
    on validation questions of the embedded default (docs: method); gate kind, layer, strength,
    threshold and position mode are chosen by the rehearsal on validation people in every run.
    ``layers=None``: every decoder layer is fitted, the rehearsal chooses among the upper half.
    ``forget_ratio`` picks an MLLMU-Bench folder's forget split; a hand-written request has one list.
    ``retain_budget``: at most that many retain questions are read (:class:`~toolkit.fit.FitConfig`; fewer
    available: all of them); ``None``: all.
    """

    forget_ratio: int = 10
    rho: float = 0.97
    gamma: float = 0.1
    retain_weight: float = 40.0
    answer_weight: float = 0.3
    layers: tuple[int, ...] | None = None
    people: PeopleSplit = PeopleSplit()
    select: SelectConfig = SelectConfig(gates=("prototype_whitened", "prototype", "logistic", "linear"),
                                        gate_fprs=(0.02, 0.05),
                                        gate_reads=("last+mean", "image-max", "last+image-max"),
                                        wrap=1, screen_top=3)
    in_fit_people: int = 20  # fit people evaluated beside the held-out ones (labelled "in fit")
    # Questions asked for the contrastive pairs, spread over the fit people (None: all of them). 64 gave the same
    # held-out figures as all 182 on both defaults (docs: results, "What the fit costs"), and does not grow with
    # the benchmark.
    n_contrast: int | None = 64
    # PGD: 0 steps gives no adversarial images (the text-only half of the direction). 4 images x 10 steps gave the
    # same held-out figures as 16 x 20 on both defaults at an eighth of the cost (docs: results, "What the fit
    # costs").
    pgd_steps: int = 10
    pgd_limit: int | None = 4
    batch_size: int = 48
    # Retain questions the fit reads (FitConfig.retain_budget; None: all), read off the measured curve
    # (tools/retain_budget_curve.py; docs: results, "What the fit costs").
    retain_budget: int | None = 800

    def fit_config(self, layers: tuple[int, ...], lam: float = 1.0) -> FitConfig:
        from .adversarial import PGDConfig

        return FitConfig(layers=layers, forget_ratio=self.forget_ratio, rank_policy=FixedRatio(self.rho),
                         gamma=self.gamma, retain_weight=self.retain_weight, answer_weight=self.answer_weight,
                         lam=lam, n_contrast=self.n_contrast,
                         pgd=PGDConfig(steps=self.pgd_steps) if self.pgd_steps else None,
                         pgd_limit=self.pgd_limit, people=self.people,
                         gate_rows=any(k != "linear" for k in (self.select.gates or ())),
                         gate_reads=(self.select.gate_reads or ("last+mean",))[0],
                         gate_reads_kept=tuple(self.select.gate_reads or ()), wrap=self.select.wrap,
                         retain_budget=self.retain_budget)


@dataclass
class EraseResult:
    """What :func:`erase` chose and measured.

    ``results``: one row per answer (``method`` "vanilla" / "MLLMEraser"); ``summary``: their means per
    split, task and modality; ``table``: one row per method, the figures of :data:`HEADLINE_COLUMNS`
    (percent; columns the data has no rows for are left out).
    """

    eraser: Eraser
    fit: FitResult
    selection: Selection
    fit_config: FitConfig
    results: pd.DataFrame
    summary: pd.DataFrame
    table: pd.DataFrame
    info: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """What ``metrics.json`` holds: :attr:`info` with the headline table and the summary, as records."""
        return dict(self.info, headline=self.table.to_dict("records"), summary=self.summary.to_dict("records"))

    def save(self, out: str | Path, title: str = "MLLMEraser", note: str = "") -> Path:
        """Write ``eraser.safetensors``, ``report.md``, ``metrics.json``, ``results.csv``, ``summary.csv``,
        ``selection_grid.csv`` (and ``gate_screening.csv``) under ``out``. ``note``: a sentence the report
        gives after the chosen setting."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.eraser.save(out / "eraser.safetensors")
        self.results.to_csv(out / "results.csv", index=False)
        self.summary.to_csv(out / "summary.csv", index=False)
        self.selection.grid.to_csv(out / "selection_grid.csv", index=False)
        if self.selection.screening is not None:
            self.selection.screening.to_csv(out / "gate_screening.csv", index=False)
        info = self.metrics()
        (out / "metrics.json").write_text(json.dumps(info, indent=1, default=str))
        (out / "report.md").write_text(report_markdown(title, info, self.table, self.selection, note))
        return out


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
}


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


def _is_mllmu_folder(path: Path) -> bool:
    return path.is_dir() and any((path / s).is_dir() for s in ("Full_Set", "forget_10", "forget_5", "forget_15"))


def as_benchmark(forget: Any, retain: Any = None, real: Any = None) -> MLLMUBench | ForgetRequest:
    """What :func:`erase` reads: an :class:`MLLMUBench` (or its folder, with ``retain=None``), a
    :class:`ForgetRequest`, or forget / retain lists (files, folders of them, or profiles)."""
    folder = isinstance(forget, (str, Path)) and _is_mllmu_folder(Path(forget))
    if isinstance(forget, (MLLMUBench, ForgetRequest)) or folder:
        if retain is not None or real is not None:
            raise ValueError(f"{forget} is a benchmark, which holds its retain and real people: pass no retain or "
                             "real list with it.")
        return MLLMUBench(forget) if folder else forget
    if retain is None:
        raise ValueError("A forget list needs a retain list (the people whose knowledge must stay): "
                         "erase(model, forget=..., retain=...).")
    return read_request(forget, retain, real)


def erase(model: LoadedModel, forget: str | Path | Sequence[Profile] | MLLMUBench | ForgetRequest,
          retain: str | Path | Sequence[Profile] | None = None, *, real: str | Path | Sequence[Profile] | None = None,
          config: EraseConfig = EraseConfig(), out: str | Path | None = None, progress: bool = False) -> EraseResult:
    """Fit, choose and report an eraser for the people in ``forget``, keeping those in ``retain``.

    ``forget`` / ``retain``: list files (JSONL / CSV, :mod:`toolkit.data.request`), folders of them,
    or :class:`~toolkit.data.mllmu.Profile` lists; or an MLLMU-Bench folder (or ``MLLMUBench``) alone,
    read at ``config.forget_ratio``. ``real``: optional second group of kept people, reported apart.
    ``out``: write the eraser file and the report there (:meth:`EraseResult.save`).

    Memory: the model for inference, plus per fitted layer two ``d x d`` float64 statistics
    (retain, forget) and the membership gates' reservoirs; the eraser keeps the chosen layer only.
    """
    start = time.time()
    bench = as_benchmark(forget, retain, real)
    r = config.forget_ratio
    if isinstance(bench, ForgetRequest):
        bench.check_split(config.people, minimum=3)
    counts = {"forget": len(bench.forget(r)), "retain": config.people.counts(bench.retain(r)),
              "real": config.people.counts(bench.real())}
    say = print if progress else (lambda *a, **k: None)
    say(f"      people (seed {config.people.seed}): forget {counts['forget']}, retain {counts['retain']}"
        + (f", real {counts['real']}" if bench.real() else ""), flush=True)
    layers = tuple(config.layers) if config.layers else tuple(range(model.num_layers))
    fit_config = config.fit_config(layers)
    # The retain budget is "at most" here: a request with fewer retain questions is read whole.
    available = len(question_samples(fit_people(bench, fit_config), "retain"))
    if fit_config.retain_budget is not None and fit_config.retain_budget >= available:
        fit_config = replace(fit_config, retain_budget=None)
    say(f"      retain questions the fit reads: {fit_config.retain_budget or available} of {available}", flush=True)
    say(f"[1/3] fitting at {len(layers)} layer(s) from fit people only ...", flush=True)
    fit = fit_eraser(model, bench, fit_config, progress=progress)
    c = fit.report["contrast"]
    say(f"      {c['refused_clean']} contrastive pairs; PGD made the model answer {c['pgd_success']}/"
        f"{c.get('pgd_attacked', c['refused_clean'])} attacked; fit took {fit.report['fit_seconds']} s", flush=True)
    say("[2/3] choosing gate, layer, lambda and positions on the rehearsal (validation people) ...", flush=True)
    eraser, sel = select_setting(model, fit, bench, fit_config, config.select, progress=progress)
    chosen = sel.chosen
    say(f"      chosen: {sel.gate} gate reading {sel.gate_reads}{' (latched)' if sel.latch else ''}, layer "
        f"{sel.layer}, lambda {sel.lam}, threshold {sel.threshold}, positions "
        f"{sel.positions} ({sel.rule}; rehearsal leakage {chosen['stand-ins']:.2f}, validation recall "
        f"{chosen['recall']:.2f})", flush=True)
    warning = None
    if float(chosen["stand-ins"]) > config.select.leak_max + 1e-12:
        warning = (f"the rehearsal found no setting whose stand-ins leak at most {config.select.leak_max:.0%} (the "
                   f"chosen one: {float(chosen['stand-ins']):.0%}), so expect the forget people to leak too; more kept "
                   f"people, with image questions, give the fit more contrastive pairs and the rehearsal more "
                   f"stand-ins ({c['refused_clean']} pairs, {len(sel.stand_ins)} stand-ins here)")
        warnings.warn(warning, stacklevel=2)
    say("[3/3] evaluating vanilla and the eraser (evaluation people are the headline) ...", flush=True)
    frames = [evaluate_people(model, bench, config, None, "vanilla"),
              evaluate_people(model, bench, config, eraser, "MLLMEraser")]
    results = pd.concat(frames, ignore_index=True)
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline_table(results, summary, drop_empty=isinstance(bench, ForgetRequest))
    info = {"source": getattr(bench, "source", "") or str(getattr(bench, "root", "")),
            "model": model.name, "fingerprint": model.fingerprint(),
            "forget_ratio": r if isinstance(bench, MLLMUBench) else None,
            "forget_people": [p.id for p in bench.forget(r)],
            "layer": sel.layer, "lam": sel.lam, "threshold": sel.threshold, "positions": sel.positions,
            "gate": sel.gate, "gate_fpr": sel.gate_fpr, "gate_reads": sel.gate_reads, "latch": sel.latch,
            "gate_report": eraser.settings.get("report", {}).get("layers", {}).get(sel.layer, {}),
            "rehearsal_leak": float(chosen["stand-ins"]), "validation_recall": float(chosen["recall"]),
            "retain_questions": {"read": fit_config.retain_budget or available, "available": available},
            "people": counts, "stand_ins": sel.stand_ins, "validation_people": sel.validation_people,
            "selection": f"rehearsal on validation people: {sel.rule}", "fit_report": fit.report,
            "warning": warning, "seconds": round(time.time() - start, 1)}
    result = EraseResult(eraser, fit, sel, fit_config, results, summary, table, info)
    if out is not None:
        result.save(out)
    return result


def evaluate_people(model: LoadedModel, bench: Any, config: EraseConfig, steers: Any, label: str) -> pd.DataFrame:
    """Every question of the forget people, the evaluation people (and up to ``config.in_fit_people``
    fit people, labelled "in fit") answered with ``steers``; one row per answer, ``method=label``.
    ``leaked``: the fact appears; where a question gives no fact, ROUGE-L >= 0.5 against its answer."""
    items = benchmark_items(bench, config.forget_ratio, people=config.people, in_fit_people=config.in_fit_people)
    df = run_items(model, items, steers=steers, batch_size=config.batch_size, progress=True, label=label)
    if len(df):
        df["leaked"] = fact_hits(df)
    df.insert(0, "method", label)
    return df


def report_markdown(title: str, info: dict, table: pd.DataFrame, selection: Selection, note: str = "") -> str:
    """The report a run writes: the choice (then ``note``), the people, the headline table, the rehearsal grid."""
    where = f"forget_{info['forget_ratio']} of {info['source']}" if info.get("forget_ratio") else info["source"]
    lines = [f"# {title}", "",
             *([f"**Warning:** {info['warning']}.", ""] if info.get("warning") else []),
             f"Forget: {len(info['forget_people'])} people ({where}). Model: {info['model']}.", "",
             f"Chosen on the rehearsal (validation people, never reported): a {info['gate']} gate at layer "
             f"{info['layer']} (reading {info.get('gate_reads', 'last')}"
             f"{', latched through generation' if info.get('latch') else ''}), lambda {info['lam']}, threshold {info['threshold']}, positions {info['positions']} "
             f"({info['selection']}).{' ' + note if note else ''}", "",
             f"People: {json.dumps(info['people'])}. `retain_*` / `real_*`: evaluation people (never in the fit or "
             "the selection); `in_fit_*`: people whose activations built the fit.", "",
             "Percent. `leak` / `recall`: the fact appears in the answer (where a question gives no fact: "
             "ROUGE-L >= 0.5 against its answer). `*_refused`: share of questions refused; `*_people_refused`: "
             "share of people with any question refused.", "",
             table.to_markdown(index=False), "", "## Selection grid (rehearsal, validation people)", "",
             selection.grid.round(3).to_markdown(index=False), ""]
    if selection.screening is not None:
        lines += ["## Gate screening (rehearsal, validation people; no generation)", "",
                  selection.screening.round(3).to_markdown(index=False), ""]
    lines += [f"Total time: {info['seconds']} s."]
    return "\n".join(lines)
