"""``mllmeraser``: scripted runs. ``mllmeraser --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
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
    parent.add_argument("--batch-size", type=int, default=None,
                        help="inputs per forward / generate batch (default: the command's configuration)")
    parent.add_argument("--image-backend", default=None, choices=["pil", "torchvision"],
                        help="the image processor's backend for a checkpoint (default: transformers' choice); "
                             "PGD for LLaVA-NeXT and Idefics3 needs 'pil'")
    return parent


def _load(args: argparse.Namespace):
    from toolkit.models.loading import load_model

    if args.batch_size is not None and args.batch_size < 1:
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


def _bench_path(arg: str | None) -> Path:
    from toolkit.data.synthetic import default_benchmark

    return Path(arg) if arg else default_benchmark()


def _batch(args: argparse.Namespace, default: int) -> int:
    """``--batch-size`` where given, else the configuration's."""
    return default if args.batch_size is None else args.batch_size


def _choices() -> dict:
    """The words a field accepts, where there is a fixed list (the library checks the rest)."""
    from toolkit.adversarial import OBJECTIVES
    from toolkit.eraser import EDITS
    from toolkit.gates import GATE_KINDS, READS
    from toolkit.steering import POSITIONS

    return {"gate": list(GATE_KINDS), "gate_reads": list(READS), "edit": list(EDITS), "positions": list(POSITIONS),
            "recipe": ["privacy", "safety"], "variant": ["multimodal", "image_only", "text_only"],
            "retain_positions": ["last", "prompt"], "rule": ["leakage", "reward"],
            "screen_fp": ["people", "questions"], "objective": list(OBJECTIVES), "forget_ratio": [5, 10, 15],
            "gate_pool": ["rows", "people"]}


# Flags whose names are not the field's (kept from earlier releases, or clashing between configs).
SELECT_FLAGS = {"rule": "--select-rule", "gate_reads": "--reads", "layers": "--select-layers",
                "positions": "--select-positions"}
PGD_FLAGS = {"steps": "--pgd-steps", "eps": "--eps"}
PEOPLE_FLAGS = {"seed": "--people-seed", "fit": "--fit-share", "validation": "--validation-share"}


def _fit_options(p: argparse.ArgumentParser, base, names, flags: dict | None = None) -> None:
    """``FitConfig`` fields ``names`` as flags (defaults shown from ``base``), PGD's steps and budget with them."""
    from toolkit.adversarial import PGDConfig
    from toolkit.config import FitConfig

    from experiments.flags import add_fields

    group = p.add_argument_group("the fit (toolkit.config.FitConfig)")
    add_fields(group, FitConfig, base, names, flags=flags, choices=_choices())
    add_fields(group, PGDConfig, base.pgd or PGDConfig(steps=0), ("steps", "eps"), flags=PGD_FLAGS)


def _fit_config(args: argparse.Namespace, base):
    """``base`` with the fit flags given (``--pgd-steps 0``: no PGD) and the people split."""
    from toolkit.adversarial import PGDConfig

    from experiments.flags import apply

    cfg = apply(args, base)
    pgd = apply(args, base.pgd or PGDConfig(steps=0))
    if pgd != (base.pgd or PGDConfig(steps=0)):
        if pgd.steps < 0:
            raise ValueError(f"--pgd-steps must be >= 0, got {pgd.steps}.")
        cfg = replace(cfg, pgd=pgd if pgd.steps > 0 else None)
    return replace(cfg, people=_people(args, cfg.people))


def _select_options(p: argparse.ArgumentParser, base, names=None) -> None:
    """The rehearsal's choices as flags (``toolkit.config.SelectConfig``), defaults shown from ``base``."""
    from toolkit.config import SelectConfig

    from experiments.flags import add_fields

    group = p.add_argument_group("the rehearsal (toolkit.config.SelectConfig)")
    names = names or [f for f in SelectConfig.__dataclass_fields__ if f != "batch_size"]
    add_fields(group, SelectConfig, base, names, flags=SELECT_FLAGS, choices=_choices())


def _select_config(args: argparse.Namespace, base):
    from toolkit.gates import GATE_KINDS
    from toolkit.reads import parse_reads

    from experiments.flags import apply

    select = apply(args, base)
    bad = [k for k in select.gates or () if k not in GATE_KINDS]
    if bad or (select.gates is not None and not select.gates):
        raise ValueError(f"Unknown gate kind(s) {bad}: use {', '.join(GATE_KINDS)} (comma-separated).")
    for r in select.gate_reads or ():
        parse_reads(r)
    return replace(select, batch_size=_batch(args, select.batch_size))


def _people_options(p: argparse.ArgumentParser) -> None:
    from toolkit.data.splits import PeopleSplit

    from experiments.flags import add_fields

    group = p.add_argument_group("who fits, who chooses, who is reported (toolkit.data.splits.PeopleSplit)")
    add_fields(group, PeopleSplit, PeopleSplit(), flags=PEOPLE_FLAGS)
    group.add_argument("--all-people", action="store_true",
                       help="the reference: every retain person in the fit (utility is then in-fit only)")


