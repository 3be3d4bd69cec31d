"""Choosing layer, strength, gate threshold and position mode on validation people: the rehearsal.

Settings cannot be tuned on the forget people (they are what is reported) nor
on the people whose utility is reported. :func:`select_setting` chooses them on
a rehearsal (:meth:`toolkit.data.splits.PeopleSplit.rehearsal`): a group of
validation people as large as the forget list (at most half the validation
people) is "forgotten" by the same fit (:func:`toolkit.benchmark_fit.refit_forget`: same
retain statistics, null spaces and direction, their own forget rows), and every
candidate (layer, lambda, threshold) is scored by generating answers to

* the stand-ins' generation questions: *leakage* (the fact appears);
* the other validation people's (retain and real): *recall*.

Candidates: layers x position modes (the eraser's own, and ``"prompt"``) x gate
thresholds x lambdas.

Rule. A candidate is *fluent* when the stand-ins' answers repeat at most
``repetition_max`` of their 3-grams (strong steering at every generated token
turns refusals into loops: 88% repetition at lambda 16 on the default). Among
fluent candidates whose stand-in leakage is at most ``leak_max``, the one with
the highest validation recall (ties: smaller lambda, smaller threshold, lower
layer). If none reaches ``leak_max`` (the goal cannot be met on this model and
split), the fluent candidate with the highest ``recall - leakage``: the
balanced point of the frontier, rather than the lowest leakage at any utility
cost (on the default's forget_10 that would keep 47% validation recall to leak
5.6% instead of 21%). If no candidate is fluent, the same on all candidates. Nothing here reads an evaluation person, a forget
person's answers or a benchmark column MLLMU-Bench lacks: where a question has no
``Answer_Key``, "the fact appears" is read as ROUGE-L >= 0.5 against the ground truth.

Gate kinds (:mod:`toolkit.gates`). With ``SelectConfig.gates`` naming membership
kinds, a screening comes first, with no generation (:func:`screen_gates`): for each
layer x kind x target false-positive rate, the rehearsal's gate is fitted on the
stand-ins' questions and *caught* is the share of them it fires on (as the real
gate is fitted on the forget questions and must fire on them), its threshold is set
on one half of the other validation people and its false positives counted on the
other half, never seen by the fit or the threshold (and the halves swapped): *fp* (questions)
and *fp_people* (people with any question fired on). The highest ``caught - fp_people`` wins; the generation grid then runs for that (layer,
kind, read, rate) only (``screen_top > 1``: for the best of each read, which trade leakage for
recall in ways the screening cannot see), over position modes, latch and lambdas. (Holding out some of each
stand-in's questions instead was tried: another question about the same person
looks like another person's question at these layers, so no membership kind caught
more than 33% there, while the same kinds catch 94-99% of the forget people's
Test_Set images and paraphrases; validation people have one image and no
paraphrases to hold out.)

Cost: one generation pass over the three groups per candidate (about 3.5 s for
330 questions on the default, 2 CPU cores); along each (layer, threshold) the
lambdas are tried in increasing order and stop once the stand-ins leak nothing, or, for a
membership gate, once a stronger lambda changes neither leakage, recall nor repetition (the gate
is hard: every row it fires on already refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import torch

from .data.mllmu import MLLMUBench
from .data.splits import PeopleSplit
from .eraser import Eraser
from .data.items import Item, items_from_profiles
from .data.wrappers import wrap_items
from .evaluate import run_items, touched_items
from .benchmark_fit import FitResult, eraser_with_gate, refit_fitter, rehearsal_eraser
from .config import FitConfig, SelectConfig
from .gates import auroc, calibrate, fit_gate
from .reads import needs_prompt, select_read
from .metrics import asru_reward_rule
from .models.loading import LoadedModel
from .steering import as_steers, decides_at_prefill

__all__ = ["SelectConfig", "Selection", "screen_gates", "rehearsal_items", "fact_hits", "fact_rate", "match_leakage", "score_setting", "choose", "select_setting",
           "RECALL_ROUGE"]

RECALL_ROUGE = 0.5  # without an Answer_Key, an answer "contains the fact" at ROUGE-L >= this


@dataclass
class Selection:
    layer: int
    lam: float
    threshold: float
    grid: pd.DataFrame
    stand_ins: list[str]
    validation_people: list[str]
    rule: str = field(default="")
    positions: str = ""
    gate: str = "linear"
    gate_fpr: float = float("nan")
    screening: pd.DataFrame | None = None
    gate_reads: str = "last"
    latch: bool = False

    @property
    def chosen(self) -> pd.Series:
        g = self.grid
        same = (g.layer == self.layer) & (g.lam == self.lam) & (g.threshold == self.threshold) & \
            (g.positions == self.positions)
        if "latch" in g:
            same &= g.latch == self.latch
        if "gate" in g:
            same &= g.gate == self.gate
            if self.gate != "linear":
                same &= (g.reads == self.gate_reads) & (g.gate_fpr == self.gate_fpr)
        return g[same].iloc[0]


def fact_hits(df: pd.DataFrame) -> pd.Series:
    """Per answer, 1.0 if it contains the fact: ``leaked`` where the item has an answer key, else
    ROUGE-L >= :data:`RECALL_ROUGE` (MLLMU-Bench has no answer keys)."""
    return df.leaked.where(df.leaked.notna(), (df.rougeL >= RECALL_ROUGE).astype(float))


def fact_rate(df: pd.DataFrame) -> float:
    """Share of answers containing the fact (:func:`fact_hits`); NaN for no answers."""
    return float(fact_hits(df).mean()) if len(df) else float("nan")


def match_leakage(candidates: Sequence, leakage: Callable[[Any], float], target: float) -> tuple[Any, dict]:
    """Matched forgetting: the first of ``candidates`` (weakest first) whose ``leakage(c)`` is at most
    ``target`` (measuring stops there), else the one with the lowest leakage (the weaker on ties).
    Returns ``(choice, {candidate: leakage})`` for what was measured."""
    measured = {}
    for c in candidates:
        measured[c] = leakage(c)
        if measured[c] <= target + 1e-9:
            return c, measured
    return min(measured, key=measured.get), measured


def rehearsal_items(bench: MLLMUBench, forget_ratio: int, split: PeopleSplit, wrap: int = 0
                    ) -> tuple[dict[str, list[Item]], list]:
    """``({"stand-ins", "retain", "real"}: generation items, stand-in profiles)`` from validation people only.
    ``wrap``: each stand-in and validation-retain question is also asked under that many fit-pool wrappers
    from the pool's rehearsal half (:mod:`toolkit.data.wrappers`: the gate is fitted on the other half;
    never the attack suite's), pooled into the same sets."""
    size = len(bench.forget(forget_ratio))
    stand, val_retain = split.rehearsal(bench.retain(forget_ratio), size)
    val_real = split.people(bench.real(), "validation")
    sets = {"stand-ins": items_from_profiles(stand, "stand-ins", ("generation",)),
            "retain": items_from_profiles(val_retain, "retain", ("generation",)),
            "real": items_from_profiles(val_real, "real", ("generation",))}
    if wrap:
        for name, seed in (("stand-ins", 3), ("retain", 4)):
            sets[name] = sets[name] + wrap_items(sets[name], per_question=wrap, seed=seed, split_suffix="",
                                                 half="rehearsal")
    return sets, stand


