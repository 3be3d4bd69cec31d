"""``mllmeraser``: scripted runs. ``mllmeraser --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from dataclasses import replace


def _quiet() -> None:
    # Hub access stays as the user set it (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE); the Makefile sets
    # offline mode for its own targets.
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()


def _threads(n: int | None) -> None:
    """Torch threads from ``--threads``; otherwise torch's own choice, which follows OMP_NUM_THREADS."""
    if n is not None:
        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}.")
        import torch

        torch.set_num_threads(n)


DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def _model_parent() -> argparse.ArgumentParser:
    """The options of every command that loads a model."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--model", default="default",
                        help="'default', 'tiny-<family>', a checkpoint directory or a hub id")
    parent.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="weights dtype (default: the checkpoint's; bf16 on GPUs is usual)")
    parent.add_argument("--device-map", default=None,
                        help="'auto', 'cuda', 'cuda:0', 'cpu' ... (passed to from_pretrained)")
    parent.add_argument("--remote", default=None, choices=["ndif", "local"],
                        help="run traces through nnsight's remote execution (NDIF), or 'local' to test "
                             "serialisation")
    parent.add_argument("--batch-size", type=int, default=16, help="inputs per forward/generate batch")
    parent.add_argument("--image-backend", default=None, choices=["pil", "torchvision"],
                        help="the image processor's backend for a checkpoint (default: transformers' choice); "
                             "PGD for LLaVA-NeXT and Idefics3 needs 'pil'")
    return parent


def _load(args: argparse.Namespace):
    from toolkit.models.loading import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    remote = {"ndif": True, "local": "local", None: False}[args.remote]
    dtype = DTYPES[args.dtype] if args.dtype else None
    return load_model(args.model, dtype=dtype, device_map=args.device_map, remote=remote,
                      image_backend=args.image_backend)


def cmd_make_benchmark(args: argparse.Namespace) -> int:
    from toolkit.data.synthetic import SyntheticConfig, write_benchmark

    out = write_benchmark(args.out, SyntheticConfig(seed=args.seed))
    print(f"wrote the synthetic benchmark to {out}")
    return 0


def cmd_train_vanilla(args: argparse.Namespace) -> int:
    from experiments.train import recipe, train_vanilla

    overrides = {k: v for k, v in (("steps", args.steps), ("threads", args.threads),
                                   ("privacy_rule", args.privacy_rule),
                                   ("privacy_repeats", args.privacy_repeats),
                                   ("public_privacy_repeats", args.public_privacy_repeats),
                                   ("image_question_variants", args.image_question_variants),
                                   ("harmful_repeats", args.harmful_repeats),
                                   ("compute_dtype", args.compute_dtype),
                                   ("answer_logits_only", args.answer_logits_only)) if v is not None}
    cfg = recipe(args.family, seed=args.seed, **overrides)
    from toolkit.models.default import DEFAULTS

    out = args.out or next(str(path) for path, family in DEFAULTS.values() if family == args.family)
    info = train_vanilla(out, cfg)
    print(json.dumps(info, indent=1))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Load a model, capture a layer, steer it, generate: what the README's quickstart does."""
    from toolkit import tracing
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.models.loading import Sample

    model = _load(args)
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
    # h arrives on the layer's device in float32: move the vector there once per call.
    steer = tracing.Steer(layer, lambda h: -2.0 * (h @ direction.to(h.device))[:, None] * direction.to(h.device),
                          "prompt")
    with tracing.steering(model, [steer]):
        steered = tracing.generate(model, [sample])[0]
    again = tracing.generate(model, [sample])[0]
    print(f"answer:                         {plain}")
    print(f"steered (own direction removed twice over at layer {layer}): {steered}")
    print(f"after the steering block:       {again}  (identical to the first: {again == plain})")
    return 0


