"""The paper's ablations at matched forgetting (``mllmeraser ablations``; notebooks/05_ablations.ipynb).

A study, not part of the installed library (``mllmeraser ablations --out results/ablations_default`` from a clone).
Produces: docs/results.md, "The paper's ablations at matched forgetting".

Each ablation changes one part of the method and keeps the rest at a shared *base*: the paper's
structure (its linear null-space map, the multimodal direction with PGD at 16/255 toward the true
answer, every layer but the first, as the reference steers) with the shipped fit settings
(:data:`toolkit.config.SHIPPED`: rank ratio 0.97, retain weight 40, answer rows 0.3, a retain
budget of 800 questions, 64 privacy questions; PGD here attacks 16 refusals for 20 steps, as the
paper's ablation does).

* ``direction``: multimodal / text-only / image-only contrastive pairs (:mod:`toolkit.direction`), and
  the multimodal pairs with PGD's ``avoid`` objective (away from the refusal) beside the paper's;
* ``eps``: the PGD budget of the multimodal pairs' adversarial images, 0 (none) to 64/255;
* ``layers``: one layer / the upper half / all but the first;
* ``map``: the paper's linear map / an MLP map (:class:`toolkit.gates.MLPGate`, the same rows) /
  the raw direction, added whatever the input;
* ``gate``: every gate kind of :mod:`toolkit.gates`, same layers and direction;
* ``reference``: the reference code's setting (rank ratio 0.3, no retain penalty, no answer rows,
  prompt positions) against ours.

**Matched forgetting.** Variants are compared where they forget equally, as unlearning methods are
(and as ``make compare`` compares the baselines): for each leakage *target* (5 % and a looser 20 %
by default) each variant's strength ``lam`` is searched on the rehearsal only, the validation
stand-ins "forgotten" by the same fit (:func:`toolkit.benchmark_fit.refit_fitter`), by :func:`match_strength`:
a doubling grid (0.5 to 64, summed over the steered layers: each layer gets ``lam / n``) until the
stand-ins' leakage reaches the target or their answers stop being fluent (repetition above 25 %),
then geometric bisection toward the target's band ``[target - tolerance, target]``. The weakest
fluent strength at or below the target is the variant's matched point; a variant that never gets
there is reported *unable*, with the strongest strength tried, its leakage and where fluency broke.
At the matched point only, the variant is measured on the validation people's recall (rehearsal)
and on the reported people: the forget list and the **evaluation** retain and real people, whom no
fit or search saw. Claims (:func:`check_claims`) compare held-out recall at matched forgetting,
mean and spread over people seeds.

Cost on 2 CPU cores with the default (forget_10, every study): about 8 minutes a seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from experiments.demo import direction_steer
from toolkit.config import SHIPPED, EraseConfig
from toolkit.adversarial import OBJECTIVES, PGDConfig
from toolkit.contrastive import privacy_sets
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import PeopleSplit
from toolkit.data.synthetic import default_benchmark
from toolkit.direction import Direction
from toolkit.pipeline import erasure_direction
from toolkit.evaluate import run_items
from toolkit.config import FitConfig
from toolkit.benchmark_fit import eraser_with_gate, fit_eraser, refit_fitter, rehearsal_eraser
from toolkit.data.samples import fit_people
from toolkit.gates import GATE_KINDS
from toolkit.models.loading import LoadedModel, load_model
from toolkit.nullspace import FixedRatio
from toolkit.selection import fact_rate, rehearsal_items, score_setting

__all__ = ["STUDIES", "AblationConfig", "Variant", "Match", "variants", "match_strength", "run_ablations",
           "summarise", "check_claims", "lambda_window", "claims_table", "plot_strength_curves", "plot_matched", "write_results"]

STUDIES = ("direction", "eps", "layers", "map", "gate", "reference")
STATUSES = ("matched", "overshoots", "unable")


@dataclass(frozen=True)
class AblationConfig:
    """The ablations' own settings; what the fit and the rehearsal read is ``job`` (the shipped preset with the
    paper's PGD, 16 images x 20 steps toward the true answer, for the base)."""

    seeds: tuple[int, ...] = (0, 1, 2)  # people seeds: who fits, who is searched on, who is reported
    studies: tuple[str, ...] = STUDIES
    # The search grid, weakest first, summed over the steered layers. Doubling to 64: at 8, the top of the
    # grid of the first reading, the base still leaked 35 %.
    lams: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    targets: tuple[float, ...] = (0.05, 0.20)  # rehearsal stand-in leakage each variant is matched to
    tolerance: float = 0.05  # a matched point leaks within [target - tolerance, target] on the rehearsal
    refine: int = 2  # geometric bisections toward a target's band
    eps_255: tuple[float, ...] = (0, 8, 16, 32, 64)
    gates: tuple[str, ...] = GATE_KINDS
    single_layer: int | None = None  # None: 5/8 of the depth (where the demo's rehearsal chose, layer 5 of 8)
    max_people: int | None = None  # search and evaluate at most this many people per group (the tests' run)
    # The base's fit and people (forget split, people split, contrast, PGD with its objective: "avoid" is a
    # direction variant) and the evaluation batch.
    job: EraseConfig = SHIPPED.with_fit(pgd=PGDConfig(steps=20), pgd_limit=16)

    @property
    def forget_ratio(self) -> int:
        return self.job.forget_ratio

    @property
    def batch_size(self) -> int:
        return self.job.batch_size

    def __post_init__(self) -> None:
        bad = [s for s in self.studies if s not in STUDIES]
        if bad:
            raise ValueError(f"Unknown ablation(s) {bad}: choose among {', '.join(STUDIES)}.")
        if not self.lams or min(self.lams) <= 0 or list(self.lams) != sorted(self.lams):
            raise ValueError(f"lams must be positive strengths, weakest first; got {self.lams}.")
        if not self.targets or not all(0 <= t < 1 for t in self.targets):
            raise ValueError(f"targets must be leakage rates in [0, 1), e.g. (0.05, 0.2); got {self.targets}.")
        if not 0 <= self.tolerance <= 1:
            raise ValueError(f"tolerance must be a rate in [0, 1], got {self.tolerance}.")
        if 16 not in self.eps_255:
            raise ValueError("eps_255 must include 16: the base's pairs are attacked at 16/255 (the paper's).")
        if self.job.fit.pgd is None:
            raise ValueError("The ablations attack the base's images (eps study): give job.fit.pgd a PGDConfig.")
        if self.job.fit.pgd.objective not in OBJECTIVES:
            raise ValueError(f"PGD's objective must be one of {OBJECTIVES}, got {self.job.fit.pgd.objective!r}.")