def score_setting(model: LoadedModel, sets: dict[str, list[Item]], steers, batch_size: int = 48, *,
                  unsteered: dict[str, pd.DataFrame] | None = None, frames: dict | None = None,
                  touched: dict[str, list[bool]] | None = None) -> dict:
    """One grid row: the fact rate per set, the stand-ins' refusal and repetition rates, and ``recall``
    (retain and real validation answers together).

    ``unsteered``: the sets' answers without steers (``frames`` of the vanilla row): items a prefill-deciding
    gate does not touch keep them instead of being generated again (:func:`toolkit.evaluate.run_items`; the row
    is the same); ``generated <set>``: the share of the set's questions generated then. ``touched``: per set, the
    items the steers' gates touch (:func:`toolkit.evaluate.touched_items`), when already known. ``frames``: a dict
    that receives each set's answers."""
    row = {}
    rewards = []
    for name, items in sets.items():
        if items:
            df = run_items(model, items, steers=steers, batch_size=batch_size,
                           unsteered=(unsteered or {}).get(name),
                           touched=(touched or {}).get(name))
            if frames is not None:
                frames[name] = df.drop(columns="generated", errors="ignore")
            if "generated" in df:
                row[f"generated {name}"] = float(df.generated.mean())
            row[name] = fact_rate(df)
            rewards += [asru_reward_rule(a == 1.0, r == 1.0, g, name == "stand-ins")
                        for a, r, g in zip(fact_hits(df), df.refused, df.rougeL)]
            if name == "stand-ins":
                row["stand_in_refused"] = float(df.refused.mean())
                row["stand_in_repetition"] = float(df.repetition.mean())
    kept = [n for n in ("retain", "real") if n in row]
    sizes = {n: len(sets[n]) for n in kept}
    row["recall"] = sum(row[n] * sizes[n] for n in kept) / max(1, sum(sizes.values()))
    row["reward"] = sum(rewards) / max(1, len(rewards))
    return row


