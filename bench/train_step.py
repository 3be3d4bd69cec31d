"""The default's training step in float32, under bf16 autocast (``TrainConfig.compute_dtype``) and under
bf16 with the LM head at answer positions only (``TrainConfig.answer_logits_only``; Qwen: 0.86x the
full-logits bf16 step at its recipe's mix on a 2-core AVX512-BF16 EPYC).

    .venv/bin/python bench/train_step.py [--reps 5] [--family llava]

One training step (forward, backward, AdamW) of the family's default architecture on the
same batches of 64 of its recipe's training examples (image and text-only batches, as the
trainer draws them), alternating the two compute dtypes, each on its own copy of the model.
Prints the medians, the bf16 / float32 ratio per batch kind and the ratio at the recipe's
image share. The ratio depends on the CPU: AVX512-BF16 (or AMX) runs bf16 matmuls natively
(``native bf16 yes``: LLaVA 0.58, Qwen 0.68 on a 2-core EPYC); without them they are emulated and bf16
is the slower one (``no``: Qwen 18.5 on a 2-core AVX2 EPYC). Answer-only logits skip the head and
its softmax at the 90-94% of positions that are prompt, image or padding (the loss is the same).
"""

import argparse
import copy
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import interleaved_medians, machine, quiet_torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--family", default="llava", choices=["llava", "qwen2_5_vl"])
args = ap.parse_args()
torch = quiet_torch()

from experiments.train import (build_default_architecture, build_processor, encode_training_batch,  # noqa: E402
                               native_bf16, recipe, recipe_examples, training_compute, training_loss)
from toolkit.models.adapters import adapter_for  # noqa: E402

cfg = recipe(args.family)
examples = recipe_examples(cfg)
processor = build_processor(examples, cfg.family)
torch.manual_seed(0)
base = build_default_architecture(processor, cfg).train()
adapter = adapter_for(base.config)
rng = random.Random(0)
pools = {"image": [e for e in examples if e.image is not None], "text": [e for e in examples if e.image is None]}
share = len(pools["image"]) / len(examples)


def stepper(dtype: str, batch, answer_logits_only: bool = False):
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with training_compute(dtype):
            loss = training_loss(model, batch, answer_logits_only)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    return step


print(f"{machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if native_bf16() else 'no'}; "
      f"{cfg.family} recipe, image share {share:.2f}")
medians = {}
for kind, pool in pools.items():
    batch = encode_training_batch(processor, rng.sample(pool, cfg.batch_size), adapter)
    steps = {d: stepper(d, batch) for d in ("float32", "bfloat16")}
    steps["answer"] = stepper("bfloat16", batch, answer_logits_only=True)
    med = interleaved_medians(steps, reps=args.reps)
    medians[kind] = med
    print(f"{kind:5s} batch {tuple(batch['input_ids'].shape)}: float32 {med['float32']:.3f} s, "
          f"bfloat16 {med['bfloat16']:.3f} s, ratio {med['bfloat16'] / med['float32']:.2f}; bfloat16 with "
          f"answer-only logits {med['answer']:.3f} s, ratio to full logits {med['answer'] / med['bfloat16']:.2f}")
mean = {d: share * medians["image"][d] + (1 - share) * medians["text"][d] for d in ("float32", "bfloat16", "answer")}
print(f"mean step at the recipe's image share: float32 {mean['float32']:.3f} s, bfloat16 {mean['bfloat16']:.3f} s, "
      f"ratio {mean['bfloat16'] / mean['float32']:.2f}; answer-only logits {mean['answer']:.3f} s, "
      f"ratio to full logits {mean['answer'] / mean['bfloat16']:.2f}")
