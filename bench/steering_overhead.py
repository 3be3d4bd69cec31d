"""Steered / unsteered generation time on the default model (goal <= 1.05).

    .venv/bin/python bench/steering_overhead.py [--reps 7] [--batch 16] [--tokens 24]

Both sides generate greedily through the toolkit (nnsight) on the same batch of
benchmark questions; the steered side applies a one-layer rank-one eraser at
every prompt position. Also prints the unsteered toolkit time against plain
``model.generate`` (what nnsight itself costs).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved_medians, machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--tokens", type=int, default=24)
args = ap.parse_args()
torch = quiet_torch()

from toolkit import tracing  # noqa: E402
from toolkit.data.mllmu import MLLMUBench  # noqa: E402
from toolkit.eraser import Eraser, EraserLayer  # noqa: E402
from toolkit.evaluate import items_from_profiles  # noqa: E402
from toolkit.data.synthetic import default_benchmark  # noqa: E402
from toolkit.models.loading import Sample, load_model  # noqa: E402

model = load_model("default")
items = [it for it in items_from_profiles(MLLMUBench(default_benchmark()).forget(10), "f", ("generation",))
         if it.modality == "image"][: args.batch]
samples = [Sample(it.prompt, it.image) for it in items]
g = torch.Generator().manual_seed(0)
eraser = Eraser((EraserLayer(5, torch.randn(model.hidden_size, 1, generator=g) * 1e-3,
                             torch.randn(1, model.hidden_size, generator=g)),), 1.0, "prompt", model.fingerprint())
enc = model.encode(samples)
kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, batch_size=args.batch)


def plain():
    with torch.no_grad():
        model.module.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                              pad_token_id=model.tokenizer.pad_token_id)


med = interleaved_medians({"unsteered": lambda: tracing.generate(model, samples, **kw),
                           "steered": lambda: tracing.generate(model, samples, steers=eraser, **kw),
                           "plain generate": plain}, args.reps)
print(f"machine: {machine()}; batch {args.batch}, {args.tokens} new tokens, {args.reps} reps (median)")
for k, v in med.items():
    print(f"  {k:15s} {v * 1e3:8.1f} ms")
print(f"steered / unsteered: {med['steered'] / med['unsteered']:.3f} (goal <= 1.05)")
print(f"toolkit unsteered / plain model.generate: {med['unsteered'] / med['plain generate']:.3f}")