def choose(grid: pd.DataFrame, leak_max: float, repetition_max: float = 0.25, rule: str = "leakage"
           ) -> tuple[pd.Series, str]:
    """The rule (module docstring) on a selection grid: ``(chosen row, the rule as text)``."""
    cand = grid[grid.layer >= 0]
    if cand.empty:
        raise ValueError("The selection grid has no candidate setting.")
    if rule == "reward":
        best = cand.sort_values(["reward", "lam", "threshold", "layer"], ascending=[False, True, True, True],
                                kind="stable").iloc[0]
        return best, "the highest mean ASRU reward on the rehearsal (stand-ins refuse, validation people answer)"
    if rule != "leakage":
        raise ValueError(f"rule must be 'leakage' or 'reward', got {rule!r}.")
    if "stand_in_repetition" in cand:
        fluent = cand[cand.stand_in_repetition <= repetition_max + 1e-12]
    else:
        fluent = cand
    pool, note = (fluent, "") if len(fluent) else (cand, f"; no setting kept repetition <= {repetition_max:.0%}")
    ok = pool[pool["stand-ins"] <= leak_max + 1e-12]
    if len(ok):
        best = ok.sort_values(["recall", "lam", "threshold", "layer"], ascending=[False, True, True, True],
                              kind="stable").iloc[0]
        return best, (f"highest validation recall among settings with rehearsal leakage <= {leak_max:.0%} and "
                      f"repetition <= {repetition_max:.0%}{note}")
    pool = pool.assign(balance=pool.recall - pool["stand-ins"])
    best = pool.sort_values(["balance", "lam", "threshold", "layer"], ascending=[False, True, True, True],
                            kind="stable").iloc[0]
    return best, (f"no fluent setting reached rehearsal leakage <= {leak_max:.0%}: the highest validation recall "
                  f"minus rehearsal leakage{note}")


def _halves(ids: Sequence[str]) -> tuple[set[str], set[str]]:
    import hashlib

    order = sorted(set(ids), key=lambda i: hashlib.sha256(f"halves:{i}".encode()).hexdigest())
    return set(order[0::2]), set(order[1::2])


