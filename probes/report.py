"""All probes on one model and benchmark, before erasure: what `mllmeraser probe` and the probe notebook run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import validation_samples
from toolkit.fit import FitConfig, FitResult, fit_eraser, question_samples
from toolkit.models.loading import LoadedModel
from toolkit.tracing import capture

from . import nullspace_rank, plots, separability, steering_effects

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
    figures: dict = field(default_factory=dict)

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("direction_separability", "forget_retain_separability", "ranks", "gates", "grid", "window"):
            getattr(self, name).to_csv(out / f"{name}.csv", index=False)
        self.cosines.to_csv(out / "cosines.csv")
        for name, fig in self.figures.items():
            fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        summary = {"recommended_layer_lambda": self.recommended, "fit_report": self.fit.report}
        (out / "probe_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return out


def probe_report(model: LoadedModel, bench: MLLMUBench, *, forget_ratio: int = 10, layers=None,
                 lams=(0.5, 1.0, 1.5, 2.0, 3.0), fit_config: FitConfig | None = None, progress: bool = False,
                 retain_validation_people: int = 30) -> ProbeReport:
    if layers is None:  # the fit's layers when a fit config is given (probing others would need their maps)
        layers = list(fit_config.layers) if fit_config is not None else list(range(model.num_layers))
    layers = model.check_layers(layers)
    cfg = fit_config or FitConfig(layers=tuple(layers), forget_ratio=forget_ratio, n_contrast=24)
    missing = sorted(set(layers) - set(model.check_layers(list(cfg.layers))))
    if missing:
        raise ValueError(f"Layers {missing} are probed but not fitted (fit_config.layers = {list(cfg.layers)}); "
                         "fit every probed layer.")
    fit = fit_eraser(model, bench, cfg, progress=progress)
    plus, minus = fit.contrast.for_variant(cfg.variant)
    cap_plus, cap_minus = capture(model, plus, layers), capture(model, minus, layers)
    dir_sep = separability.layer_separability(cap_plus.activations, cap_minus.activations,
                                              {l: fit.direction.vectors[l].float() for l in layers})
    forget = capture(model, question_samples(bench.forget(forget_ratio), "forget"), layers, batch_size=48)
    retain = capture(model, question_samples(bench.retain(forget_ratio), "retain")
                     + question_samples(bench.real(), "real"), layers, batch_size=48)
    fr_sep = separability.layer_separability(forget.activations, retain.activations)
    cos = separability.direction_cosines({l: fit.direction.vectors[l] for l in layers})
    ranks = nullspace_rank.rank_table(retain.activations, forget.activations)
    # The fitted eraser's own gates (its retain penalty and answer rows included), not a refit.
    gates = pd.concat([nullspace_rank.eraser_gate_values(fit.eraser.layer_map(l), retain[l], forget[l]).assign(layer=l)
                       for l in layers], ignore_index=True)
    fv, fa = validation_samples(bench.forget(forget_ratio))
    rv, ra = validation_samples(bench.retain(forget_ratio)[:retain_validation_people])
    grid = steering_effects.steering_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
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
               "grid": plots.plot_grid(grid)}
    return ProbeReport(dir_sep, fr_sep, cos, ranks, gates, grid, window, rec, fit, figures)