@dataclass(frozen=True)
class Variant:
    """One point of an ablation: which layers, gate (``"none"``: the raw direction), direction and fit."""

    study: str
    name: str
    layers: str = "all"  # all | several | single
    gate: str = "linear"
    direction: str = "multimodal@16"  # multimodal@EPS[:objective] | text_only | image_only@16
    fit: str = "ours"  # ours | reference

    @property
    def key(self) -> tuple:
        return self.layers, self.gate, self.direction, self.fit


BASE = Variant("base", "base")


def variants(cfg: AblationConfig) -> list[Variant]:
    """Every (study, variant) of ``cfg.studies``; the base appears in each study under its own name."""
    other = "avoid" if cfg.job.fit.pgd.objective == "target" else "target"
    out = []
    for study in cfg.studies:
        if study == "direction":
            out += [replace(BASE, study=study, name="multimodal"),
                    replace(BASE, study=study, name="text-only", direction="text_only"),
                    replace(BASE, study=study, name="image-only", direction="image_only@16"),
                    replace(BASE, study=study, name=f"multimodal, PGD {other}", direction=f"multimodal@16:{other}")]
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


@dataclass
class Match:
    """A variant's matched point for one target: ``status`` is ``"matched"`` (rehearsal leakage within
    ``[target - tolerance, target]``), ``"overshoots"`` (at or below ``target - tolerance``: the curve
    jumps over the band even after bisection, so the variant is compared while forgetting *more*) or
    ``"unable"`` (no fluent strength tried reaches the target; ``lam`` is None)."""

    target: float
    status: str
    lam: float | None
    leak: float | None  # the stand-ins' leakage at lam
    strongest: float  # the strongest lam tried, and its leakage
    strongest_leak: float
    breaks_at: float | None  # the weakest lam whose stand-in repetition exceeded the limit, None: never


