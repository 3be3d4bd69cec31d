"""Probe: would a per-token score, max-pooled over the prompt, recognise forget people named in text?

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/token_read_probe.py``).
Produces: docs/research-log.md, "Forgetting under attack: a gate keyed to the person" (the per-token read);
docs/limits.md.

The chosen gates read the image tokens for image questions (template-proof) but, for a text-only
question, a pool over its prompt tokens, which a template moves. This probe measures the read the gate
family does not have yet: a whitened prototype over single *token* states (forget people's text
questions, clean and under the fit pool, against fit-retain people's), the score of a prompt being the
max over its tokens after the first; the threshold at 2% of validation people's text prompts. Reported:
the share of forget people's text questions it fires on, clean and under the attack suite's templates
(measured only, chosen on nothing), and its false fires on evaluation people, per question and per person.

    .venv/bin/python studies/token_read_probe.py [--model default] [--layer 7]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from toolkit import tracing
from toolkit.attacks import attack_items
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.splits import PeopleSplit
from toolkit.data.synthetic import default_benchmark
from toolkit.data.wrappers import wrap_items
from toolkit.gates import fit_prototype
from toolkit.models.loading import Sample, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--forget", type=int, default=10)
    args = ap.parse_args()
    model, bench, split, layer = load_model(args.model), MLLMUBench(default_benchmark()), PeopleSplit(), args.layer

    def text_items(people, name, wrapped=True):
        items = [i for i in items_from_profiles(people, name, ("generation",)) if i.image is None]
        return items + (wrap_items(items, per_question=1, seed=5, split_suffix="") if wrapped else [])

    def tokens(texts):
        cap = tracing.capture(model, [Sample(t, None) for t in texts], [layer], "prompt")
        x, idx = cap[layer], cap.sample_index
        first = torch.ones(len(idx), dtype=torch.bool)
        first[1:] = idx[1:] != idx[:-1]  # each prompt's first token (a BOS or chat marker) is left out
        return x[~first], idx[~first]

    forget = bench.forget(args.forget)
    fit_people = split.people(bench.retain(args.forget), "fit")
    gate = fit_prototype(tokens([i.prompt for i in text_items(forget, "f")])[0],
                         tokens([i.prompt for i in text_items(fit_people, "r")])[0], whiten=True, max_retain=4096)

    def prompt_max(texts):
        x, idx = tokens(texts)
        return torch.full((len(texts),), -9.0).scatter_reduce(0, idx, gate.score(x), "amax")

    validation = text_items(split.people(bench.retain(args.forget), "validation"), "v")
    threshold = float(torch.quantile(prompt_max([i.prompt for i in validation]).double(), 0.98,
                                     interpolation="higher"))
    row = {"model": args.model, "layer": layer}
    for attack in ("clean", "roleplay", "hypothetical", "translate", "relearn"):
        probes = [p for p in attack_items(model, forget, attack, "f") if p.item.image is None and not p.formatted]
        row[attack] = round(100 * float((prompt_max([p.sample.text for p in probes]) > threshold).float().mean()), 1)
    evaluation = text_items(split.people(bench.retain(args.forget), "evaluation"), "e", wrapped=False)
    fired = pd.Series((prompt_max([i.prompt for i in evaluation]) > threshold).tolist(),
                      index=[i.person for i in evaluation])
    row["eval_questions_fired"] = round(100 * float(fired.mean()), 1)
    row["eval_people_fired"] = round(100 * float(fired.groupby(level=0).max().mean()), 1)
    print(pd.DataFrame([row]).to_string(index=False))


if __name__ == "__main__":
    main()
