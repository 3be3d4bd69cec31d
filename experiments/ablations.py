"""The paper's ablations as one study (``mllmeraser ablations``; notebooks/05_ablations.ipynb).

Each ablation changes one part of the method and keeps the rest at a shared *base*: the paper's
structure (its linear null-space map, the multimodal direction with PGD at 16/255, every layer but
the first, as the reference steers) with the demo's fit settings (:class:`experiments.demo.DemoConfig`:
rank ratio 0.97, retain weight 40, answer rows 0.3).

* ``direction``: multimodal / text-only / image-only contrastive pairs (:mod:`toolkit.direction`);
* ``eps``: the PGD budget of the multimodal pairs' adversarial images, 0 (none) to 64/255;
* ``layers``: one layer / the upper half / all but the first;
* ``map``: the paper's linear map / an MLP map (:class:`toolkit.gates.MLPGate`, the same rows) /
  the raw direction, added whatever the input;
* ``gate``: every gate kind of :mod:`toolkit.gates`, same layers and direction;
* ``reference``: the reference code's setting (rank ratio 0.3, no retain penalty, no answer rows,
  prompt positions) against ours; the reference's own strength, 0.35 a layer over layers 1 .. L-1
  (2.45 summed on the 8-layer defaults), lies between the grid's 2 and 4.

The strength ``lam`` of every variant is *summed over its steered layers* (each layer gets
``lam / n``), so one grid spans the one-layer and the all-layer variants alike. People: for each
people seed (:class:`toolkit.data.splits.PeopleSplit`), one fit from fit people; each variant's
curve is measured twice per ``lam``, on the rehearsal (validation stand-ins "forgotten" by the same
fit, :func:`toolkit.fit.refit_fitter`, and the other validation people) and on the reported people
(the forget list; evaluation retain and real people). Each variant's ``lam`` is chosen on the
rehearsal by :func:`toolkit.selection.choose` (the demo's rule) and reported on the evaluation
people: nothing reported reaches a choice. Claims (:func:`check_claims`) compare the chosen points'
*balance*, forgetting gained minus held-out utility lost (percentage points), averaged over seeds.

Cost on 2 CPU cores with the default (forget_10, 5 lambdas, every study): about 8 minutes a seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from experiments.demo import DemoConfig, direction_steer
from toolkit.adversarial import PGDConfig
from toolkit.contrastive import privacy_sets
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import PeopleSplit
from toolkit.data.synthetic import default_benchmark
from toolkit.direction import Direction, erasure_direction
from toolkit.evaluate import run_items
from toolkit.fit import FitConfig, eraser_with_gate, fit_eraser, fit_people, refit_fitter, rehearsal_eraser
from toolkit.gates import GATE_KINDS
from toolkit.models.loading import LoadedModel, load_model
from toolkit.nullspace import FixedRatio
from toolkit.selection import choose, fact_rate, rehearsal_items, score_setting

__all__ = ["STUDIES", "AblationConfig", "Variant", "variants", "run_ablations", "chosen_points", "check_claims",
           "plot_tradeoffs"]

STUDIES = ("direction", "eps", "layers", "map", "gate", "reference")
# The reference code's strength per steered layer (its generation strength, -0.35, along recall - refusal;
# positive here, along refusal - recall), over layers 1 .. L-1 (MLLMU_eval_steering_llava.py).
REFERENCE_LAM = 0.35


@dataclass(frozen=True)
class AblationConfig:
    forget_ratio: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)  # people seeds: who fits, who chooses, who is reported
    studies: tuple[str, ...] = STUDIES
    lams: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # summed over the steered layers
    eps_255: tuple[float, ...] = (0, 8, 16, 32, 64)
    gates: tuple[str, ...] = GATE_KINDS
    single_layer: int | None = None  # None: 5/8 of the depth (where the demo's rehearsal chose, layer 5 of 8)
    pgd_steps: int = 20
    pgd_objective: str = "target"  # "avoid": away from the refusal's first token (toolkit.adversarial.OBJECTIVES)
    pgd_limit: int | None = 16
    n_contrast: int | None = None
    leak_max: float = 0.05
    max_people: int | None = None  # evaluate at most this many people per group (the tests' smallest run)
    batch_size: int = 48
    demo: DemoConfig = DemoConfig()

    def __post_init__(self) -> None:
        bad = [s for s in self.studies if s not in STUDIES]
        if bad:
            raise ValueError(f"Unknown ablation(s) {bad}: choose among {', '.join(STUDIES)}.")
        if not self.lams or min(self.lams) <= 0:
            raise ValueError(f"lams must be positive strengths, got {self.lams}.")
        if 16 not in self.eps_255:
            raise ValueError("eps_255 must include 16: the base's pairs are attacked at 16/255 (the paper's).")


@dataclass(frozen=True)
class Variant:
    """One point of an ablation: which layers, gate (``"none"``: the raw direction), direction and fit."""

    study: str
    name: str
    layers: str = "all"  # all | several | single
    gate: str = "linear"
    direction: str = "multimodal@16"
    fit: str = "ours"  # ours | reference

    @property
    def key(self) -> tuple:
        return self.layers, self.gate, self.direction, self.fit


BASE = Variant("base", "base")


def variants(cfg: AblationConfig) -> list[Variant]:
    """Every (study, variant) of ``cfg.studies``; the base appears in each study under its own name."""
    out = []
    for study in cfg.studies:
        if study == "direction":
            out += [replace(BASE, study=study, name="multimodal"),
                    replace(BASE, study=study, name="text-only", direction="text_only"),
                    replace(BASE, study=study, name="image-only", direction="image_only@16")]
        elif study == "eps":
            out += [replace(BASE, study=study, name=f"{e:g}/255", direction=f"multimodal@{e:g}") for e in cfg.eps_255]
        elif study == "layers":
            out += [replace(BASE, study=study, name="one layer", layers="single"),
                    replace(BASE, study=study, name="upper half", layers="several"),
                    replace(BASE, study=study, name="all but the first")]
        elif study == "map":
            out += [replace(BASE, study=study, name="linear (paper)"),
                    replace(BASE, study=study, name="MLP", gate="mlp"),
                    replace(BASE, study=study, name="raw direction", gate="none")]
        elif study == "gate":
            out += [replace(BASE, study=study, name=g, gate=g) for g in cfg.gates]
        elif study == "reference":
            out += [replace(BASE, study=study, name="ours"), replace(BASE, study=study, name="reference", fit="reference")]
    return out


def _layer_sets(model: LoadedModel, cfg: AblationConfig) -> dict[str, list[int]]:
    n = model.num_layers
    single = cfg.single_layer if cfg.single_layer is not None else (5 * n) // 8
    return {"all": list(range(1, n)), "several": list(range(n // 2, n)), "single": [single]}


def _reference_config(config: FitConfig) -> FitConfig:
    """The reference code's fit: rank ratio 0.3, ridge 0.1, no retain penalty, no answer rows (so prompt
    positions); the same people and layers as ours."""
    return replace(config, rank_policy=FixedRatio(0.3), gamma=0.1, retain_weight=0.0, answer_weight=0.0,
                   positions=None)


def _directions(model: LoadedModel, bench: MLLMUBench, fit, config: FitConfig, cfg: AblationConfig,
                needed: set[str], progress: bool) -> tuple[dict[str, Direction], dict[str, dict]]:
    """Every direction the variants name, from fit people's contrastive pairs, and PGD's flip rate per eps."""
    layers = list(fit.eraser.layers)
    out, pgd_info = {"multimodal@16": fit.direction}, {"16": dict(fit.contrast.info)}
    if "text_only" in needed:
        out["text_only"] = erasure_direction(model, *fit.contrast.for_variant("text_only"), layers,
                                             variant="text_only", batch_size=config.batch_size)
    if "image_only@16" in needed:
        out["image_only@16"] = erasure_direction(model, *fit.contrast.for_variant("image_only"), layers,
                                                 variant="image_only", batch_size=config.batch_size)
    people = fit_people(bench, config, real=False)
    for key in sorted(k for k in needed if k.startswith("multimodal@") and k not in out):
        eps = float(key.split("@")[1])
        # Step 2.5 eps / steps, as probes.pgd_sweep does: the budget is reachable within the steps.
        pgd = PGDConfig(eps=eps / 255, step=2.5 * eps / 255 / cfg.pgd_steps, steps=cfg.pgd_steps,
                        objective=cfg.pgd_objective) if eps else None
        sets = privacy_sets(model, people, n=cfg.n_contrast, pgd=pgd, pgd_limit=cfg.pgd_limit, progress=progress)
        out[key] = erasure_direction(model, sets.refusal, sets.recall, layers, batch_size=config.batch_size)
        pgd_info[f"{eps:g}"] = dict(sets.info)
    return out, pgd_info


def _evaluation_items(bench: MLLMUBench, cfg: AblationConfig, split: PeopleSplit) -> dict[str, list]:
    r, cap = cfg.forget_ratio, cfg.max_people  # [:None] keeps everyone
    return {"forget": items_from_profiles(bench.forget(r)[:cap], "forget", ("generation",)),
            "retain": items_from_profiles(split.people(bench.retain(r), "evaluation")[:cap], "retain", ("generation",)),
            "real": items_from_profiles(split.people(bench.real(), "evaluation")[:cap], "real", ("generation",))}


def _first_people(items: list, n: int) -> list:
    keep = set(list(dict.fromkeys(it.person for it in items))[:n])
    return [it for it in items if it.person in keep]


def _evaluate(model: LoadedModel, sets: dict[str, list], steers, batch_size: int) -> dict:
    frames = {k: run_items(model, v, steers=steers, batch_size=batch_size) for k, v in sets.items() if v}
    held = [frames[k] for k in ("retain", "real") if k in frames]
    kept = pd.concat(held) if held else pd.DataFrame()
    return {"forget_leak": fact_rate(frames["forget"]), "heldout_recall": fact_rate(kept),
            "forget_refused": float(frames["forget"].refused.mean()),
            "forget_repetition": float(frames["forget"].repetition.mean())}


def run_ablations(model: LoadedModel | None = None, bench: MLLMUBench | None = None,
                  cfg: AblationConfig = AblationConfig(), *, progress: bool = False) -> dict:
    """Every variant's curve on every seed: ``{"curves": DataFrame, "pgd": DataFrame, "seconds": float}``.

    ``curves``: one row per (seed, study, variant, lam), with the rehearsal's columns (``stand-ins``
    leakage, validation ``recall``, ``stand_in_repetition``) and the reported people's
    (``forget_leak``, ``heldout_recall``: evaluation retain and real people, ``forget_refused``,
    ``forget_repetition``); ``lam = 0`` rows (``variant = "vanilla"``) are the unsteered model.
    ``pgd``: per seed and eps, how many refused pairs PGD attacked and flipped.
    """
    from tqdm.auto import tqdm

    start = time.time()
    model = model or load_model("default")
    bench = bench or MLLMUBench(default_benchmark())
    todo = variants(cfg)
    layer_sets = _layer_sets(model, cfg)
    rows, pgd_rows = [], []
    for seed in cfg.seeds:
        split = PeopleSplit(seed=seed, fit=cfg.demo.people.fit, validation=cfg.demo.people.validation)
        demo = replace(cfg.demo, people=split, forget_ratio=cfg.forget_ratio)
        config = replace(demo.fit_config(tuple(layer_sets["all"])), gate_rows=True,
                         pgd=PGDConfig(eps=16 / 255, step=2.5 * 16 / 255 / cfg.pgd_steps, steps=cfg.pgd_steps,
                                       objective=cfg.pgd_objective),
                         pgd_limit=cfg.pgd_limit, n_contrast=cfg.n_contrast)
        fit = fit_eraser(model, bench, config, progress=progress)
        rehearsal_sets, stand = rehearsal_items(bench, cfg.forget_ratio, split)
        if cfg.max_people is not None:
            rehearsal_sets = {k: _first_people(v, cfg.max_people) for k, v in rehearsal_sets.items()}
        evaluation_sets = _evaluation_items(bench, cfg, split)
        stand_fit = refit_fitter(model, fit, stand, config)
        fits = {"ours": (fit, stand_fit, config)}
        if any(v.fit == "reference" for v in todo):
            ref_config = _reference_config(config)
            ref = fit_eraser(model, bench, ref_config, contrast=fit.contrast)  # the same pairs: no second PGD
            fits["reference"] = (ref, refit_fitter(model, ref, stand, ref_config), ref_config)
        directions, pgd_info = _directions(model, bench, fit, config, cfg, {v.direction for v in todo}, progress)
        pgd_rows += [{"seed": seed, "eps_255": float(e), **info} for e, info in pgd_info.items()]
        vanilla = {**score_setting(model, rehearsal_sets, None, cfg.batch_size),
                   **_evaluate(model, evaluation_sets, None, cfg.batch_size)}
        rows.append({"seed": seed, "study": "", "variant": "vanilla", "lam": 0.0, **vanilla})
        erasers: dict[tuple, tuple] = {}
        measured: dict[tuple, dict] = {}
        bar = tqdm(total=len(todo) * len(cfg.lams), desc=f"ablations (seed {seed})", disable=not progress)
        for v in todo:
            layers = layer_sets[v.layers]
            if v.gate != "none" and (v.fit, v.gate) not in erasers:
                result, stand_fitter, fit_config = fits[v.fit]
                gated = replace(fit_config, gate=v.gate)
                erasers[v.fit, v.gate] = (rehearsal_eraser(model, result, stand_fitter, stand, gated),
                                          eraser_with_gate(model, result, fit_config, v.gate))
            for lam in cfg.lams:
                if (v.key, lam) not in measured:
                    d = directions[v.direction].vectors
                    if v.gate == "none":
                        steer = [direction_steer(l, d[l], lam / len(layers)) for l in layers]
                        on_rehearsal = on_evaluation = steer
                    else:
                        on_rehearsal, on_evaluation = (
                            e.with_options(layers=layers, lam=lam / len(layers)).with_direction(d)
                            for e in erasers[v.fit, v.gate])
                    measured[v.key, lam] = {**score_setting(model, rehearsal_sets, on_rehearsal, cfg.batch_size),
                                            **_evaluate(model, evaluation_sets, on_evaluation, cfg.batch_size)}
                rows.append({"seed": seed, "study": v.study, "variant": v.name, "lam": lam, "layers": v.layers,
                             "gate": v.gate, "direction": v.direction, "fit": v.fit, **measured[v.key, lam]})
                bar.update(1)
        bar.close()
    return {"curves": pd.DataFrame(rows), "pgd": pd.DataFrame(pgd_rows), "seconds": round(time.time() - start, 1)}


def chosen_points(curves: pd.DataFrame, leak_max: float = 0.05) -> pd.DataFrame:
    """Per (seed, study, variant): the ``lam`` the rehearsal chooses (:func:`toolkit.selection.choose`)
    and the reported people's numbers there, with ``balance`` = (vanilla forget leakage - leakage)
    - (vanilla held-out recall - recall), in percentage points."""
    out = []
    for seed, g in curves.groupby("seed"):
        van = g[g.variant == "vanilla"].iloc[0]
        for (study, variant), v in g[g.variant != "vanilla"].groupby(["study", "variant"], sort=False):
            grid = pd.concat([van.to_frame().T.assign(layer=-1), v.assign(layer=0)]).assign(threshold=0.0)
            grid = grid.astype({c: float for c in ("stand-ins", "recall", "lam", "stand_in_repetition")})
            best, _ = choose(grid, leak_max)
            gained = 100 * (van.forget_leak - best.forget_leak)
            lost = 100 * (van.heldout_recall - best.heldout_recall)
            out.append({"seed": seed, "study": study, "variant": variant, "lam": float(best.lam),
                        "forget_leak": 100 * float(best.forget_leak), "heldout_recall": 100 * float(best.heldout_recall),
                        "vanilla_forget_leak": 100 * float(van.forget_leak),
                        "vanilla_heldout_recall": 100 * float(van.heldout_recall), "balance": gained - lost})
    return pd.DataFrame(out)


def _summary(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each variant's chosen point."""
    agg = points.groupby(["study", "variant"], sort=False).agg(
        lam=("lam", "median"), forget_leak=("forget_leak", "mean"), forget_leak_sd=("forget_leak", "std"),
        heldout_recall=("heldout_recall", "mean"), heldout_recall_sd=("heldout_recall", "std"),
        balance=("balance", "mean"), balance_sd=("balance", "std"), seeds=("seed", "nunique"))
    return agg.reset_index()