def match_strength(score: Callable[[float], dict], lams: Sequence[float], targets: Sequence[float], *,
                   tolerance: float = 0.05, refine: int = 2, repetition_max: float = 0.25,
                   full: bool = False, leak_key: str = "stand-ins") -> tuple[dict[float, Match], dict[float, dict]]:
    """Search the weakest strength whose leakage reaches each target, measuring as little as it can.

    ``score(lam)`` returns a row with ``leak_key`` (leakage, a rate) and ``stand_in_repetition``; each
    ``lam`` is scored at most once. The grid ``lams`` (weakest first) is walked until every target is
    reached by a fluent point or fluency breaks (repetition above ``repetition_max``), or to its end
    when ``full``. For each target, up to ``refine`` geometric bisections between the weakest fluent
    point at or below it and the strongest weaker point move the match into the band
    ``[target - tolerance, target]``. A strength at or past the weakest one whose answers repeat never
    matches. Returns ``({target: Match}, {lam: row})`` for what was scored.
    """
    tried: dict[float, dict] = {}

    def at(lam: float) -> dict:
        if lam not in tried:
            tried[lam] = score(lam)
        return tried[lam]

    def leak(lam: float) -> float:
        return float(tried[lam][leak_key])

    def fluent(lam: float) -> bool:
        return float(tried[lam].get("stand_in_repetition", 0.0)) <= repetition_max + 1e-12

    def first_break() -> float | None:
        broke = [l for l in tried if not fluent(l)]
        return min(broke) if broke else None

    def reached(target: float) -> list[float]:
        # Past the weakest strength whose answers repeat, a low leakage is not forgetting (the base, scored on
        # the whole grid, can leak 0% again at 64 with short, fluent non-answers after looping at 8).
        limit = first_break() or math.inf
        return sorted(l for l in tried if fluent(l) and l < limit and leak(l) <= target + 1e-12)

    for lam in lams:
        at(lam)
        if not full and (first_break() is not None or all(reached(t) for t in targets)):
            break
    for target in targets:
        for _ in range(refine):
            ok = reached(target)
            if not ok or leak(ok[0]) >= target - tolerance - 1e-12:
                break
            weaker = [l for l in tried if l < ok[0]]
            if not weaker:
                break
            at(math.sqrt(max(weaker) * ok[0]))
    strongest, breaks_at = max(tried), first_break()
    matches = {}
    for target in targets:
        ok = reached(target)
        if ok:
            status = "matched" if leak(ok[0]) >= target - tolerance - 1e-12 else "overshoots"
            matches[target] = Match(target, status, ok[0], leak(ok[0]), strongest, leak(strongest), breaks_at)
        else:
            matches[target] = Match(target, "unable", None, None, strongest, leak(strongest), breaks_at)
    return matches, tried


