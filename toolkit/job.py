"""The whole job in one call: people to forget in, a chosen and reported eraser out.

:func:`erase` takes a hand-written forget request (:mod:`toolkit.data.request`) or an
MLLMU-Bench folder and runs, with the shipped preset (:data:`toolkit.config.SHIPPED`):

1. **people split** (:class:`~toolkit.data.splits.PeopleSplit`, a seeded hash of each kept
   person's id): *fit* people build the null space, retain penalty, answer rows and
   contrastive pairs; *validation* people choose the settings; *evaluation* people are
   only reported;
2. **fit** at every candidate layer in one capture pass (:func:`toolkit.benchmark_fit.fit_eraser`);
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

from .benchmark_fit import FitResult, fit_eraser
from .config import SHIPPED, EraseConfig, FitConfig, settings_fingerprint
from .data.mllmu import MLLMUBench, Profile
from .data.request import ForgetRequest, as_benchmark
from .data.items import items_from_profiles
from .data.samples import fit_people, question_samples
from .eraser import Eraser
from .evaluate import benchmark_items, run_items, summarize
from .headline import headline_table
from .models.loading import LoadedModel
from .names import NameKeys
from .report import report_markdown
from .selection import Selection, fact_hits, select_setting

__all__ = ["EraseResult", "erase", "evaluate_people", "with_name_gate"]


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


def erase(model: LoadedModel, forget: str | Path | Sequence[Profile] | MLLMUBench | ForgetRequest,
          retain: str | Path | Sequence[Profile] | None = None, *, real: str | Path | Sequence[Profile] | None = None,
          config: EraseConfig = SHIPPED, out: str | Path | None = None, progress: bool = False) -> EraseResult:
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
        # Questions no fit, rehearsal or calibration reads, scored apart: a hand-written list's only held-out rows.
        bench = bench.holding_out(config.held_out_share, config.people.seed if config.people else 0)
    counts = {"forget": len(bench.forget(r)), "retain": config.people.counts(bench.retain(r)),
              "real": config.people.counts(bench.real())}
    say = print if progress else (lambda *a, **k: None)
    say(f"      people (seed {config.people.seed}): forget {counts['forget']}, retain {counts['retain']}"
        + (f", real {counts['real']}" if bench.real() else ""), flush=True)
    layers = tuple(model.check_layers(config.fit.layers or None))  # None (or none given): every decoder layer
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
    names_report = None
    if fit_config.name_gate:
        eraser, names_report = with_name_gate(eraser, bench, r)
        say(f"      name gate: {names_report['forget_names']} forget names; kept people it would fire on: "
            f"{names_report['kept_named'] or 'none'}", flush=True)
    warning = None
    if float(chosen["stand-ins"]) > config.select.leak_max + 1e-12:
        warning = (f"the rehearsal found no setting whose stand-ins leak at most {config.select.leak_max:.0%} (the "
                   f"chosen one: {float(chosen['stand-ins']):.0%}), so expect the forget people to leak too; more kept "
                   f"people, with image questions, give the fit more contrastive pairs and the rehearsal more "
                   f"stand-ins ({c['refused_clean']} pairs, {len(sel.stand_ins)} stand-ins here)")
        warnings.warn(warning, stacklevel=2)
    say("[3/3] evaluating vanilla and the eraser (evaluation people are the headline) ...", flush=True)
    vanilla = evaluate_people(model, bench, config, None, "vanilla")
    frames = [vanilla, evaluate_people(model, bench, config, eraser, "MLLMEraser", unsteered=vanilla)]
    results = pd.concat(frames, ignore_index=True)
    summary = pd.concat([summarize(f).assign(method=f.method.iloc[0]) for f in frames], ignore_index=True)
    table = headline_table(results, summary, drop_empty=isinstance(bench, ForgetRequest))
    info = {"source": getattr(bench, "source", "") or str(getattr(bench, "root", "")),
            "model": model.name, "fingerprint": model.fingerprint(),
            "settings": settings_fingerprint(config),
            "forget_ratio": r if isinstance(bench, MLLMUBench) else None,
            "forget_people": [p.id for p in bench.forget(r)],
            "layer": sel.layer, "lam": sel.lam, "threshold": sel.threshold, "positions": sel.positions,
            "gate": sel.gate, "gate_fpr": sel.gate_fpr, "gate_reads": sel.gate_reads, "latch": sel.latch,
            "gate_report": eraser.settings.get("report", {}).get("layers", {}).get(sel.layer, {}),
            "name_gate": names_report,
            "rehearsal_leak": float(chosen["stand-ins"]), "validation_recall": float(chosen["recall"]),
            "retain_questions": {"read": fit_config.retain_budget or available, "available": available},
            "held_out_questions": len(items_from_profiles(bench.held_out(r), "Held out")),
            "people": counts, "stand_ins": sel.stand_ins, "validation_people": sel.validation_people,
            "selection": f"rehearsal on validation people: {sel.rule}", "fit_report": fit.report,
            "warning": warning, "seconds": round(time.time() - start, 1)}
    result = EraseResult(eraser, fit, sel, fit_config, results, summary, table, info)
    if out is not None:
        result.save(out)
    return result


def with_name_gate(eraser: Eraser, bench: Any, ratio: int) -> tuple[Eraser, dict]:
    """The chosen eraser with a name gate for the forget people (:mod:`toolkit.names`), and a check on the kept
    people: whose own name the gate would take for a forget person's (each such person loses every question that
    names them)."""
    forget = [p.name for p in bench.forget(ratio)]
    keys = NameKeys.from_names(forget)
    kept = [p.name for p in list(bench.retain(ratio)) + list(bench.real())]
    named = sorted({n for n, hit in zip(kept, keys.matches(kept)) if hit})
    if named:
        warnings.warn(f"the name gate takes {len(named)} kept people for forget people ({', '.join(named[:5])}): "
                      "their questions that name them will be refused", stacklevel=3)
    return eraser.with_names(keys), {"forget_names": len(set(forget)), "kept_people": len(kept), "kept_named": named}


def evaluate_people(model: LoadedModel, bench: Any, config: EraseConfig, steers: Any, label: str, *,
                    unsteered: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every question of the forget people, the evaluation people (and up to ``config.in_fit_people``
    fit people, labelled "in fit") answered with ``steers``; one row per answer, ``method=label``.
    ``leaked``: the fact appears; where a question gives no fact, ROUGE-L >= 0.5 against its answer.
    ``unsteered``: this function's frame without steers (same bench and config): questions a prefill-deciding gate
    leaves alone keep those answers instead of being generated again (:func:`toolkit.evaluate.run_items`)."""
    items = benchmark_items(bench, config.forget_ratio, people=config.people, in_fit_people=config.in_fit_people)
    # Back to run_items' columns: its leaked, filled by fact_hits below, is a fixed point of fact_hits.
    plain = unsteered.drop(columns=["method"]) if unsteered is not None else None
    df = run_items(model, items, steers=steers, batch_size=config.batch_size, progress=True, label=label,
                   unsteered=plain)
    if len(df):
        df["leaked"] = fact_hits(df)
    df.insert(0, "method", label)
    return df