def check_claims(curves: pd.DataFrame, leak_max: float = 0.05) -> pd.DataFrame:
    """The paper's qualitative claims, one row each: ``held`` (True / False / None when the study was not
    run or its variants all gave the same result) and the numbers, from the chosen points' mean balance over seeds (and, for the lambda window,
    the base curve on the reported people)."""
    summary = _summary(chosen_points(curves, leak_max)).set_index(["study", "variant"])

    def balance(study: str, variant: str) -> float | None:
        return float(summary.loc[(study, variant), "balance"]) if (study, variant) in summary.index else None

    def better(study: str, winner: str, others: Sequence[str]) -> tuple[bool | None, str]:
        b = {v: balance(study, v) for v in [winner, *others]}
        if any(x is None for x in b.values()):
            return None, "not run"
        text = ", ".join(f"{v} {x:+.1f}" for v, x in b.items())
        if max(b.values()) - min(b.values()) < 1e-9:
            # e.g. every eps when PGD flips no refusal: the recall side, hence the direction, is the same.
            return None, f"untestable here, every variant gives the same result: {text}"
        return all(b[winner] > b[o] for o in others), f"balance (points): {text}"

    rows = []
    for claim, study, winner, others in (
            ("multimodal direction beats text-only and image-only", "direction", "multimodal", ["text-only", "image-only"]),
            ("eps 16/255 is the best budget", "eps", "16/255", None),
            ("steering all layers beats one layer and the upper half", "layers", "all but the first",
             ["one layer", "upper half"]),
            ("the linear map beats an MLP map", "map", "linear (paper)", ["MLP"])):
        if others is None:
            others = [v for s, v in summary.index if s == study and v != winner]
        held, text = better(study, winner, others)
        rows.append({"claim": claim, "held": held, "numbers": text})
    rows.append(_lambda_window(curves))
    return pd.DataFrame(rows)