def _people(args: argparse.Namespace, base=None):
    from toolkit.data.splits import PeopleSplit

    from experiments.flags import apply

    if getattr(args, "all_people", False):
        return None
    return apply(args, base or PeopleSplit())


def _job_config(args: argparse.Namespace):
    """The job's config (``toolkit.config.SHIPPED``) with the flags given: fit, rehearsal, people, batch."""
    from toolkit.config import SHIPPED

    from experiments.flags import apply

    job = apply(args, SHIPPED)
    fit = _fit_config(args, SHIPPED.fit)
    return replace(job, fit=fit, select=_select_config(args, SHIPPED.select))


# The fit fields the job's commands expose (name -> flag; None: the field's own name).
JOB_FIT_FLAGS = {"retain_budget": None, "n_contrast": None, "pgd_limit": None, "rank_policy": "--rank",
                 "retain_weight": None, "answer_weight": None, "gate_pool": None, "name_gate": None,
                 "calibration_budget": None}


def _job_options(p: argparse.ArgumentParser, extra: dict) -> None:
    from toolkit.config import SHIPPED, EraseConfig

    from experiments.flags import add_fields

    names = {**JOB_FIT_FLAGS, **extra}
    _fit_options(p, SHIPPED.fit, list(names), {k: v for k, v in names.items() if v})
    _select_options(p, SHIPPED.select)
    add_fields(p.add_argument_group("the job (toolkit.config.EraseConfig)"), EraseConfig, SHIPPED,
               ("in_fit_people", "held_out_share"))


def cmd_fit(args: argparse.Namespace) -> int:
    from toolkit.benchmark_fit import fit_eraser
    from toolkit.config import FitConfig, SelectConfig
    from toolkit.data.mllmu import MLLMUBench

    from experiments.flags import given

    model = _load(args)
    cfg = _fit_config(args, FitConfig())
    cfg = replace(cfg, batch_size=_batch(args, cfg.batch_size))
    select = _select_config(args, SelectConfig(layers=cfg.layers)) if args.select else None
    if select is not None:
        # The fit keeps the rows of every kind the rehearsal screens; one rate unless --gate-fprs names several.
        gates = select.gates or (cfg.gate,)
        fprs = select.gate_fprs if given(args, SelectConfig, "gate_fprs") else (cfg.gate_fpr,)
        select = replace(select, layers=cfg.layers, gates=gates, gate_fprs=fprs)
        cfg = replace(cfg, gate_rows=any(k != "linear" for k in gates))
    bench = MLLMUBench(_bench_path(args.bench))
    result = fit_eraser(model, bench, cfg, progress=True)
    eraser = result.eraser.with_options(threshold=args.threshold)
    if select is not None:
        from toolkit.selection import select_setting

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
                           batch_size=_batch(args, 1))[0])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo

    cfg = _job_config(args)
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
    """The whole job on a forget list (or an MLLMU-Bench folder): :func:`toolkit.erase`."""
    import pandas as pd

    from toolkit.job import erase

    cfg = _job_config(args)
    if cfg.people is None:
        raise ValueError("erase chooses its settings on validation people: --all-people leaves none; drop it.")
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
    df = run_items(model, items, steers=steers, progress=True, label="evaluate", batch_size=_batch(args, 32))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    summary = summarize(df)
    summary.to_csv(out / "summary.csv", index=False)
    (out / "metrics.json").write_text(summary.to_json(orient="records", indent=1))
    with pd.option_context("display.width", 200):
        print(summary.round(3).to_string(index=False))
    return 0


def _probe_fit():
    """The probes' fit: the reference's, at every layer."""
    from toolkit.config import FitConfig

    return FitConfig(layers=None)


def cmd_probe(args: argparse.Namespace) -> int:
    from probes.report import probe_report

    from toolkit.data.mllmu import MLLMUBench

    model = _load(args)
    cfg = _fit_config(args, _probe_fit())
    cfg = replace(cfg, batch_size=_batch(args, cfg.batch_size))
    layers = cfg.layers if cfg.layers is not None else tuple(range(model.num_layers))
    cfg = replace(cfg, layers=layers)
    report = probe_report(model, MLLMUBench(_bench_path(args.bench)), forget_ratio=cfg.forget_ratio, layers=layers,
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
                        config=AttackConfig(batch_size=_batch(args, AttackConfig.batch_size)),
                        label=args.eraser or "no eraser")
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
    from toolkit.config import FitConfig
    from toolkit.data.samples import fit_people

    model = _load(args)
    bench = MLLMUBench(_bench_path(args.bench))
    # Train on the fit people only, as the eraser does: evaluation people stay unseen by every method.
    retain = fit_people(bench, FitConfig(forget_ratio=args.forget, people=_people(args)), real=False)
    if args.name == "ASRU":
        from toolkit.baselines import ASRUConfig, GRPOConfig, RedirectConfig, asru, asru_direction
        from toolkit.data.boundary import boundary_questions

        # As published: never-seen faces asked what they cannot answer, minus the forget questions.
        direction, info = asru_direction(model, bench.forget(args.forget))
        print(f"ASRU direction at layer {info['layer']}: {info['kept']} of {info['asked']} never-seen faces kept "
              "by the published filter")
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


