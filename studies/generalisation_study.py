"""Why the gate fires on people the fit never saw, and which map holds up best: validation people only.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/generalisation_study.py``).
Produces: docs/research-log.md, "2026-12-01: The paper's linear gate alone, as measured before gates were swappable".

Every number here comes from fit people (the fit) and validation people (the
rehearsal: validation people stand in for the forget list, others are the
retain side); no evaluation person is read. Three parts:

1. Direction stability: cosine between directions from disjoint halves of the
   contrastive pairs, for 16, 40 and all pairs (the CLI used to draw 40 and the
   demo 16).
2. Separation: for each (layer, rank ratio, retain weight, ridge) the stand-ins'
   mean gate over the 95th percentile of |gate| on validation retain people, at
   the last prompt token (above 1: a threshold could separate them).
3. Candidates side by side at one layer across lambdas: the paper's map (rank
   ratio 0.3, no penalty, no answer rows, ``positions="prompt"``), the demo's map
   with gate thresholds 0 / 0.1 / 0.2, a smaller null space, a stronger penalty,
   prompt-only steering. For each: rehearsal leakage, validation recall, the
   best recall among fluent settings that leak <= 5%, and the balanced point.
4. A broader retain basis: image questions about never-seen faces (the synthetic
   benchmark's Unknown_Set) added to the retain statistics.

    .venv/bin/python studies/generalisation_study.py      # about 8 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from dataclasses import replace

import pandas as pd
import torch

from toolkit.config import EraseConfig
from probes.direction_stability import half_split_cosines
from toolkit.contrastive import privacy_sets
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.eraser import solve_map
from toolkit.benchmark_fit import fit_eraser, refit_forget
from toolkit.data.samples import question_samples
from toolkit.models.loading import Sample, load_model
from toolkit.pipeline import add_samples
from toolkit.nullspace import FixedRatio, SecondMoment
from toolkit.selection import rehearsal_items, score_setting as score
from toolkit.tracing import capture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--lams", default="2,4,6,8,12,16")
    args = ap.parse_args()
    lams = [float(x) for x in args.lams.split(",")]
    t0 = time.time()
    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    demo = EraseConfig()
    split, r = demo.people, demo.forget_ratio
    fit_people = split.people(bench.retain(r), "fit")

    print("1. direction stability (cosine between disjoint halves of the contrastive pairs)")
    rows = []
    for n in (16, 40, None):
        c = privacy_sets(model, fit_people, n=n, pgd=None)
        plus = capture(model, c.refusal, [5, 6, 7], batch_size=48)
        minus = capture(model, c.recall, [5, 6, 7], batch_size=48)
        for l in (5, 6, 7):
            rows.append({"pairs": len(c.refusal), "layer": l, **half_split_cosines(plus[l], minus[l])})
    print(pd.DataFrame(rows).round(3).to_string(index=False))

    layers = (5, 6, 7)
    fit_cfg = demo.fit_config(layers)
    fit = fit_eraser(model, bench, fit_cfg)
    sets, stand = rehearsal_items(bench, r, split)

    print("\n2. separation at the last prompt token: stand-in mean gate / q95 |gate| on validation retain people")
    _, val_retain = split.rehearsal(bench.retain(r), len(stand))
    fq = capture(model, question_samples(stand, "f"), list(layers), batch_size=48)
    rq = capture(model, question_samples(val_retain, "r"), list(layers), batch_size=48)
    rows = []
    for l in layers:
        retain = fit.fitter.retain[l]
        forget = SecondMoment(model.hidden_size)
        forget.update(fq[l])
        scale = float(torch.trace(retain.gram) / retain.count / model.hidden_size)
        for rho, rw, ridge in itertools.product((0.3, 0.8, 0.97), (0.0, 40.0, 160.0), (1e-3, 1e-1, 10.0)):
            space = fit.fitter.null_space(l, FixedRatio(rho))
            w = solve_map(forget.gram, forget.total, space, ridge * scale * forget.count, retain_gram=retain.gram,
                          retain_weight=rw * forget.count / retain.count)[:, 0].float()
            f, g = fq[l] @ w, (rq[l] @ w).abs()
            rows.append({"layer": l, "rho": rho, "retain_weight": rw, "ridge_rel": ridge,
                         "separation": float(f.mean() / g.quantile(0.95))})
    sep = pd.DataFrame(rows)
    print(f"best separation over {len(sep)} settings: {sep.separation.max():.3f} "
          f"(median {sep.separation.median():.3f}); > 1 would be needed for a margin")
    print(sep.sort_values("separation", ascending=False).head(5).round(3).to_string(index=False))

    print(f"\n3. candidates at layer {args.layer} (rehearsal leakage / validation recall, percent)")
    paper_cfg = replace(fit_cfg, layers=(args.layer,), rank_policy=FixedRatio(0.3), retain_weight=0.0,
                        answer_weight=0.0, positions=None)
    paper = fit_eraser(model, bench, paper_cfg, contrast=fit.contrast)
    candidates = {
        "paper's map (ratio 0.3, prompt)": (refit_forget(model, paper, stand, paper_cfg), 0.0),
        "demo map": (refit_forget(model, fit, stand, fit_cfg), 0.0),
        "demo map, threshold 0.1": (refit_forget(model, fit, stand, fit_cfg), 0.1),
        "demo map, threshold 0.2": (refit_forget(model, fit, stand, fit_cfg), 0.2),
        "demo map, ratio 0.8": (refit_forget(model, fit, stand, replace(fit_cfg, rank_policy=FixedRatio(0.8))), 0.0),
        "demo map, retain weight 200": (refit_forget(model, fit, stand, replace(fit_cfg, retain_weight=200.0)), 0.0),
        "demo map, positions prompt": (refit_forget(model, fit, stand, fit_cfg).with_options(positions="prompt"), 0.0),
    }
    rows = []
    for name, (eraser, t) in candidates.items():
        for lam in lams:
            row = score(model, sets, eraser.with_options(layers=[args.layer], lam=lam, threshold=t), 48)
            rows.append({"candidate": name, "lam": lam, **row})
            if row["stand-ins"] == 0.0:
                break
    grid = pd.DataFrame(rows)
    best = []
    for name, g in grid.groupby("candidate", sort=False):
        fluent = g[g.stand_in_repetition <= 0.25]
        ok = fluent[fluent["stand-ins"] <= 0.05]
        strict = ok.sort_values("recall", ascending=False).iloc[0] if len(ok) else None
        balanced = (fluent.assign(b=fluent.recall - fluent["stand-ins"]).sort_values("b", ascending=False).iloc[0]
                    if len(fluent) else None)

        def fmt(row):
            return "none" if row is None else (f"lambda {row.lam:g}: {100 * row['stand-ins']:.1f} / "
                                               f"{100 * row.recall:.1f}")

        best.append({"candidate": name, "fluent and <= 5% leakage: best recall": fmt(strict),
                     "balanced point (max recall - leakage, fluent)": fmt(balanced)})
    print(grid.round(3).to_string(index=False))
    print("\nrehearsal leakage / validation recall (percent); fluent = stand-in repetition <= 25%:")
    print(pd.DataFrame(best).to_markdown(index=False))
    print("\n4. a broader retain basis: the demo map with image questions about never-seen faces (the synthetic "
          "benchmark's Unknown_Set, 5 question texts each) added to the retain statistics, layer "
          f"{args.layer}")
    unknown = bench.extra("Unknown_Set")
    texts = sorted({q.question for p in fit_people[:3] for q in p.generation if q.modality == "image"})
    broad = [Sample(t, row.image["bytes"]) for row in unknown.itertuples() for t in texts]
    wide = copy.deepcopy(fit)
    add_samples(wide.fitter, model, "retain", broad, batch_size=48)
    rows = []
    for name, result in (("fit people only", fit), (f"+ {len(broad)} never-seen-face rows", wide)):
        eraser = refit_forget(model, result, stand, fit_cfg)
        for mode in ("all", "prompt"):
            for lam in (4.0, 8.0, 16.0):
                rows.append({"basis": name, "positions": mode, "lam": lam,
                             **score(model, sets, eraser.with_options(layers=[args.layer], lam=lam, positions=mode),
                                     48)})
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