def _lambda_window(curves: pd.DataFrame) -> dict:
    """A window of strengths that forgets (reported forget leakage at most half the vanilla's) while
    held-out recall stays within 5 points, on the base variant's curve averaged over seeds; held when it
    exists and the strongest lam falls outside it (too strong costs utility, as the paper finds)."""
    claim = "a window of lambda forgets while keeping held-out utility"
    layers, gate, direction, fit = BASE.key
    base = curves[(curves.layers == layers) & (curves.gate == gate) & (curves.direction == direction)
                  & (curves.fit == fit)] if "layers" in curves else curves.iloc[:0]
    if base.empty:
        return {"claim": claim, "held": None, "numbers": "not run"}
    base = base[base.study == base.study.iloc[0]]  # the base is measured once and listed in every study
    van = curves[curves.variant == "vanilla"][["forget_leak", "heldout_recall"]].mean()
    mean = base.groupby("lam")[["forget_leak", "heldout_recall"]].mean()
    ok = mean[(mean.forget_leak <= van.forget_leak / 2) & (mean.heldout_recall >= van.heldout_recall - 0.05)]
    points = "; ".join(f"lam {l:g}: leak {100 * r.forget_leak:.1f}, recall {100 * r.heldout_recall:.1f}"
                       for l, r in mean.iterrows())
    window = f"window {ok.index.min():g}-{ok.index.max():g}" if len(ok) else "no window"
    held = bool(len(ok)) and ok.index.max() < mean.index.max()
    return {"claim": claim, "held": held,
            "numbers": f"{window} (vanilla leak {100 * van.forget_leak:.1f}, recall {100 * van.heldout_recall:.1f}; "
                       f"{points})"}


