"""Batched capture throughput against batch-1 capture on the default model (goal >= 4x).

Also times the plain model (encode + forward, no nnsight, nothing saved) at both
batch sizes: its own batched / batch-1 ratio is the ceiling any capture code can
reach on this machine, so the script prints how much of it capture attains.

    .venv/bin/python bench/capture_throughput.py [--n 64] [--batch 32] [--reps 3]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved_medians, machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--reps", type=int, default=3)
args = ap.parse_args()
torch = quiet_torch()

from toolkit import tracing  # noqa: E402
from toolkit.data.mllmu import MLLMUBench  # noqa: E402
from toolkit.data.samples import question_samples  # noqa: E402
from toolkit.data.synthetic import default_benchmark  # noqa: E402
from toolkit.models.loading import load_model  # noqa: E402

model = load_model("default")
samples = [s for s in question_samples(MLLMUBench(default_benchmark()).retain(10), "r") if s.image is not None][: args.n]
layers = list(range(model.num_layers))


def plain_forward(batch_size: int) -> None:
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            model.module(**model.encode(samples[start:start + batch_size]))


med = interleaved_medians({
    "batched": lambda: tracing.capture(model, samples, layers, batch_size=args.batch),
    "batch-1": lambda: tracing.capture(model, samples, layers, batch_size=1),
    "plain batched": lambda: plain_forward(args.batch),
    "plain batch-1": lambda: plain_forward(1)}, args.reps, warmup=1)
print(f"machine: {machine()}; {len(samples)} image prompts, all {len(layers)} layers, {args.reps} reps (median)")
for k, v in med.items():
    print(f"  {k:13s} {v:7.2f} s  ({len(samples) / v:7.1f} samples/s)")
ratio, ceiling = med["batch-1"] / med["batched"], med["plain batch-1"] / med["plain batched"]
print(f"batched / batch-1 throughput: {ratio:.1f}x (goal >= 4x)")
print(f"plain model, batched / batch-1: {ceiling:.1f}x (the ceiling here); capture batched / plain batched: "
      f"{med['batched'] / med['plain batched']:.3f}")