def _layer_sets(model: LoadedModel, cfg: AblationConfig) -> dict[str, list[int]]:
    n = model.num_layers
    single = cfg.single_layer if cfg.single_layer is not None else (5 * n) // 8
    return {"all": list(range(1, n)), "several": list(range(n // 2, n)), "single": [single]}


def _reference_config(config: FitConfig) -> FitConfig:
    """The reference code's fit: rank ratio 0.3, ridge 0.1, no retain penalty, no answer rows (so prompt
    positions); the same people and layers as ours."""
    return replace(config, rank_policy=FixedRatio(0.3), gamma=0.1, retain_weight=0.0, answer_weight=0.0,
                   positions=None)


def _pgd(cfg: AblationConfig, eps_255: float, objective: str) -> PGDConfig | None:
    # Step 2.5 eps / steps, as probes.pgd_sweep does: the budget is reachable within the steps.
    steps = cfg.job.fit.pgd.steps
    return PGDConfig(eps=eps_255 / 255, step=2.5 * eps_255 / 255 / steps, steps=steps,
                     objective=objective) if eps_255 else None


def _directions(model: LoadedModel, bench: MLLMUBench, fit, config: FitConfig, cfg: AblationConfig,
                needed: set[str], progress: bool) -> tuple[dict[str, Direction], dict[str, dict]]:
    """Every direction the variants name, from fit people's contrastive pairs, and PGD's flip rate for each."""
    layers = list(fit.eraser.layers)
    base = f"multimodal@16:{cfg.job.fit.pgd.objective}"
    out, pgd_info = {"multimodal@16": fit.direction, base: fit.direction}, {base: dict(fit.contrast.info)}
    if "text_only" in needed:
        out["text_only"] = erasure_direction(model, *fit.contrast.for_variant("text_only"), layers,
                                             variant="text_only", batch_size=config.batch_size)
    if "image_only@16" in needed:
        out["image_only@16"] = erasure_direction(model, *fit.contrast.for_variant("image_only"), layers,
                                                 variant="image_only", batch_size=config.batch_size)
    people = fit_people(bench, config, real=False)
    for key in sorted(k for k in needed if k.startswith("multimodal@") and k not in out):
        eps, _, objective = key.split("@")[1].partition(":")
        objective = objective or cfg.job.fit.pgd.objective
        full = f"multimodal@{float(eps):g}:{objective}"
        if full not in out:
            sets = privacy_sets(model, people, n=cfg.job.fit.n_contrast, pgd=_pgd(cfg, float(eps), objective),
                                pgd_limit=cfg.job.fit.pgd_limit, progress=progress)
            out[full] = erasure_direction(model, sets.refusal, sets.recall, layers, batch_size=config.batch_size)
            pgd_info[full] = dict(sets.info)
        out[key] = out[full]
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
    """The reported people: forget leakage, refusals and repetition; evaluation retain and real recall,
    apart and pooled (``heldout_recall``)."""
    frames = {k: run_items(model, v, steers=steers, batch_size=batch_size) for k, v in sets.items() if v}
    held = [frames[k] for k in ("retain", "real") if k in frames]
    kept = pd.concat(held) if held else pd.DataFrame()
    return {"forget_leak": fact_rate(frames["forget"]), "heldout_recall": fact_rate(kept),
            "retain_recall": fact_rate(frames["retain"]) if "retain" in frames else float("nan"),
            "real_recall": fact_rate(frames["real"]) if "real" in frames else float("nan"),
            "forget_refused": float(frames["forget"].refused.mean()),
            "forget_repetition": float(frames["forget"].repetition.mean())}


def run_ablations(model: LoadedModel | None = None, bench: MLLMUBench | None = None,
                  cfg: AblationConfig = AblationConfig(), *, progress: bool = False) -> dict:
    """Every variant matched to every target on every seed.

    Returns ``{"curves", "matched", "pgd": DataFrame, "seconds": float}``:

    * ``curves``: one row per (seed, study, variant, lam) the search scored on the rehearsal: the
      stand-ins' leakage (``stand-ins``), refusals and repetition; for the base, which is scored along the
      whole grid, also the validation people's ``recall``. ``lam = 0`` rows (``variant = "vanilla"``) are
      the unsteered model, scored on every set.
    * ``matched``: one row per (seed, study, variant, target): the :class:`Match` (``status``, ``lam``,
      ``stand-ins``, ``strongest``, ``strongest_leak``, ``breaks_at``) and, at a reached target, the
      rehearsal's validation ``recall`` and the reported people's ``forget_leak``, ``retain_recall``,
      ``real_recall``, ``heldout_recall`` (the two pooled), ``forget_refused``, ``forget_repetition``.
    * ``pgd``: per seed and direction, how many refused pairs PGD attacked and flipped.
    """
    from tqdm.auto import tqdm

    start = time.time()
    model = model or load_model("default")
    bench = bench or MLLMUBench(default_benchmark())
    todo = variants(cfg)
    layer_sets = _layer_sets(model, cfg)
    rows, matched_rows, pgd_rows = [], [], []
    for seed in cfg.seeds:
        split = replace(cfg.job.people, seed=seed)
        job = cfg.job.with_fit(people=split)
        config = replace(job.fit_config(tuple(layer_sets["all"])), gate_rows=True,
                         pgd=_pgd(cfg, 16, cfg.job.fit.pgd.objective))
        fit = fit_eraser(model, bench, config, progress=progress)
        rehearsal_sets, stand = rehearsal_items(bench, cfg.forget_ratio, split)
        if cfg.max_people is not None:
            rehearsal_sets = {k: _first_people(v, cfg.max_people) for k, v in rehearsal_sets.items()}
            stand = stand[:cfg.max_people]
        stand_in_sets = {"stand-ins": rehearsal_sets["stand-ins"]}
        evaluation_sets = _evaluation_items(bench, cfg, split)
        stand_fit = refit_fitter(model, fit, stand, config)
        fits = {"ours": (fit, stand_fit, config)}
        if any(v.fit == "reference" for v in todo):
            ref_config = _reference_config(config)
            ref = fit_eraser(model, bench, ref_config, contrast=fit.contrast)  # the same pairs: no second PGD
            fits["reference"] = (ref, refit_fitter(model, ref, stand, ref_config), ref_config)
        directions, pgd_info = _directions(model, bench, fit, config, cfg, {v.direction for v in todo}, progress)
        pgd_rows += [{"seed": seed, "direction": k, **info} for k, info in pgd_info.items()]
        vanilla = {**score_setting(model, rehearsal_sets, None, cfg.batch_size),
                   **_evaluate(model, evaluation_sets, None, cfg.batch_size)}
        rows.append({"seed": seed, "study": "", "variant": "vanilla", "lam": 0.0, **vanilla})
        erasers: dict[tuple, tuple] = {}
        searched: dict[tuple, tuple] = {}
        bar = tqdm(total=len(todo), desc=f"ablations (seed {seed})", disable=not progress)
        for v in todo:
            layers = layer_sets[v.layers]
            if v.gate != "none" and (v.fit, v.gate) not in erasers:
                result, stand_fitter, fit_config = fits[v.fit]
                gated = replace(fit_config, gate=v.gate)
                erasers[v.fit, v.gate] = (rehearsal_eraser(model, result, stand_fitter, stand, gated),
                                          eraser_with_gate(model, result, fit_config, v.gate))

            def steers(lam: float, v=v, layers=layers):
                d = directions[v.direction].vectors
                if v.gate == "none":
                    steer = [direction_steer(l, d[l], lam / len(layers)) for l in layers]
                    return steer, steer
                return tuple(e.with_options(layers=layers, lam=lam / len(layers)).with_direction(d)
                             for e in erasers[v.fit, v.gate])

            if v.key not in searched:
                # The base is scored along the whole grid, on every rehearsal set (the window claim reads its
                # validation recall); every other variant on the stand-ins only, until its targets are reached.
                full = v.key == BASE.key
                sets = rehearsal_sets if full else stand_in_sets
                matches, tried = match_strength(
                    lambda lam, sets=sets: score_setting(model, sets, steers(lam)[0], cfg.batch_size),
                    cfg.lams, cfg.targets, tolerance=cfg.tolerance, refine=cfg.refine,
                    repetition_max=cfg.job.select.repetition_max, full=full)
                measured: dict[float, dict] = {}
                for lam in sorted({m.lam for m in matches.values() if m.lam is not None}):
                    recall = tried[lam]["recall"] if full else score_setting(
                        model, {k: s for k, s in rehearsal_sets.items() if k != "stand-ins"}, steers(lam)[0],
                        cfg.batch_size)["recall"]
                    measured[lam] = {"recall": recall, **_evaluate(model, evaluation_sets, steers(lam)[1],
                                                                   cfg.batch_size)}
                searched[v.key] = matches, tried, measured
            matches, tried, measured = searched[v.key]
            tags = {"seed": seed, "study": v.study, "variant": v.name, "layers": v.layers, "gate": v.gate,
                    "direction": v.direction, "fit": v.fit}
            for lam, row in sorted(tried.items()):
                # Scored on the stand-ins alone, a row's recall and reward are not the rehearsal's: dropped.
                kept = row if v.key == BASE.key else {k: x for k, x in row.items() if k not in ("recall", "reward")}
                rows.append({**tags, "lam": lam, **kept})
            for target, m in matches.items():
                matched_rows.append({**tags, "target": target, "status": m.status, "lam": m.lam, "stand-ins": m.leak,
                                     "strongest": m.strongest, "strongest_leak": m.strongest_leak,
                                     "breaks_at": m.breaks_at, **(measured[m.lam] if m.lam is not None else {})})
            bar.update(1)
        bar.close()
    return {"curves": pd.DataFrame(rows), "matched": pd.DataFrame(matched_rows), "pgd": pd.DataFrame(pgd_rows),
            "seconds": round(time.time() - start, 1)}


def summarise(matched: pd.DataFrame) -> pd.DataFrame:
    """Per (target, study, variant): seeds matched (``"overshoots"`` counts, flagged by ``overshoots``),
    the median matched ``lam`` and the mean and standard deviation over those seeds of the reported
    figures (percent)."""
    out = []
    for (target, study, variant), g in matched.groupby(["target", "study", "variant"], sort=False):
        ok = g[g.status != "unable"]
        row = {"target": 100 * target, "study": study, "variant": variant, "seeds": len(g), "reached": len(ok),
               "overshoots": int((g.status == "overshoots").sum()),
               "lam": float(ok.lam.median()) if len(ok) else float("nan"),
               "strongest": float(g.strongest.max()),
               "breaks_at": float(g.breaks_at.min()) if g.breaks_at.notna().any() else float("nan")}
        for col in ("stand-ins", "recall", "forget_leak", "retain_recall", "real_recall", "heldout_recall"):
            vals = 100 * ok[col].astype(float) if col in ok and len(ok) else pd.Series(dtype=float)
            row[col] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{col}_sd"] = float(vals.std()) if len(vals) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


CLAIMS = (
    ("multimodal direction beats text-only and image-only", "direction", "multimodal", ["text-only", "image-only"]),
    ("eps 16/255 is the best budget", "eps", "16/255", None),
    ("steering all layers beats one layer and the upper half", "layers", "all but the first",
     ["one layer", "upper half"]),
    ("the linear map beats an MLP map", "map", "linear (paper)", ["MLP"]),
)


def _range(values, fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}-{format(hi, fmt)}"


def _describe(g: pd.DataFrame) -> str:
    """One variant's figures at matched forgetting over seeds, as text."""
    ok = g[g.status != "unable"]
    if ok.empty:
        broke = g.breaks_at.dropna()
        fluency = (f"; answers repeat from lam {_range(broke, 'g')} on {len(broke)} of {len(g)} seeds"
                   if len(broke) else "")
        return (f"unable on every seed (strongest lam tried {_range(g.strongest, 'g')}, leaking "
                f"{_range(100 * g.strongest_leak, '.1f')}%{fluency})")
    recall = 100 * ok.heldout_recall.astype(float)
    spread = f" ± {recall.std():.1f}" if len(ok) > 1 else ""
    note = f", unable on {len(g) - len(ok)} of {len(g)} seeds" if len(ok) < len(g) else ""
    note += f", overshoots on {int((g.status == 'overshoots').sum())}" if (g.status == "overshoots").any() else ""
    return f"{recall.mean():.1f}{spread} (lam {ok.lam.median():.3g}{note})"


def check_claims(matched: pd.DataFrame, target: float) -> pd.DataFrame:
    """The paper's qualitative claims at matched forgetting (rehearsal leakage ``target``), one row each:
    ``held`` (True / False / None when a study was not run, or its variants all gave the same result) and
    the numbers: each variant's held-out recall (evaluation retain and real people) at its matched strength,
    mean ± standard deviation over seeds. The claimed winner must reach the target on every seed; a rival
    that reaches it on no seed is beaten; otherwise the comparison is on the seeds where both reached it."""
    m = matched[(matched.target - target).abs() < 1e-9]
    rows = []
    for claim, study, winner, others in CLAIMS:
        if others is None:
            others = [v for v in dict.fromkeys(m[m.study == study].variant) if v != winner]
        names = [winner, *others]
        groups = {v: m[(m.study == study) & (m.variant == v)] for v in names}
        if not others or any(g.empty for g in groups.values()):
            rows.append({"claim": claim, "held": None, "numbers": "not run"})
            continue
        text = "; ".join(f"{v} {_describe(g)}" for v, g in groups.items())
        if all((g.status == "unable").all() for g in groups.values()):
            rows.append({"claim": claim, "held": None, "numbers": f"no variant reaches the target: {text}"})
            continue
        w = groups[winner].set_index("seed")
        wins, same, paired = [], [], []
        for v in others:
            o = groups[v].set_index("seed")
            both = [s for s in w.index if s in o.index and "unable" not in (w.loc[s, "status"], o.loc[s, "status"])]
            if not both:
                # A rival that never reaches the target where the winner does is beaten there.
                wins.append(bool((o.status == "unable").all()))
                same.append(False)
                continue
            a, b = w.loc[both, "heldout_recall"].astype(float), o.loc[both, "heldout_recall"].astype(float)
            wins.append(float(a.mean()) > float(b.mean()) + 1e-12)
            same.append(bool(((a - b).abs() < 1e-12).all() and (w.loc[both, "lam"] == o.loc[both, "lam"]).all()))
            paired.append(f"{100 * a.mean():.1f} vs {v} {100 * b.mean():.1f} on the {len(both)} seed(s) both reach")
        where = f" Where both reach it, {winner}: " + "; ".join(paired) + "." if paired else ""
        if (w.status == "unable").any():
            rows.append({"claim": claim, "held": False, "numbers": "the claimed winner does not reach the target on "
                                                                    f"every seed. Held-out recall: {text}.{where}"})
        elif all(same):
            rows.append({"claim": claim, "held": None,
                         "numbers": f"untestable here, every variant gives the same result: {text}"})
        else:
            rows.append({"claim": claim, "held": all(wins), "numbers": f"held-out recall: {text}.{where}"})
    return pd.DataFrame(rows)


def lambda_window(curves: pd.DataFrame, target: float, recall_drop: float = 0.05) -> dict:
    """The paper's strength window on the base's rehearsal curve (mean over seeds at each grid strength):
    strengths whose stand-ins leak at most ``target`` while validation recall stays within ``recall_drop``
    of the unsteered model's. Held when such a window exists and a stronger strength tried falls outside
    it (too strong costs utility, as the paper finds)."""
    claim = "a window of lambda forgets while keeping held-out utility"
    base = curves[(curves.study == "direction") & (curves.variant == "multimodal")] if "study" in curves else curves[:0]
    if base.empty or "recall" not in base or base.recall.isna().all():
        return {"claim": claim, "held": None, "numbers": "not run"}
    base = base[base.groupby("lam").seed.transform("nunique") == curves.seed.nunique()]  # grid points every seed has
    van = curves[curves.variant == "vanilla"][["stand-ins", "recall"]].mean()
    mean = base.groupby("lam")[["stand-ins", "recall"]].mean()
    ok = mean[(mean["stand-ins"] <= target + 1e-12) & (mean.recall >= van.recall - recall_drop)]
    points = "; ".join(f"lam {l:g}: leak {100 * r['stand-ins']:.1f}, recall {100 * r.recall:.1f}" for l, r in mean.iterrows())
    window = f"window {ok.index.min():g}-{ok.index.max():g}" if len(ok) else "no window"
    held = bool(len(ok)) and bool(ok.index.max() < mean.index.max())
    return {"claim": claim, "held": held,
            "numbers": f"{window} on the rehearsal (stand-ins leak <= {100 * target:g}%, validation recall within "
                       f"{100 * recall_drop:g} points of {100 * van.recall:.1f}; {points})"}


def plot_strength_curves(curves: pd.DataFrame, targets: Sequence[float]):
    """One panel per study: the rehearsal stand-ins' leakage against the strength, one line per variant
    (mean over seeds at the grid strengths every seed scored), the targets drawn as dashed lines: where a
    curve first meets a line is that variant's matched strength. Returns the figure."""
    import matplotlib.pyplot as plt

    studies = [s for s in STUDIES if s in set(curves.study)]
    cols = min(3, len(studies))
    rows_n = -(-len(studies) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.4 * rows_n), squeeze=False)
    seeds = curves.seed.nunique()
    # The doubling grid's strengths as ticks (the bisections' strengths fall between them).
    grid = [l for l in sorted(curves.lam.unique()) if l > 0 and float(math.log2(l)).is_integer()]
    for ax, study in zip(axes.flat, studies):
        g = curves[curves.study == study]
        for variant, v in g.groupby("variant", sort=False):
            v = v[v.groupby("lam").seed.transform("nunique") == seeds]
            m = v.groupby("lam")["stand-ins"].mean()
            ax.plot(m.index, 100 * m.values, marker="o", markersize=3.5, label=variant)
        for t in targets:
            ax.axhline(100 * t, color="0.35", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(grid, [f"{l:g}" for l in grid])
        ax.minorticks_off()
        ax.set(title=study, xlabel="strength lam (summed over the steered layers)",
               ylabel="rehearsal stand-ins' leakage (%)", ylim=(-3, 103))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, fontsize=8)
    for ax in list(axes.flat)[len(studies):]:
        ax.axis("off")
    fig.suptitle("Each variant's strength search on the rehearsal; dashed: the matched leakage targets "
                 f"({', '.join(f'{100 * t:g}%' for t in targets)})")
    fig.tight_layout()
    return fig


def plot_matched(matched: pd.DataFrame, target: float):
    """Held-out recall (evaluation retain and real people) of every variant at matched forgetting, mean and
    standard deviation over seeds, one row per variant grouped by study; variants unable to reach the
    target are marked at the left edge. Returns the figure."""
    import matplotlib.pyplot as plt

    s = summarise(matched[(matched.target - target).abs() < 1e-9])
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(s) + 1.4))
    labels = []
    for i, r in enumerate(s.itertuples()):
        labels.append(f"{r.study}: {r.variant}")
        if r.reached:
            ax.errorbar(r.heldout_recall, i, xerr=0 if math.isnan(r.heldout_recall_sd) else r.heldout_recall_sd,
                        fmt="o", color="C0" if r.reached == r.seeds else "C1", capsize=3)
        else:
            ax.text(1, i, "unable on every seed", color="C3", va="center", fontsize=8)
    ax.set_yticks(range(len(s)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(-3, 103), xlabel="held-out recall at matched forgetting (%)")
    ax.set_title(f"Held-out recall where each variant's rehearsal leakage reaches {100 * target:g}%\n"
                 "mean ± sd over the seeds that reach it (blue: every seed, orange: some)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def claims_table(result: dict, targets: Sequence[float]) -> pd.DataFrame:
    """Every claim at every target (:func:`check_claims`, then :func:`lambda_window`), with ``target`` in percent."""
    return pd.concat([pd.concat([check_claims(result["matched"], t), pd.DataFrame([lambda_window(result["curves"], t)])],
                                ignore_index=True).assign(target=100 * t) for t in targets], ignore_index=True)


def write_results(out_dir: str | Path, result: dict, targets: Sequence[float] = AblationConfig.targets) -> dict[str, Path]:
    """curves.csv, matched.csv, summary.csv, claims.csv, pgd.csv, strength.png and matched_<target>.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves, matched = result["curves"], result["matched"]
    paths = {"curves": out / "curves.csv", "matched": out / "matched.csv", "summary": out / "summary.csv",
             "claims": out / "claims.csv", "pgd": out / "pgd.csv", "strength": out / "strength.png"}
    curves.to_csv(paths["curves"], index=False)
    matched.to_csv(paths["matched"], index=False)
    result["pgd"].to_csv(paths["pgd"], index=False)
    summarise(matched).to_csv(paths["summary"], index=False)
    claims_table(result, targets).to_csv(paths["claims"], index=False)
    plot_strength_curves(curves, targets).savefig(paths["strength"], dpi=110, bbox_inches="tight")
    for t in targets:
        paths[f"matched_{t:g}"] = out / f"matched_{100 * t:g}.png"
        plot_matched(matched, t).savefig(paths[f"matched_{t:g}"], dpi=110, bbox_inches="tight")
    return paths
