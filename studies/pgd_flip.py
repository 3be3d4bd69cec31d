"""Does an adversarial image break the model's privacy refusal? PGD flip rate against epsilon, on one model.

A study, not part of the installed library (run from a clone: ``.venv/bin/python studies/pgd_flip.py``).
Produces: docs/results.md, "The embedded default `default` and its benchmark" (PGD flip rate); docs/research-log.md, "2026-12-04: How the face rule was reached".

For a model (`default` and `default-qwen`: the face rule; one trained with `--privacy-rule instruction`:
the instruction rule):

* which privacy-instructed image questions it refuses: about fictitious retain people (private: refused
  under both rules) and about real people (public: answered under the face rule, refused under the
  instruction rule), 2 trained instructions;
* PGD on the refused fictitious-people questions (target: the ground-truth answer; ``--objective avoid``:
  away from the clean refusal's first token) at each epsilon: the share that the attacked image turns
  from a refusal into an answer (`probes.pgd_sweep`).

    .venv/bin/python studies/pgd_flip.py --model default [--n 16] [--steps 20] [--eps 8,16,32] [--objective avoid]
"""

from __future__ import annotations

import argparse
import time

from probes.pgd_sweep import epsilon_sweep
from toolkit import metrics, tracing
from toolkit.contrastive import privacy_questions, refused_privacy_questions
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import PRIVACY_INSTRUCTIONS, default_benchmark
from toolkit.models.loading import load_model


def refusal_rate(model, profiles, instructions) -> float:
    samples, _, _ = privacy_questions(profiles, n=None, instructions=instructions)
    outs = tracing.generate(model, samples, max_new_tokens=16)
    return sum(metrics.is_refusal(o) for o in outs) / len(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", default="8,16,32")
    ap.add_argument("--objective", default="target", choices=["target", "avoid"],
                    help="target: the true answer (the paper); avoid: push away from the clean refusal's first token")
    args = ap.parse_args()
    start = time.time()
    model = load_model(args.model, dtype=args.dtype)
    bench = MLLMUBench(default_benchmark())
    instructions = PRIVACY_INSTRUCTIONS[:2]
    print(f"{args.model}: privacy-instructed image questions refused: fictitious retain people "
          f"{100 * refusal_rate(model, bench.retain(10)[:20], instructions):.1f}%, real people "
          f"{100 * refusal_rate(model, bench.real()[:20], instructions):.1f}%")
    refused, targets, _, asked = refused_privacy_questions(model, bench.retain(10), n=args.n,
                                                           instructions=instructions)
    print(f"PGD ({args.objective}) on {len(refused)} refused of {asked} asked ({args.steps} steps, step 2.5 eps / steps):")
    table = epsilon_sweep(model, refused, targets, [float(e) / 255 for e in args.eps.split(",")], steps=args.steps,
                          objective=args.objective)
    print(table[["eps_255", "success_rate", "n_refused_clean", "n_success", "loss_clean",
                 "loss_adversarial", "linf"]].to_string(index=False))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