def _layers(text: str) -> tuple[int, ...]:
    """``"5"``, ``"4,5,6"``, ``"3-6"`` or ``"-1"``."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)-(\d+)\s*", part)
        out.extend(range(int(m[1]), int(m[2]) + 1) if m else [int(part)])
    return tuple(out)


def _bench_path(arg: str | None) -> Path:
    from toolkit.data.synthetic import default_benchmark

    return Path(arg) if arg else default_benchmark()


def _gate_options(p: argparse.ArgumentParser) -> None:
    from toolkit.gates import GATE_KINDS, READS

    p.add_argument("--gate", default="linear", choices=list(GATE_KINDS),
                   help="linear = the paper's null-space map; " + ", ".join(k for k in GATE_KINDS if k != "linear")
                        + " = membership gates calibrated on validation people")
    p.add_argument("--gate-reads", default="last+mean", choices=list(READS),
                   help="what a membership gate reads (toolkit.reads): the last prompt token, the prompt's mean, the "
                        "image tokens pooled (image-max / image-mean; keyed to the person, not the wording)")
    p.add_argument("--latch", action="store_true",
                   help="membership gates: once the gate fires for a row, steer every token generated after it")
    p.add_argument("--wrap", type=int, default=0,
                   help="fit-pool wrappers per question added to the gate's rows and calibration (0: none)")
    p.add_argument("--gate-fpr", type=float, default=0.05,
                   help="membership gates: share of validation people's questions the gate may fire on")
    p.add_argument("--gate-softness", type=float, default=0.0, help="> 0: a sigmoid gate around the threshold")
    p.add_argument("--edit", default="add", choices=["add", "rotate"],
                   help="add = h + lam g d (the paper); rotate = the same, norm-preserving")


def _select_options(p: argparse.ArgumentParser) -> None:
    """The rehearsal's choices (``demo`` and ``erase``); defaults from :class:`toolkit.erase.EraseConfig`."""
    from toolkit.erase import EraseConfig

    base = EraseConfig().select
    p.add_argument("--select-rule", default="leakage", choices=["leakage", "reward"],
                   help="how the rehearsal chooses: the leakage rule (docs: method) or the highest ASRU reward")
    p.add_argument("--gates", default=None,
                   help=f"gate kinds the rehearsal chooses among (default {','.join(base.gates)}; linear = the "
                        "paper's map alone)")
    p.add_argument("--gate-fprs", default=None,
                   help=f"target false-positive rates screened (default {','.join(map(str, base.gate_fprs))})")
    p.add_argument("--reads", default=None,
                   help=f"what membership gates may read, screened (default {','.join(base.gate_reads or ())}; "
                        "toolkit.reads)")
    p.add_argument("--latch", default="choose", choices=["choose", "on", "off"],
                   help="hold a membership gate's decision through generation: chosen on the rehearsal, or forced")
    p.add_argument("--wrap", type=int, default=None,
                   help=f"fit-pool wrappers per question in the gate rows, calibration and rehearsal "
                        f"(default {base.wrap}; 0: the benchmark's phrasings only)")
    p.add_argument("--screen-top", type=int, default=None,
                   help=f"screened gates tried in the generation grid, the best of each read (default "
                        f"{base.screen_top})")
    p.add_argument("--screen-fp", default=None, choices=["people", "questions"],
                   help=f"what the gate screening charges false fires by (default {base.screen_fp})")


def _select_config(args: argparse.Namespace):
    from toolkit.erase import EraseConfig
    from toolkit.selection import SelectConfig

    from toolkit.reads import parse_reads

    base = EraseConfig().select
    reads = tuple(r.strip() for r in args.reads.split(",")) if args.reads else base.gate_reads
    for r in reads or ():
        parse_reads(r)
    latch = {"choose": base.latch, "on": (True,), "off": (False,)}[args.latch]
    return replace(base, rule=args.select_rule, gates=_kinds(args.gates) if args.gates else base.gates,
                   gate_fprs=_floats(args.gate_fprs) if args.gate_fprs else base.gate_fprs, gate_reads=reads,
                   latch=latch, wrap=base.wrap if args.wrap is None else args.wrap,
                   screen_top=base.screen_top if args.screen_top is None else args.screen_top,
                   screen_fp=args.screen_fp or base.screen_fp)