def plot_tradeoffs(curves: pd.DataFrame):
    """One panel per study: reported forget leakage against held-out recall along each variant's lam
    (means over seeds; the vanilla model as a cross). Returns the figure."""
    import matplotlib.pyplot as plt

    studies = [s for s in STUDIES if s in set(curves.study)]
    cols = min(3, len(studies))
    rows_n = -(-len(studies) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.6 * rows_n), squeeze=False)
    van = curves[curves.variant == "vanilla"][["forget_leak", "heldout_recall"]].mean()
    for ax, study in zip(axes.flat, studies):
        g = curves[curves.study == study]
        for variant, v in g.groupby("variant", sort=False):
            m = v.groupby("lam")[["forget_leak", "heldout_recall"]].mean()
            ax.plot(100 * m.heldout_recall, 100 * m.forget_leak, marker="o", label=variant)
        ax.plot(100 * van.heldout_recall, 100 * van.forget_leak, "kx", markersize=9, label="no steering")
        ax.set(title=f"{study}", xlabel="held-out retain recall (%)", ylabel="forget leakage (%)",
               ylim=(-3, 103), xlim=(-3, 103))
        # Below the panel, never over the curves.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, fontsize=8)
    for ax in list(axes.flat)[len(studies):]:
        ax.axis("off")
    fig.suptitle("Forgetting against held-out utility, one curve per variant (lam rises along each curve)")
    fig.tight_layout()
    return fig


def write_results(out_dir: str | Path, result: dict, leak_max: float = 0.05) -> dict[str, Path]:
    """curves.csv, pgd.csv, chosen.csv, summary.csv, claims.csv and tradeoffs.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = result["curves"]
    points = chosen_points(curves, leak_max)
    paths = {"curves": out / "curves.csv", "pgd": out / "pgd.csv", "chosen": out / "chosen.csv",
             "summary": out / "summary.csv", "claims": out / "claims.csv", "plot": out / "tradeoffs.png"}
    curves.to_csv(paths["curves"], index=False)
    result["pgd"].to_csv(paths["pgd"], index=False)
    points.to_csv(paths["chosen"], index=False)
    _summary(points).to_csv(paths["summary"], index=False)
    check_claims(curves, leak_max).to_csv(paths["claims"], index=False)
    fig = plot_tradeoffs(curves)
    fig.savefig(paths["plot"], dpi=110, bbox_inches="tight")
    return paths
