"""Per-layer steering effects: steer one layer at a time (or cumulatively) across a lambda grid.

Measured on forget and retain prompts from one forward pass each (no
generation, so a full layer x lambda grid takes seconds): the probability that
the answer starts as a refusal, the KL divergence of the next-token
distribution from the unsteered model, and (when answers are given) the
log-probability of the answer's first token. :func:`operating_window` then
finds, per layer, the lambdas where forget refuses and retain holds.

The next-token grid sees only the first answer token. Facts that surface later
("This is <name>.") and steering that acts on generated tokens
(``positions="all"``) need generation: :func:`leakage_grid` generates answers to
validation questions at each (layer, lambda) and counts how often the fact
appears; :func:`choose_setting` picks the setting that leaks least on forget
while retain recall holds. About 3 s per setting for 360 questions on the
embedded default (2 CPU cores), so run it on a shortlist of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from toolkit import tracing
from toolkit.models.loading import LoadedModel, Sample

__all__ = ["refusal_token_ids", "next_token_logprobs", "steering_grid", "operating_window", "recommend",
           "shortlist_layers", "leakage_grid", "choose_setting"]

REFUSAL_STARTS = ("I cannot", "I can't", "I do not", "I am unable", "Sorry", "I'm sorry")


def refusal_token_ids(model: LoadedModel, starts: Sequence[str] = REFUSAL_STARTS) -> list[int]:
    """First tokens of typical refusals (``"I"``, ``"Sorry"``...) as the model would emit them
    right after its generation prompt (``ĠI`` after ``ASSISTANT:``, ``I`` after Qwen's ``assistant`` line)."""
    tok = model.tokenizer
    prompt = model.format_prompt("Who is this?", image=False) if model.adapter.chat else "Who is this?"
    ids = set()
    for s in starts:
        enc = model.continuation_ids(prompt, s)
        if enc and enc[0] != tok.unk_token_id:
            ids.add(enc[0])
    if not ids:
        raise ValueError("None of the refusal openings tokenise in this vocabulary; pass refusal_ids yourself.")
    return sorted(ids)


def next_token_logprobs(model: LoadedModel, samples: Sequence[Sample], steers=None, batch_size: int = 48):
    return torch.log_softmax(tracing.forward(model, samples, steers=steers, batch_size=batch_size).double(), -1)


def _measure(logp: torch.Tensor, base: torch.Tensor, refusal_ids: list[int], answer_ids: torch.Tensor | None) -> dict:
    p_refuse = logp[:, refusal_ids].exp().sum(-1)
    kl = (base.exp() * (base - logp)).sum(-1)
    out = {"refusal_prob": float(p_refuse.mean()), "refusal_rate": float((p_refuse > 0.5).double().mean()),
           "kl": float(kl.mean())}
    if answer_ids is not None:
        out["answer_logprob"] = float(logp.gather(1, answer_ids[:, None]).mean())
    return out


def steering_grid(model: LoadedModel, make_steers: Callable[[Sequence[int], float], object],
                  sets: dict[str, Sequence[Sample]], layers: Sequence[int], lams: Sequence[float], *,
                  answers: dict[str, Sequence[str]] | None = None, cumulative: bool = False,
                  refusal_ids: Sequence[int] | None = None, batch_size: int = 48,
                  progress: bool = False) -> pd.DataFrame:
    """One row per (layer, lambda, set): refusal probability, refusal rate, KL from vanilla, answer logprob.

    ``make_steers(layers, lam)`` returns what to steer with (an Eraser restricted
    to those layers with that strength, or your own Steers). With
    ``cumulative=True`` row ``layer=l`` steers layers ``layers[0..l]`` together.
    """
    from tqdm.auto import tqdm

    refusal_ids = list(refusal_ids or refusal_token_ids(model))
    base = {name: next_token_logprobs(model, s, batch_size=batch_size) for name, s in sets.items()}
    answer_ids = {}
    for name, ans in (answers or {}).items():
        answer_ids[name] = torch.tensor([
            model.continuation_ids(model.format_prompt(s.text, image=s.image is not None), a)[0]
            for s, a in zip(sets[name], ans)])
    rows = []
    combos = [(i, l, lam) for i, l in enumerate(layers) for lam in lams]
    for i, layer, lam in tqdm(combos, desc="steering grid", disable=not progress, leave=False):
        steer_layers = list(layers[: i + 1]) if cumulative else [layer]
        steers = make_steers(steer_layers, lam)
        for name, samples in sets.items():
            logp = next_token_logprobs(model, samples, steers, batch_size)
            rows.append({"layer": layer, "lam": lam, "set": name, "steered_layers": ",".join(map(str, steer_layers)),
                         **_measure(logp, base[name], refusal_ids, answer_ids.get(name))})
    for name in sets:  # the unsteered reference row
        rows.append({"layer": -1, "lam": 0.0, "set": name, "steered_layers": "",
                     **_measure(base[name], base[name], refusal_ids, answer_ids.get(name))})
    return pd.DataFrame(rows)


def _per_setting(grid: pd.DataFrame, forget: str, retain: str, column: str):
    """``(unsteered retain value, forget values, retain values)``, the latter indexed by (layer, lam)."""
    base = float(grid[(grid.layer == -1) & (grid.set == retain)][column].iloc[0])
    g = grid[grid.layer >= 0]
    f = g[g.set == forget].set_index(["layer", "lam"])[column]
    r = g[g.set == retain].set_index(["layer", "lam"])[column]
    return base, f, r


def operating_window(grid: pd.DataFrame, *, forget: str = "forget", retain: str = "retain",
                     forget_min: float = 0.95, retain_max: float = 0.02) -> pd.DataFrame:
    """Per layer: the lambdas where forget refuses (rate >= forget_min) and retain holds (<= retain_max + vanilla)."""
    g = grid[grid.layer >= 0]
    base_retain, f, r = _per_setting(grid, forget, retain, "refusal_rate")
    kl = g[g.set == retain].set_index(["layer", "lam"]).kl
    ok = (f >= forget_min) & (r <= base_retain + retain_max)
    rows = []
    for layer in sorted(g.layer.unique()):
        lams = [lam for (l, lam), good in ok.items() if l == layer and good]
        rows.append({"layer": layer, "lam_min": min(lams) if lams else None, "lam_max": max(lams) if lams else None,
                     "n_ok": len(lams), "ok_lams": sorted(lams),
                     "retain_kl_at_min": float(kl[(layer, min(lams))]) if lams else None})
    return pd.DataFrame(rows)


def recommend(window: pd.DataFrame) -> tuple[int, float]:
    """The layer with the most passing lambdas (ties: least retain KL), at the median passing lambda."""
    ok = window[window.n_ok > 0]
    if ok.empty:
        raise ValueError("No layer has a lambda where forget refuses and retain holds: widen the lambda grid, "
                         "loosen the thresholds, or revisit the direction (see the separability probe).")
    best = ok.sort_values(["n_ok", "retain_kl_at_min"], ascending=[False, True]).iloc[0]
    lams = list(best.ok_lams)
    return int(best.layer), float(lams[(len(lams) - 1) // 2])


def shortlist_layers(grid: pd.DataFrame, n: int = 3, *, forget: str = "forget", retain: str = "retain",
                     retain_max: float = 0.03) -> list[int]:
    """The ``n`` layers with the highest next-token forget refusal rate at a lambda where retain
    refusal rises by at most ``retain_max`` (ties: lower layer)."""
    base_retain, f, r = _per_setting(grid, forget, retain, "refusal_rate")
    best = {}
    for (layer, lam), rate in f.items():
        if r[(layer, lam)] <= base_retain + retain_max:
            best[layer] = max(best.get(layer, -1.0), rate)
    ranked = sorted(best, key=lambda l: (-best[l], l))
    return sorted(int(l) for l in ranked[:n])


def leakage_grid(model: LoadedModel, make_steers: Callable[[Sequence[int], float], object],
                 sets: dict[str, Sequence], layers: Sequence[int], lams: Sequence[float], *,
                 batch_size: int = 48, progress: bool = False) -> pd.DataFrame:
    """Generate answers at each (layer, lambda): one row per (layer, lambda, set).

    ``sets``: name -> :class:`toolkit.evaluate.Item` list with ``answer_key``s
    (e.g. :func:`toolkit.data.synthetic.validation_items`). Columns:
    ``answer_rate`` (share of answers containing the fact: leakage on forget,
    recall on retain), ``answer_rate_image`` / ``answer_rate_text``,
    ``refusal_rate``, ``rougeL``. Row ``layer=-1, lam=0`` is unsteered.
    """
    from tqdm.auto import tqdm

    from toolkit.evaluate import run_items

    def measure(steers, layer, lam):
        out = []
        for name, items in sets.items():
            df = run_items(model, items, steers=steers, batch_size=batch_size)
            row = {"layer": layer, "lam": lam, "set": name, "answer_rate": float(df.leaked.mean()),
                   "refusal_rate": float(df.refused.mean()), "rougeL": float(df.rougeL.mean())}
            for modality in ("image", "text"):
                sub = df[df.modality == modality]
                row[f"answer_rate_{modality}"] = float(sub.leaked.mean()) if len(sub) else float("nan")
            out.append(row)
        return out

    rows = measure(None, -1, 0.0)
    combos = [(l, lam) for l in layers for lam in lams]
    for layer, lam in tqdm(combos, desc="leakage grid", disable=not progress, leave=False):
        rows += measure(make_steers([layer], lam), layer, lam)
    return pd.DataFrame(rows)


def choose_setting(grid: pd.DataFrame, *, forget: str = "forget", retain: str = "retain",
                   retain_max: float = 0.03) -> tuple[int, float]:
    """From a :func:`leakage_grid`: the (layer, lambda) with the lowest forget answer rate among those whose
    retain answer rate is at most ``retain_max`` below unsteered (ties: higher retain rate, then smaller
    lambda, then lower layer)."""
    base, f, r = _per_setting(grid, forget, retain, "answer_rate")
    ok = [(f[k], -r[k], k[1], k[0]) for k in f.index if r[k] >= base - retain_max - 1e-12]
    if not ok:
        raise ValueError(f"No setting keeps retain recall within {retain_max:.0%} of unsteered ({base:.0%}): "
                         "try smaller lambdas, other layers, or a larger retain_weight / rank ratio.")
    _, _, lam, layer = min(ok)
    return int(layer), float(lam)
