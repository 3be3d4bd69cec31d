"""``mllmeraser``: scripted runs. ``mllmeraser --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or min(2, os.cpu_count() or 1))


def cmd_make_benchmark(args: argparse.Namespace) -> int:
    from .data.synthetic import SyntheticConfig, write_benchmark

    out = write_benchmark(args.out, SyntheticConfig(seed=args.seed))
    print(f"wrote the synthetic benchmark to {out}")
    return 0


def cmd_train_vanilla(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train_vanilla

    cfg = TrainConfig(seed=args.seed, steps=args.steps, threads=args.threads or 2)
    info = train_vanilla(args.out, cfg)
    print(json.dumps(info, indent=1))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Load a model, capture a layer, steer it, generate: what the README's quickstart does."""
    import torch

    from . import tracing
    from .data.mllmu import MLLMUBench
    from .models.default import default_benchmark
    from .models.loading import Sample, load_model

    model = load_model(args.model)
    bench = MLLMUBench(default_benchmark())
    person = bench.forget(10)[0]
    q = next(g for g in person.generation if g.modality == "image")
    sample = Sample(q.question, person.image)
    print(f"model: {model}")
    print(f"question about {person.fields.get('name', person.id)}: {q.question}")
    layer = model.num_layers // 2
    acts = tracing.capture(model, [sample], [layer])
    print(f"captured layer {layer} at the last prompt token: shape {tuple(acts[layer].shape)}, "
          f"norm {acts[layer].norm():.2f}")
    plain = tracing.generate(model, [sample])[0]
    direction = acts[layer][0] / acts[layer][0].norm()
    steer = tracing.Steer(layer, lambda h: -2.0 * (h @ direction)[:, None] * direction, "prompt")
    with tracing.steering(model, [steer]):
        steered = tracing.generate(model, [sample])[0]
    again = tracing.generate(model, [sample])[0]
    print(f"answer:                         {plain}")
    print(f"steered (own direction removed twice over at layer {layer}): {steered}")
    print(f"after the steering block:       {again}  (identical to the first: {again == plain})")
    return 0


def main(argv: list[str] | None = None) -> int:
    _quiet()
    ap = argparse.ArgumentParser(prog="mllmeraser", description=__doc__)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-benchmark", help="write the synthetic MLLMU-Bench-format benchmark")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_make_benchmark)

    p = sub.add_parser("train-vanilla", help="train the embedded default model (about 15 min on 2 cores)")
    p.add_argument("--out", default="toolkit/assets/default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=800)
    p.set_defaults(fn=cmd_train_vanilla)

    p = sub.add_parser("quickstart", help="load, capture, steer, generate")
    p.add_argument("--model", default="default")
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("demo", help="the main job on the embedded default")
    p.add_argument("--model", default="default")
    p.set_defaults(fn=cmd_quickstart)

    args = ap.parse_args(argv)
    _threads(args.threads)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
