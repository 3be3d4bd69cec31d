"""All probes on one model and benchmark, before erasure: what `mllmeraser probe` and the probe notebook run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import PeopleSplit
from toolkit.evaluate import items_from_profiles
from toolkit.config import FitConfig
from toolkit.benchmark_fit import FitResult, fit_eraser, refit_forget
from toolkit.data.samples import fit_people, question_samples
from toolkit.models.loading import LoadedModel, Sample
from toolkit.tracing import capture

from . import direction_stability, gate_distribution, gate_roc, nullspace_rank, plots, separability, steering_effects

__all__ = ["ProbeReport", "probe_report"]


@dataclass
class ProbeReport:
    direction_separability: pd.DataFrame  # D+ vs D- along the erasure direction, per layer
    forget_retain_separability: pd.DataFrame  # forget vs retain activations, per layer
    cosines: pd.DataFrame
    ranks: pd.DataFrame
    gates: pd.DataFrame  # gate values per layer on forget / retain
    grid: pd.DataFrame
    window: pd.DataFrame
    recommended: tuple[int, float] | None
    fit: FitResult
    stability: pd.DataFrame  # cosine between directions from disjoint halves of the contrast set
    gate_groups: pd.DataFrame  # gate per group of people (forget, in fit, validation), per layer
    figures: dict = field(default_factory=dict)
    gate_roc: pd.DataFrame | None = None  # each gate kind's AUROC / TPR per layer on validation people

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("direction_separability", "forget_retain_separability", "ranks", "gates", "grid", "window",
                     "stability", "gate_groups"):
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        if self.gate_roc is not None:
            self.gate_roc.to_csv(out / "gate_roc.csv", index=False)
        self.cosines.to_csv(out / "cosines.csv")
        for name, fig in self.figures.items():
            fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        summary = {"recommended_layer_lambda": self.recommended, "fit_report": self.fit.report}
        (out / "probe_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return out


def _generation(profiles) -> tuple[list[Sample], list[str]]:
    items = items_from_profiles(profiles, "x", ("generation",))
    return [Sample(it.prompt, it.image) for it in items], [it.reference for it in items]


def probe_report(model: LoadedModel, bench: MLLMUBench, *, forget_ratio: int = 10, layers=None,
                 lams=(0.5, 1.0, 1.5, 2.0, 3.0), fit_config: FitConfig | None = None,
                 progress: bool = False) -> ProbeReport:
    """Every probe on the benchmark's published columns only (no names, paraphrases or extra sets).

    The activations come from the fit people; the steering grid runs on the rehearsal
    (validation people "forgotten" by the same fit, :mod:`toolkit.selection`) so no
    probe reads an evaluation person or tunes on the forget people's questions.
    """
    if layers is None:  # the fit's layers when a fit config is given (probing others would need their maps)
        layers = list(fit_config.layers) if fit_config is not None else list(range(model.num_layers))
    layers = model.check_layers(layers)
    cfg = fit_config or FitConfig(layers=tuple(layers), forget_ratio=forget_ratio, gate_rows=True)
    missing = sorted(set(layers) - set(model.check_layers(list(cfg.layers))))
    if missing:
        raise ValueError(f"Layers {missing} are probed but not fitted (fit_config.layers = {list(cfg.layers)}); "
                         "fit every probed layer.")
    split = cfg.people or PeopleSplit()
    fit = fit_eraser(model, bench, cfg, progress=progress)
    plus, minus = fit.contrast.for_variant(cfg.variant)
    cap_plus, cap_minus = capture(model, plus, layers), capture(model, minus, layers)
    dir_sep = separability.layer_separability(cap_plus.activations, cap_minus.activations,
                                              {l: fit.direction.vectors[l].float() for l in layers})
    stability = pd.DataFrame([{"layer": l, "n_refusal": len(plus), "n_recall": len(minus),
                               **direction_stability.half_split_cosines(cap_plus[l], cap_minus[l])} for l in layers])
    forget_people = bench.forget(forget_ratio)
    forget = capture(model, question_samples(forget_people, "forget"), layers, batch_size=48)
    retain = capture(model, question_samples(fit_people(bench, cfg), "retain"), layers, batch_size=48)
    fr_sep = separability.layer_separability(forget.activations, retain.activations)
    cos = separability.direction_cosines({l: fit.direction.vectors[l] for l in layers})
    ranks = nullspace_rank.rank_table(retain.activations, forget.activations)
    # The fitted eraser's own gates (its retain penalty and answer rows included), not a refit.
    gates = pd.concat([nullspace_rank.eraser_gate_values(fit.eraser.layer_map(l), retain[l], forget[l]).assign(layer=l)
                       for l in layers], ignore_index=True)
    stand, val_retain = split.rehearsal(bench.retain(forget_ratio), len(forget_people))
    groups = {"forget": _generation(forget_people)[0],
              "retain (in fit)": _generation(split.people(bench.retain(forget_ratio), "fit"))[0],
              "retain (validation, never in the fit)": _generation(val_retain)[0],
              "real (validation, never in the fit)": _generation(split.people(bench.real(), "validation"))[0]}
    gate_groups = gate_distribution.gate_distribution(model, fit.eraser, {k: v for k, v in groups.items() if v},
                                                      layers)
    rehearsal = refit_forget(model, fit, stand, cfg)
    fv, fa = _generation(stand)
    rv, ra = _generation(val_retain)
    grid = steering_effects.steering_grid(model, lambda ls, lam: rehearsal.with_options(layers=ls, lam=lam),
                                          {"forget": fv, "retain": rv}, layers, lams,
                                          answers={"forget": fa, "retain": ra}, progress=progress)
    window = steering_effects.operating_window(grid)
    try:
        rec = steering_effects.recommend(window)
    except ValueError:
        rec = None
    figures = {"separability": plots.plot_separability(dir_sep), "cosines": plots.plot_cosines(cos),
               "ranks": plots.plot_rank_table(ranks), "spectrum": plots.plot_spectrum(nullspace_rank.spectrum(
                   {l: retain[l] for l in layers[-2:]})),
               "gates": plots.plot_gates(gates[gates.layer == layers[-1]], f"gates at layer {layers[-1]}"),
               "gate_groups": plots.plot_gate_groups(gate_groups),
               "grid": plots.plot_grid(grid)}
    roc = None
    if fit.fitter is not None and fit.fitter.gate_reads is not None:
        kinds = gate_roc.gate_roc(model, fit, bench, cfg, layers)
        roc = kinds.summary
        figures["gate_roc"] = plots.plot_gate_roc(kinds.curves[kinds.curves.layer.isin(layers[-3:])])
    return ProbeReport(dir_sep, fr_sep, cos, ranks, gates, grid, window, rec, fit, stability, gate_groups, figures,
                       roc)