def _study(name: str):
    """A study from ``studies/`` (not installed: run the command from a clone of the repository)."""
    import importlib

    try:
        return importlib.import_module(f"studies.{name}")
    except ModuleNotFoundError:
        raise ValueError(f"the {name} study lives in the repository's studies/ folder, which is not installed: run "
                         "this command from the root of a clone.") from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def cmd_ablations(args: argparse.Namespace) -> int:
    ablations = _study("ablations")
    base = ablations.AblationConfig()
    studies = tuple(s for s in args.studies.split(",") if s) if args.studies else ablations.STUDIES
    job = base.job.with_fit(forget_ratio=args.forget or base.forget_ratio,
                            pgd=replace(base.job.fit.pgd, objective=args.pgd_objective or base.job.fit.pgd.objective))
    cfg = replace(base, job=job, seeds=tuple(int(s) for s in args.seeds.split(",")), studies=studies,
                  lams=_floats(args.lams) if args.lams else base.lams,
                  targets=tuple(x / 100 for x in _floats(args.targets)) if args.targets else base.targets)
    from toolkit.data.mllmu import MLLMUBench

    result = ablations.run_ablations(_load(args), MLLMUBench(args.bench) if args.bench else None, cfg, progress=True)
    paths = ablations.write_results(args.out, result, cfg.targets)
    import pandas as pd

    with pd.option_context("display.max_colwidth", 300, "display.width", 300):
        for target, claims in ablations.claims_table(result, cfg.targets).groupby("target", sort=False):
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
    _people_options(people)

    p = sub.add_parser("quickstart", help="load, capture, steer, generate", parents=[model_opts])
    p.set_defaults(fn=cmd_quickstart)

    p = sub.add_parser("demo", parents=[model_opts, people],
                       help="the main job on an embedded default: fit, choose, evaluate, compare")
    p.add_argument("--out", default="results/demo")
    _job_options(p, {"forget_ratio": "--forget"})
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one the default learnt)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("erase", parents=[model_opts, people],
                       help="the whole job on your people: fit, choose on the rehearsal, report, write the eraser")
    p.add_argument("--forget", required=True,
                   help="forget list (.jsonl / .csv, or a folder of them), or an MLLMU-Bench folder (then no --retain)")
    p.add_argument("--retain", default=None, help="retain list: the people whose knowledge must stay (same format)")
    p.add_argument("--real", default=None, help="optional second group of kept people, reported apart")
    _job_options(p, {"forget_ratio": "--ratio", "layers": None})
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
    _fit_options(p, _probe_fit(), ("layers", "forget_ratio", "n_contrast"), {"forget_ratio": "--forget"})
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
                       "map (toolkit.config.FitConfig; erase and demo run the shipped preset, toolkit.config.SHIPPED); "
                       "--select: the rehearsal chooses layer, lambda, threshold", parents=[model_opts, people])
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one)")
    from toolkit.config import FitConfig, SelectConfig

    _fit_options(p, FitConfig(), [f for f in FitConfig.__dataclass_fields__
                                  if f not in ("people", "pgd", "batch_size")],
                 {"forget_ratio": "--forget", "rank_policy": "--rank", "include_real": "--include-real"})
    p.add_argument("--threshold", type=float, default=0.0, help="gate dead zone in [0, 1); 0 = the paper's map")
    p.add_argument("--select", action="store_true",
                   help="choose layer (among --layers), lambda and threshold on the rehearsal (validation people)")
    _select_options(p, SelectConfig(), ("lams", "thresholds", "positions", "leak_max", "repetition_max", "rule",
                                        "gates", "gate_fprs"))
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
                       help="a study (studies/ablations.py, from a clone): the paper's ablations at matched "
                            "forgetting on held-out people: direction, eps, layers, map, gate, reference")
    p.add_argument("--out", default="results/ablations")
    p.add_argument("--forget", type=int, default=None, choices=[5, 10, 15], help="forget split (default: the study's)")
    p.add_argument("--seeds", default="0,1,2", help="people seeds (who fits, who chooses, who is reported)")
    p.add_argument("--studies", default=None, help="comma-separated subset of direction,eps,layers,map,gate,reference")
    p.add_argument("--lams", default=None,
                   help="the search grid, strengths summed over the steered layers (default 0.5,1,2,...,64)")
    p.add_argument("--targets", default=None,
                   help="rehearsal leakage (percent) every variant is matched to (default 5,20)")
    p.add_argument("--bench", default=None, help="benchmark dir (default: the synthetic one the default learnt)")
    p.add_argument("--pgd-objective", default=None, choices=["target", "avoid"],
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