def screen_gates(fit: FitResult, rehearsal_forget: dict[int, torch.Tensor], stand_ins: Sequence[str],
                 kinds: Sequence[str], layers: Sequence[int], fprs: Sequence[float],
                 rehearsal: Eraser | None = None, reads: Sequence[str] | None = None) -> pd.DataFrame:
    """Each (layer, kind, read, fpr) without generating (module docstring): ``caught`` on the stand-ins'
    questions, ``fp`` on held-out validation people's questions, ``fp_people`` the share of those people
    with any question fired on, ``auroc`` between the two, ``score = caught - fp_people``: false refusals
    come in people (one held-out person mistaken for a forget person loses every question), so the
    person-level rate is the one charged.

    ``rehearsal_forget``: the stand-ins' gate rows ``{layer: (n, f)}`` in question order, read as the fit's
    kept rows (``fit.fitter.gate_reads``); ``rehearsal``: the linear rehearsal eraser (scored on the same
    rows, for ``"linear"`` in ``kinds``); ``reads``: the reads to screen (default: the fit's own).
    ``fp_people``: the share of held-out validation *people* with any question fired on.
    """
    fitter = fit.fitter
    people = fitter.calibration_people
    others = [p for p in dict.fromkeys(people) if p not in set(stand_ins)]
    first, second = _halves(others)
    if not first or not second:
        raise ValueError("The gate screening needs at least two validation people besides the stand-ins.")
    rows = []
    masks = [torch.tensor([p in half for p in people]) for half in (first, second)]
    kept, d = fitter.gate_reads, fitter.hidden_size
    read_list = list(dict.fromkeys(reads or [fitter.default_reads]))
    for layer in layers:
        for read in read_list:
            for kind in kinds:
                if kind == "linear":  # reads the last token whatever the read: screened once
                    if rehearsal is None or read != read_list[0]:
                        continue
                    gate, score, used = None, rehearsal.layer_map(layer).gate_object.score, "last"
                else:
                    gate = fit_gate(kind, select_read(rehearsal_forget[layer], kept, read, d),
                                    select_read(fitter.gate_rows["retain"][layer], kept, read, d), reads=read)
                    score, used = gate.score, read
                pos_rows = select_read(rehearsal_forget[layer], kept, used, d)
                out_rows = select_read(fitter.gate_rows["calibration"][layer], kept, used, d)
                for fpr in (fprs if gate is not None else fprs[:1]):
                    caught, fp, fp_people, aucs = [], [], [], []
                    for cal_mask, test_mask in ((masks[0], masks[1]), (masks[1], masks[0])):
                        cal, test = out_rows[cal_mask], out_rows[test_mask]
                        if gate is not None:
                            tuned, _ = calibrate(gate, cal, fpr)
                            fires = lambda x, t=tuned: t(x)[:, 0] > 0.5  # noqa: E731
                        else:  # the linear gate: its score cut at the same quantile, for comparison only
                            thr = float(torch.quantile(score(cal).double(), 1 - fpr, interpolation="higher"))
                            fires = lambda x, thr=thr: score(x) > thr  # noqa: E731
                        caught.append(float(fires(pos_rows).float().mean()))
                        fired = fires(test)
                        fp.append(float(fired.float().mean()))
                        who = [p for p, m in zip(people, test_mask.tolist()) if m]
                        fp_people.append(float(pd.Series(fired.tolist(), index=who, dtype=float)
                                               .groupby(level=0).max().mean()))
                        aucs.append(auroc(score(pos_rows), score(test)))
                    c, f, fpp = sum(caught) / 2, sum(fp) / 2, sum(fp_people) / 2
                    rows.append({"layer": layer, "gate": kind, "reads": used,
                                 "gate_fpr": fpr, "caught": c, "fp": f, "fp_people": fpp,
                                 "auroc": sum(aucs) / 2, "score": c - fpp})
    return pd.DataFrame(rows)