def _people(args: argparse.Namespace):
    from toolkit.data.splits import PeopleSplit

    if getattr(args, "all_people", False):
        return None
    return PeopleSplit(seed=args.people_seed, fit=args.fit_share, validation=args.validation_share)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _kinds(text: str) -> tuple[str, ...]:
    from toolkit.gates import GATE_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in GATE_KINDS]
    if bad or not kinds:
        raise ValueError(f"Unknown gate kind(s) {bad or [text]}: use {', '.join(GATE_KINDS)} (comma-separated).")
    return kinds


BUDGET_HELP = ("retain questions the fit reads: a number, or 'all' (default: EraseConfig's, read off the measured "
               "curve; docs: results)")


def _budget(value: str) -> int | None | str:
    """``--retain-budget``: a positive number of questions, or ``all``."""
    if value in ("all", "default"):
        return None if value == "all" else value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--retain-budget takes a number of questions or 'all', got {value!r}.")
    if n < 1:
        raise argparse.ArgumentTypeError(f"--retain-budget must be at least 1, got {n}.")
    return n


def _budget_option(args: argparse.Namespace) -> dict:
    return {} if args.retain_budget == "default" else {"retain_budget": args.retain_budget}


def cmd_fit(args: argparse.Namespace) -> int:
    from toolkit.adversarial import PGDConfig
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.fit import FitConfig, fit_eraser
    from toolkit.nullspace import parse_rank_policy

    model = _load(args)
    cfg = FitConfig(layers=_layers(args.layers), forget_ratio=args.forget, recipe=args.recipe, variant=args.variant,
                    rank_policy=parse_rank_policy(args.rank), gamma=args.gamma, lam=args.lam,
                    retain_weight=args.retain_weight, answer_weight=args.answer_weight,
                    positions=args.positions, include_real=not args.hold_out_real,
                    n_contrast=args.n_contrast or None, pgd_limit=args.pgd_limit or None,
                    pgd=PGDConfig(eps=args.eps, steps=args.pgd_steps) if args.pgd_steps > 0 else None,
                    batch_size=args.batch_size, people=_people(args), gate=args.gate, gate_reads=args.gate_reads,
                    gate_fpr=args.gate_fpr, gate_softness=args.gate_softness, edit=args.edit,
                    latch=args.latch, wrap=args.wrap, retain_budget=args.retain_budget,
                    gate_rows=bool(args.select and any(k != "linear" for k in _kinds(args.gates or args.gate))))
    bench = MLLMUBench(_bench_path(args.bench))
    result = fit_eraser(model, bench, cfg, progress=True)
    eraser = result.eraser.with_options(threshold=args.threshold)
    if args.select:
        from toolkit.selection import SelectConfig, select_setting

        select = SelectConfig(layers=cfg.layers, lams=_floats(args.lams), thresholds=_floats(args.thresholds),
                              positions=tuple(None if p == "own" else p for p in args.select_positions.split(",")),
                              leak_max=args.leak_max, rule=args.select_rule, batch_size=args.batch_size,
                              gates=_kinds(args.gates or args.gate),
                              gate_fprs=_floats(args.gate_fprs) if args.gate_fprs else (args.gate_fpr,))
        eraser, sel = select_setting(model, result, bench, cfg, select, progress=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sel.grid.to_csv(out.with_suffix(".selection.csv"), index=False)
        print(sel.grid.round(3).to_string(index=False))
        print(f"chosen on the rehearsal (validation people {len(sel.validation_people)}, stand-ins "
              f"{len(sel.stand_ins)}): gate {sel.gate}, layer {sel.layer}, lambda {sel.lam}, threshold "
              f"{sel.threshold}, positions {sel.positions}; {sel.rule}")
        if sel.screening is not None:
            sel.screening.to_csv(out.with_suffix(".screening.csv"), index=False)
            print(sel.screening.round(3).to_string(index=False))
    path = eraser.save(args.out)
    print(json.dumps({k: v for k, v in result.report.items() if k not in ("fit_people", "forget_people")},
                     indent=1, default=str))
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from toolkit import tracing
    from toolkit.eraser import Eraser
    from toolkit.models.loading import Sample

    model = _load(args)
    sample = Sample(args.prompt, args.image)
    steers = Eraser.load(args.eraser, model) if args.eraser else None
    if steers is not None and (args.lam is not None or args.positions):
        steers = steers.with_options(lam=args.lam, positions=args.positions)
    print(tracing.generate(model, [sample], steers=steers, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size)[0])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    from toolkit.erase import EraseConfig

    cfg = EraseConfig(forget_ratio=args.forget, people=_people(args), in_fit_people=args.in_fit_people,
                      select=_select_config(args), **_budget_option(args))
    info = run_demo(args.out, cfg, model=_load(args), bench_root=args.bench)
    import pandas as pd

    print()
    print(f"MLLMEraser with a {info['gate']} gate at layer {info['layer']} (reading {info.get('gate_reads', 'last')}"
          f"{', latched' if info.get('latch') else ''}), lambda {info['lam']}, threshold "
          f"{info['threshold']}, positions "
          f"{info['positions']}; direction-only "
          f"lambda {info['direction_only_lam']}. Percent; leak / recall = the fact appears in the answer; retain_* "
          "and real_* are evaluation people (never in the fit or the selection), in_fit_* are fit people.")
    print(pd.DataFrame(info["headline"]).set_index("method").T.to_string())
    print(f"\nwrote {args.out}/report.md, metrics.json, results.csv and plots ({info['seconds']} s)")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    """The whole job on a forget list (or an MLLMU-Bench folder): :func:`toolkit.erase.erase`."""
    import pandas as pd

    from dataclasses import replace

    from toolkit.erase import EraseConfig, erase

    people = _people(args)
    if people is None:
        raise ValueError("erase chooses its settings on validation people: --all-people leaves none; drop it.")
    cfg = EraseConfig(forget_ratio=args.ratio, people=people, in_fit_people=args.in_fit_people,
                      select=replace(_select_config(args), batch_size=args.batch_size),
                      layers=_layers(args.layers) if args.layers else None, batch_size=args.batch_size,
                      **_budget_option(args))
    model = _load(args)
    res = erase(model, args.forget, args.retain, real=args.real, config=cfg, out=args.out, progress=True)
    info = res.info
    print()
    print(f"chosen on the rehearsal: a {info['gate']} gate at layer {info['layer']} (reading "
          f"{info.get('gate_reads', 'last')}{', latched' if info.get('latch') else ''}), lambda {info['lam']}, "
          f"threshold {info['threshold']}, positions {info['positions']}. Percent; leak / recall = the fact appears "
          "in the answer; retain_* and real_* are evaluation people (never in the fit or the selection), "
          "in_fit_* are fit people.")
    print(pd.DataFrame(res.table).set_index("method").T.to_string())
    if info.get("warning"):
        print(f"\nwarning: {info['warning']}.")
    print(f"\nwrote {args.out}/eraser.safetensors, report.md, metrics.json and results.csv ({info['seconds']} s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.splits import PeopleSplit
    from toolkit.eraser import Eraser
    from toolkit.evaluate import benchmark_items, run_items, summarize

    model = _load(args)
    bench = MLLMUBench(_bench_path(args.bench))
    steers = Eraser.load(args.eraser, model) if args.eraser else None
    people = _people(args)
    fitted = (steers.settings.get("people", "absent") if steers is not None else "absent")
    if people is not None and isinstance(fitted, dict):
        people = PeopleSplit(**fitted)  # the split the eraser was fitted with: its evaluation people
    elif fitted is None:
        people = None  # fitted on every retain person: only in-fit figures exist
    items = benchmark_items(bench, args.forget, people=people, in_fit_people=args.in_fit_people)
    if people is None:
        print("note: every retain and real person is evaluated; for an eraser fitted on all of them these are "
              "in-fit figures", file=sys.stderr)
    df = run_items(model, items, steers=steers, progress=True, label="evaluate", batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    summary = summarize(df)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "metrics.json").write_text(summary.to_json(orient="records", indent=1))
    with pd.option_context("display.width", 200):
        print(summary.round(3).to_string(index=False))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from probes.report import probe_report

    from toolkit.adversarial import PGDConfig
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.fit import FitConfig

    model = _load(args)
    layers = _layers(args.layers) if args.layers else tuple(range(model.num_layers))
    cfg = FitConfig(layers=layers, forget_ratio=args.forget, n_contrast=args.n_contrast or None,
                    pgd=PGDConfig(steps=args.pgd_steps) if args.pgd_steps else None, batch_size=args.batch_size)
    report = probe_report(model, MLLMUBench(_bench_path(args.bench)), forget_ratio=args.forget, layers=layers,
                          fit_config=cfg, progress=True)
    out = report.save(args.out)
    print(report.direction_separability.round(3).to_string(index=False))
    print(report.stability.round(3).to_string(index=False))
    print(report.window.drop(columns=["ok_lams"]).to_string(index=False))
    print(f"recommended (layer, lambda): {report.recommended}")
    print(f"wrote the probe report to {out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """Forget leakage under every attack (and recall on control people), for a model with or without an eraser."""
    import pandas as pd

    from toolkit.attacks import ATTACKS, AttackConfig, run_attacks
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.eraser import Eraser

    model = _load(args)
    bench = MLLMUBench(_bench_path(args.bench))
    eraser = Eraser.load(args.eraser, model) if args.eraser else None
    if eraser is not None and args.positions:
        eraser = eraser.with_options(positions=args.positions)
    attacks = tuple(a.strip() for a in args.attacks.split(",")) if args.attacks else ATTACKS
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attacks {unknown}; choose from {', '.join(ATTACKS)}.")
    control = bench.real() if args.control == "real" else bench.retain(args.forget)[: int(args.control)]
    table = run_attacks(model, bench.forget(args.forget), control, steers=eraser, eraser=eraser, attacks=attacks,
                        config=AttackConfig(batch_size=args.batch_size), label=args.eraser or "no eraser")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "attacks.csv", index=False)
    with pd.option_context("display.width", 200):
        print(table.pivot_table(index="attack", columns="split", values="rate", sort=False).to_string())
    print(f"wrote {out}/attacks.csv (rate: percent of answers containing the fact)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from toolkit.baselines import BaselineConfig, qa_pairs, unlearn
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.fit import FitConfig, fit_people

    model = _load(args)
    bench = MLLMUBench(_bench_path(args.bench))
    # Train on the fit people only, as the eraser does: evaluation people stay unseen by every method.
    retain = fit_people(bench, FitConfig(forget_ratio=args.forget, people=_people(args)), real=False)
    if args.name == "ASRU":
        from toolkit.baselines import ASRUConfig, GRPOConfig, RedirectConfig, asru
        from toolkit.contrastive import privacy_sets
        from toolkit.data.boundary import boundary_questions
        from toolkit.direction import erasure_direction

        layer = model.num_layers // 2
        contrast = privacy_sets(model, retain, n=None, pgd=None)
        direction = erasure_direction(model, contrast.refusal, contrast.recall, [layer]).vectors[layer]
        config = ASRUConfig(stages=args.stages, grpo=GRPOConfig(steps=args.grpo_steps),
                            redirect=RedirectConfig(forget_scale=args.forget_scale))
        res = asru(model, bench.forget(args.forget), retain, boundary_questions(bench.forget(args.forget), retain),
                   direction, config, progress=True)
        if res.stage2 is not None:
            print(f"GRPO mean rollout reward per step: {[round(r, 3) for r in res.stage2.rewards]}")
    else:
        cfg = BaselineConfig(method=args.name, epochs=args.epochs, lr=args.lr)
        res = unlearn(model, qa_pairs(bench.forget(args.forget)), qa_pairs(retain), cfg, progress=True)
    res.model.module.save_pretrained(args.out)
    res.model.processor.save_pretrained(args.out)
    print(f"{args.name}: trained in {res.seconds:.1f} s; unlearned copy written to {args.out} "
          "(the vanilla model is untouched)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from experiments.compare import run_compare

    table = run_compare(args.out, model=_load(args), demo_metrics=args.demo)
    print(table.set_index("method").T.to_string())
    print(f"\nwrote {args.out}/table.md and summary.csv")
    return 0


def cmd_ablations(args: argparse.Namespace) -> int:
    from experiments.ablations import STUDIES, AblationConfig, claims_table, run_ablations, write_results

    studies = tuple(s for s in args.studies.split(",") if s) if args.studies else STUDIES
    cfg = AblationConfig(forget_ratio=args.forget, seeds=tuple(int(s) for s in args.seeds.split(",")),
                         studies=studies, lams=_floats(args.lams) if args.lams else AblationConfig.lams,
                         targets=tuple(x / 100 for x in _floats(args.targets)) if args.targets else AblationConfig.targets,
                         pgd_objective=args.pgd_objective)
    from toolkit.data.mllmu import MLLMUBench

    result = run_ablations(_load(args), MLLMUBench(args.bench) if args.bench else None, cfg, progress=True)
    paths = write_results(args.out, result, cfg.targets)
    import pandas as pd

    with pd.option_context("display.max_colwidth", 300, "display.width", 300):
        for target, claims in claims_table(result, cfg.targets).groupby("target", sort=False):
            print(f"\nAt matched forgetting: rehearsal leakage {target:g}%")
            print(claims.drop(columns="target").to_string(index=False))
    print(f"\nwrote {', '.join(p.name for p in paths.values())} under {args.out} ({result['seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mllmeraser`` argument parser (the CLI reference in the docs is generated from it)."""
    ap = argparse.ArgumentParser(prog="mllmeraser", description="Test-time unlearning for multimodal LLMs by "
                                 "activation steering (MLLMEraser). Commands in the order a newcomer meets them.")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's, which follows OMP_NUM_THREADS)")
    ap.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    sub = ap.add_subparsers(dest="command", required=True)
    model_opts = _model_parent()

    people = argparse.ArgumentParser(add_help=False)
    people.add_argument("--people-seed", type=int, default=0, help="seed of the fit / validation / evaluation split")
    people.add_argument("--fit-share", type=float, default=0.45, help="share of retain and real people in the fit")
    people.add_argument("--validation-share", type=float, default=0.3,
                        help="share that chooses settings (the rest is evaluation)")
    people.add_argument("--all-people", action="store_true",
                        help="the reference: every retain person in the fit (utility is then in-fit only)")

    p = sub.add_parser("quickstart", help="load, capture, steer, generate", parents=[model_opts])
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("demo", parents=[model_opts, people],
                       help="the main job on an embedded default: fit, choose, evaluate, compare")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--in-fit-people", type=int, default=20, help="fit people evaluated beside the held-out ones")
    p.add_argument("--retain-budget", type=_budget, default="default", help=BUDGET_HELP)
    _select_options(p)
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one the default learnt)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("erase", parents=[model_opts, people],
                       help="the whole job on your people: fit, choose on the rehearsal, report, write the eraser")
    p.add_argument("--forget", required=True,
                   help="forget list (.jsonl / .csv, or a folder of them), or an MLLMU-Bench folder (then no --retain)")
    p.add_argument("--retain", default=None, help="retain list: the people whose knowledge must stay (same format)")
    p.add_argument("--real", default=None, help="optional second group of kept people, reported apart")
    p.add_argument("--ratio", type=int, default=10, choices=[5, 10, 15],
                   help="an MLLMU-Bench folder's forget split (forget_5 / 10 / 15)")
    p.add_argument("--layers", default=None, help="layers to fit, e.g. 3-7 (default: all; the rehearsal chooses "
                   "among the upper half)")
    _select_options(p)
    p.add_argument("--in-fit-people", type=int, default=20, help="fit people evaluated beside the held-out ones")
    p.add_argument("--retain-budget", type=_budget, default="default", help=BUDGET_HELP)
    p.add_argument("--out", default="results/erase")
    p.set_defaults(fn=cmd_erase)

    p = sub.add_parser("evaluate", parents=[model_opts, people],
                       help="MLLMU-Bench metrics for a model, optionally with an eraser")
    p.add_argument("--bench", default=None)
    p.add_argument("--eraser", default=None)
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--in-fit-people", type=int, default=0, help="also evaluate up to N fit people (labelled)")
    p.add_argument("--out", default="results/evaluate")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("probe", parents=[model_opts],
                       help="all probes before erasure: separability, null space, steering grid")
    p.add_argument("--bench", default=None)
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--layers", default=None)
    p.add_argument("--n-contrast", type=int, default=0, help="contrastive questions (0: all of the fit people's)")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--out", default="results/probe")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("attack", parents=[model_opts],
                       help="forget leakage under re-asking, jailbreaks, prefill, relearning, long generation, PGD")
    p.add_argument("--bench", default=None)
    p.add_argument("--eraser", default=None, help="an eraser file (default: the model alone)")
    p.add_argument("--positions", default=None, choices=["prompt", "last", "all"])
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--control", default="real",
                   help="control people: 'real' (the Retain_Set) or N (the first N retain people)")
    p.add_argument("--attacks", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--out", default="results/attack")
    p.set_defaults(fn=cmd_attack)

    p = sub.add_parser("generate", help="answer one prompt, optionally with an eraser", parents=[model_opts])
    p.add_argument("--eraser", default=None)
    p.add_argument("--image", default=None)
    p.add_argument("--prompt", required=True)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--positions", default=None, choices=["prompt", "last", "all"])
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("fit", help="fit an eraser with every setting by hand; its defaults are the paper's reference "
                       "map (erase and demo use toolkit.erase.EraseConfig); --select: the rehearsal chooses layer, "
                       "lambda, threshold", parents=[model_opts, people])
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one)")
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--layers", default="6", help="e.g. 6 or 4,5 or 3-6 (block outputs, 0-based)")
    p.add_argument("--recipe", default="privacy", choices=["privacy", "safety"])
    p.add_argument("--variant", default="multimodal", choices=["multimodal", "image_only", "text_only"])
    p.add_argument("--rank", default="ratio:0.3", help="ratio:RHO | energy:TAU | rtol:RTOL")
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--retain-budget", type=_budget, default=None,
                   help="retain questions the fit reads (whole people, seeded; default: all)")
    p.add_argument("--retain-weight", type=float, default=0.0,
                   help="retain rows (target 0) in the least squares, per row relative to forget rows; 0 = reference")
    p.add_argument("--answer-weight", type=float, default=0.0,
                   help="also fit teacher-forced answer tokens (weight per row); 0 = reference")
    p.add_argument("--positions", default=None, choices=["prompt", "last", "all"],
                   help="default: all with --answer-weight > 0, else prompt")
    p.add_argument("--hold-out-real", action="store_true", help="keep the real-person set out of the null space")
    p.add_argument("--eps", type=float, default=16 / 255)
    p.add_argument("--pgd-steps", type=int, default=30, help="0 skips PGD (no adversarial images)")
    p.add_argument("--pgd-limit", type=int, default=16, help="attack at most N refused questions (0: all)")
    p.add_argument("--n-contrast", type=int, default=0,
                   help="contrastive questions (0: every image question of every fit person)")
    p.add_argument("--threshold", type=float, default=0.0, help="gate dead zone in [0, 1); 0 = the paper's map")
    _gate_options(p)
    p.add_argument("--gates", default=None,
                   help="--select: gate kinds to choose among, e.g. prototype,logistic,linear (default: --gate)")
    p.add_argument("--gate-fprs", default=None,
                   help="--select: target false-positive rates screened for membership gates (default: --gate-fpr)")
    p.add_argument("--select", action="store_true",
                   help="choose layer (among --layers), lambda and threshold on the rehearsal (validation people)")
    p.add_argument("--lams", default="2,4,6,8,12,16", help="lambdas tried by --select")
    p.add_argument("--thresholds", default="0,0.2", help="gate thresholds tried by --select")
    p.add_argument("--select-positions", default="own,prompt",
                   help="position modes tried by --select (own = the fit's: all with answer rows)")
    p.add_argument("--leak-max", type=float, default=0.05,
                   help="--select: highest recall among settings whose rehearsal leakage is at most this")
    p.add_argument("--select-rule", default="leakage", choices=["leakage", "reward"],
                   help="--select: the leakage rule (docs/results.md) or the highest ASRU reward on the rehearsal")
    p.add_argument("--out", default="results/eraser.safetensors")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("baseline", parents=[model_opts, people],
                       help="a training-based unlearning baseline: GA, GA_Diff, KL_Min, NPO, ASRU (both stages)")
    p.add_argument("name", choices=["GA", "GA_Diff", "KL_Min", "NPO", "ASRU"])
    p.add_argument("--stages", type=int, default=2, choices=[1, 2], help="ASRU: 1 = redirection only")
    p.add_argument("--grpo-steps", type=int, default=30, help="ASRU stage 2 steps")
    p.add_argument("--forget-scale", type=float, default=1.0,
                   help="ASRU stage 1: redirect forget states to h + s * (refusal - recall) (the reference's "
                        "--forget_scale; on the face-rule default 1 does not refuse, docs/results.md)")
    p.add_argument("--bench", default=None)
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_baseline)

    p = sub.add_parser("compare", parents=[model_opts],
                       help="MLLMEraser vs GA, GA_Diff, KL_Min, NPO, ASRU redirection (slow)")
    p.add_argument("--demo", default=None,
                   help="the demo run whose choice is compared (default: results/demo, run first if absent; "
                        "it must be of the same --model)")
    p.add_argument("--out", default="results/compare")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("ablations", parents=[model_opts],
                       help="the paper's ablations at matched forgetting on held-out people: direction, eps, layers, map, "
                            "gate, reference")
    p.add_argument("--out", default="results/ablations")
    p.add_argument("--forget", type=int, default=10, choices=[5, 10, 15])
    p.add_argument("--seeds", default="0,1,2", help="people seeds (who fits, who chooses, who is reported)")
    p.add_argument("--studies", default=None, help="comma-separated subset of direction,eps,layers,map,gate,reference")
    p.add_argument("--lams", default=None,
                   help="the search grid, strengths summed over the steered layers (default 0.5,1,2,...,64)")
    p.add_argument("--targets", default=None,
                   help="rehearsal leakage (percent) every variant is matched to (default 5,20)")
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one the default learnt)")
    p.add_argument("--pgd-objective", default="target", choices=["target", "avoid"],
                   help="PGD's aim: the true answer (the paper) or away from the refusal's first token")
    p.set_defaults(fn=cmd_ablations)

    p = sub.add_parser("make-benchmark", help="write the synthetic MLLMU-Bench-format benchmark")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_make_benchmark)

    p = sub.add_parser("train-vanilla", help="train the embedded default model (about 15 min on 2 cores)")
    p.add_argument("--family", default="llava", choices=["llava", "qwen2_5_vl"],
                   help="llava makes `default`, qwen2_5_vl makes `default-qwen`")
    p.add_argument("--out", default=None, help="default: toolkit/assets/default(-qwen)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default: the family's recipe (llava 1000, qwen2_5_vl 1040)")
    p.add_argument("--privacy-rule", default=None, choices=["instruction", "face"],
                   help="refuse privacy-instructed questions for everyone (instruction) or for "
                        "fictitious people only (face: real people are answered, so the image decides; both defaults)")
    p.add_argument("--privacy-repeats", type=int, default=None,
                   help="privacy-instructed questions per person, in multiples of the trained instructions")
    p.add_argument("--public-privacy-repeats", type=int, default=None,
                   help="the same for real (public) people under the face rule, whose questions are answered")
    p.add_argument("--image-question-variants", type=int, default=None,
                   help="training portraits per trained image question and phrasing")
    p.add_argument("--harmful-repeats", type=int, default=None,
                   help="times each trained harmful request is trained on (default: 6; default-qwen: 12)")
    p.add_argument("--compute-dtype", default=None, choices=["float32", "bfloat16"],
                   help="bfloat16: bf16 autocast, about 2x faster on a CPU with AVX512-BF16 (bench/train_step.py)")
    p.add_argument("--answer-logits-only", default=None, action=argparse.BooleanOptionalAction,
                   help="project the LM head only at answer positions: the same loss, a faster step "
                        "(bench/train_step.py; the recipe's choice unless given)")
    p.set_defaults(fn=cmd_train_vanilla)

    return ap


def main(argv: list[str] | None = None) -> int:
    _quiet()
    args = build_parser().parse_args(argv)
    try:
        _threads(args.threads)
        return args.fn(args)
    except KeyboardInterrupt:
        print("mllmeraser: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only on request
        if args.debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mllmeraser {args.command}: error: {message} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