def select_setting(model: LoadedModel, fit: FitResult, bench: MLLMUBench, config: FitConfig,
                   select: SelectConfig = SelectConfig(), *, progress: bool = False,
                   generate_all: bool = False) -> tuple[Eraser, Selection]:
    """The fitted eraser restricted to the chosen layer, with the chosen strength and threshold.

    Each candidate generates only the rehearsal questions its gate touches at prefill and keeps the vanilla
    row's answers for the rest (:func:`score_setting`'s ``unsteered``; a gate that can fire while decoding
    generates everything); what a gate touches is found by one prefill pass per gate, shared by its strengths,
    position modes and latches (the grid's ``prefill pass`` column marks where it ran). The grid is the one full
    generation gives (``generate_all=True``, for checking it: ``tests/test_selection_cost.py``)."""
    from tqdm.auto import tqdm

    split = config.people
    if split is None:
        raise ValueError("Selection needs validation people: fit with FitConfig(people=PeopleSplit(...)), not "
                         "people=None (then every retain person is in the fit and none is left to choose on).")
    sets, stand = rehearsal_items(bench, config.forget_ratio, split, select.wrap)
    layers = list(select.layers or fit.eraser.layers[len(fit.eraser.layers) // 2:])
    missing = [l for l in layers if l not in fit.eraser.layers]
    if missing:
        raise ValueError(f"Layers {missing} were not fitted (fitted: {list(fit.eraser.layers)}).")
    kinds = tuple(select.gates or (config.gate,))
    stand_fit = refit_fitter(model, fit, stand, config)  # one capture of the stand-ins serves every gate below
    screening = None
    # Candidates for the generation grid: (gate kind, target rate, read, layers).
    candidates = [(kinds[0] if len(kinds) == 1 else config.gate, config.gate_fpr, config.gate_reads, layers)]
    if any(k != "linear" for k in kinds):
        if fit.fitter is None or fit.fitter.gate_reads is None:
            raise ValueError(f"Choosing among gates {list(kinds)} needs the fit's gate rows: fit with "
                             "FitConfig(gate_rows=True) (or a membership gate).")
        rehearsal_linear = rehearsal_eraser(model, fit, stand_fit, stand, replace(config, gate="linear")) \
            if "linear" in kinds else None
        screening = screen_gates(fit, stand_fit.gate_rows["forget"], [p.id for p in stand], kinds, layers,
                                 select.gate_fprs, rehearsal_linear, select.gate_reads or (config.gate_reads,))
        if select.screen_fp not in ("people", "questions"):
            raise ValueError(f"screen_fp must be 'people' or 'questions', got {select.screen_fp!r}.")
        if select.screen_fp == "questions":
            screening = screening.assign(score=screening.caught - screening.fp)
        ranked = screening.sort_values(["score", "gate_fpr"], ascending=[False, True], kind="stable")
        # The best screened gate of each read (the linear gate counts as one read), best first: the
        # screening sees no generation, so the grid decides between reads that trade leakage for recall.
        per_read = ranked.assign(key=ranked.gate.where(ranked.gate == "linear", ranked.reads)
                                 ).drop_duplicates("key").head(max(1, select.screen_top))
        candidates = [(str(r.gate), float(r.gate_fpr), str(r.reads), [int(r.layer)]) for r in per_read.itertuples()]
    vanilla: dict[str, pd.DataFrame] = {}
    rows = [{"layer": -1, "gate": "", "reads": "", "gate_fpr": float("nan"), "positions": "", "latch": False,
             "lam": 0.0, "threshold": 0.0, **score_setting(model, sets, None, select.batch_size, frames=vanilla)}]
    reuse = None if generate_all else vanilla
    passes: dict = {}  # (rehearsal eraser, layer, threshold) -> the items its gates touch, per set

    def touched_for(rehearsal: Eraser, steers: Eraser, layer: int, t: float) -> tuple[dict | None, bool]:
        """What the candidate's gates touch, found once per gate: it does not depend on lambda, positions or
        latch (:func:`toolkit.evaluate.touched_items`). ``(touched, whether this call ran the prefill pass)``."""
        if reuse is None or not all(decides_at_prefill(s) for s in as_steers(model, steers)):
            return None, False
        key = (id(rehearsal), layer, t)
        if key in passes:
            return passes[key], False
        passes[key] = {name: touched_items(model, items, steers, select.batch_size) for name, items in sets.items()
                       if items}
        return passes[key], True
    configs = {}
    combos = []
    for kind, fpr, reads, cand_layers in candidates:
        cfg = replace(config, gate=kind, gate_fpr=fpr, gate_reads=reads if kind != "linear" else config.gate_reads)
        configs[(kind, reads, fpr)] = cfg
        own = cfg.steer_positions()
        modes = list(dict.fromkeys(p or own for p in select.positions))
        if kind != "linear" and needs_prompt(cfg.gate_reads):
            modes = [m for m in modes if m != "all"] or ["prompt"]  # such a gate decides at prefill
        thresholds = select.thresholds if kind == "linear" else (0.0,)
        latches = [False] if kind == "linear" else list(dict.fromkeys(select.latch))
        rehearsal = rehearsal_eraser(model, fit, stand_fit, stand, cfg)
        combos += [(rehearsal, kind, reads, fpr, l, p, t, h) for l in cand_layers for p in modes for t in thresholds
                   for h in latches]
    bar = tqdm(total=len(combos) * len(select.lams), desc="selection", disable=not progress, leave=False)
    for rehearsal, kind, reads, fpr, layer, mode, t, latch in combos:
        previous = None  # this candidate's row at the last, weaker lambda
        for lam in sorted(select.lams):
            steers = rehearsal.with_options(layers=[layer], lam=lam, threshold=t, positions=mode, latch=latch)
            touched, ran = touched_for(rehearsal, steers, layer, t)
            row = {"layer": layer, "gate": kind, "reads": reads if kind != "linear" else "last",
                   "gate_fpr": fpr if kind != "linear" else float("nan"), "positions": mode, "latch": latch,
                   "lam": lam, "threshold": t,
                   **score_setting(model, sets, steers, select.batch_size, unsteered=reuse, touched=touched)}
            if reuse is not None:
                row["prefill pass"] = ran  # the pass that found what this gate touches ran here
            saturated = kind != "linear" and previous is not None and all(
                previous[k] == row[k] for k in ("stand-ins", "recall", "stand_in_repetition"))
            previous = row
            rows.append(row)
            bar.update(1)
            # Stronger only costs recall once nothing leaks; a hard membership gate whose rehearsal is unchanged
            # by a stronger lambda is saturated (every fired row already refuses), so the rest would repeat it.
            if row["stand-ins"] == 0.0 or saturated:
                bar.update(len([x for x in select.lams if x > lam]))
                break
    bar.close()
    grid = pd.DataFrame(rows)
    best, rule = choose(grid, select.leak_max, select.repetition_max, select.rule)
    layer, lam, t = int(best.layer), float(best.lam), float(best.threshold)
    config = next(c for (k, r, f), c in configs.items() if k == best.gate and
                  (k == "linear" or (r == best.reads and f == best.gate_fpr)))
    final = fit.eraser if config.gate == "linear" == fit.eraser.gate_kinds[0] \
        else eraser_with_gate(model, fit, config, config.gate)
    eraser = final.with_options(layers=[layer], lam=lam, threshold=t, positions=best.positions,
                                latch=bool(best.latch) and config.gate != "linear")
    val_people = sorted({it.person for n in ("retain", "real") for it in sets[n]})
    return eraser, Selection(layer, lam, t, grid, [p.id for p in stand], val_people, rule, best.positions,
                             config.gate, config.gate_fpr if config.gate != "linear" else float("nan"), screening,
                             config.gate_reads if config.gate != "linear" else "last", eraser.latch)
