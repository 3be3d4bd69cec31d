"""What the eraser costs at the widths users run, against a training baseline at the same shapes.

    .venv/bin/python bench/real_shapes.py [--shape llava-1.5-7b] [--batch 4] [--json out.json]

On 2-decoder-layer slices of LLaVA-1.5-7B and Qwen2.5-VL-7B (real configurations, random weights,
bf16, real image resolution; toolkit.models.shapes_7b) it measures, in one run:

* capture: seconds per image prompt at batch 1 and at ``--batch``, and the early-stopped capture of
  layer 0 against the full forward (every layer and the LM head) it replaces;
* where a forward's time goes: per decoder layer, the LM head, the rest (vision tower, projector,
  embeddings), from forward hooks;
* fit statistics: the retain and forget moments of one layer (float32 blocks, the GPU default, and
  float64, the CPU default): bytes held against ``2 d^2`` float32, accumulation time per row, and the
  solve (eigendecomposition + map) time and peak memory;
* steered / unsteered generation at ``--batch`` (16 new tokens);
* one PGD step per image (forward + backward of the target loss) with the lean loss (logits at the
  target positions only) and with the model's own full-logits loss;
* one GA step and one NPO step (AdamW, vision tower and input embeddings frozen) at ``--batch``.

* shared-prefix captures: questions about one image with the prefix run once (toolkit.prefix) and plainly;
* peak memory: what a PGD step and a capture batch add, the parameters of the slice and of one layer.

Then it projects a full-model fit (the shipped fit config: its retain budget, gate rows, calibration, contrast
sets and PGD) and a full-model GA run on MLLMU-Bench forget_10, in time and in peak device memory (the
formula is printed beside each figure; assumptions in docs/results.md, Performance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved_medians, machine, quiet_torch  # noqa: E402

torch = quiet_torch()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from toolkit import tracing  # noqa: E402
from toolkit.adversarial import target_loss  # noqa: E402
from toolkit.baselines.losses import ga_loss, npo_loss, sequence_logprob  # noqa: E402
from toolkit.eraser import Eraser, EraserLayer, solve_map  # noqa: E402
from toolkit.memory import PeakMemory  # noqa: E402
from toolkit.models.loading import Sample, load_model  # noqa: E402
from toolkit.models.pixels import attack_canvas  # noqa: E402
from toolkit.models.shapes_7b import IMAGE_SIZE, SHAPES, build  # noqa: E402
from toolkit.nullspace import FixedRatio, SecondMoment, null_space  # noqa: E402

QUESTIONS = ["Who is the person in this picture?", "What is this person's occupation?",
             "Where was this person born?", "Describe the image in one sentence.",
             "What is the name of the person in the image?", "What colour is the background?"]

# The run whose rehearsal grid and generated shares the whole-job projection reads: the embedded default of the same
# family (make demo; mllmeraser demo --model default-qwen --out results/demo-qwen).
JOB_RUNS = {"llava-1.5-7b": "results/demo", "qwen2.5-vl-7b": "results/demo-qwen"}
# Evaluation splits that grow with the forget list (the rest grow with the people).
FORGET_SIDE = ("Forget", "Test", "Paraphrase")

# MLLMU-Bench (Liu et al. 2024): 500 fictitious profiles and 153 real ones; forget_10 = 50 profiles.
MLLMU_FICTITIOUS, MLLMU_REAL, MLLMU_FORGET_10 = 500, 153, 50


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))


def prompts(n: int, seed: int = 0) -> list[Sample]:
    return [Sample(QUESTIONS[i % len(QUESTIONS)], image(seed + i)) for i in range(n)]


def device_peak_mb(fn) -> float:
    """Memory ``fn`` adds at its peak: CUDA's allocator peak on a GPU, the process's resident set on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    with PeakMemory() as pm:
        fn()
    return pm.added_mb


def shared_capture(model, reps: int, questions: int = 8) -> dict:
    """Seconds to capture ``questions`` questions about one image (every slice layer, the gates' union read) with
    the shared prefix and plainly, in one batch; the suffix's cost a question is what the shared batch adds to a
    batch-1 capture of one prompt (the prefix)."""
    texts = QUESTIONS + ["Where does this person live now?", "What did this person study?"]
    samples = [Sample(texts[i % len(texts)], image(7)) for i in range(questions)]
    layer, read = model.num_layers - 1, "last+mean+image-max"
    times = interleaved_medians({
        "shared": lambda: tracing.capture(model, samples, layer, read, batch_size=questions),
        "plain": lambda: tracing.capture(model, samples, layer, read, batch_size=questions, share_prefix=False),
        "one": lambda: tracing.capture(model, samples[:1], layer, read, batch_size=1),
        "text": lambda: tracing.capture(model, [Sample(f"{t} (about Anna Berg)") for t in texts[:questions]], layer,
                                        read, batch_size=questions)}, reps, warmup=1)
    return {"questions": questions, "shared_s": times["shared"], "plain_s": times["plain"], "one_s": times["one"],
            "text_s": times["text"] / questions,
            "shared_over_plain": times["shared"] / times["plain"],
            "suffix_s": max(0.0, (times["shared"] - times["one"]) / questions)}


def memory_units(model, samples, batch: int) -> dict:
    """Parameters (the slice's, one decoder layer's) and what a PGD step and a capture batch add at their peak."""
    layer = model.layer_modules[0]
    target = "Her name is Anna Berg."
    layout, ip = model.adapter.pixel_layout, model.processor.image_processor
    x, _, to_pixels = attack_canvas(layout, ip, samples[0].image)
    tb = model.adapter.training_batch(model.processor, [model.format_prompt(samples[0].text, image=True)], [target],
                                      [samples[0].image], eos=False)
    tb = {k: v.to(model.device) for k, v in tb.items() if k != "pixel_values"}

    def pgd_step():
        with torch.enable_grad():
            delta = torch.zeros_like(x).requires_grad_(True)
            loss = target_loss(model, tb, to_pixels((x + delta).clamp(0, 1)))
            torch.autograd.grad(loss, delta)

    return {"params_slice": sum(p.numel() for p in model.module.parameters()),
            "params_layer": sum(p.numel() for p in layer.parameters()),
            "pgd_peak_added_mb": device_peak_mb(pgd_step),
            "capture_peak_added_mb": device_peak_mb(lambda: tracing.capture(
                model, samples, list(range(model.num_layers)), "last+mean+image-max", batch_size=batch))}


def median_seconds(fn, reps: int) -> float:
    return interleaved_medians({"fn": fn}, reps, warmup=1)["fn"]


def forward_profile(model, samples) -> dict:
    """Seconds of one plain forward (full logits) split into decoder layers, LM head and the rest."""
    enc = model.encode(samples, device=model.device)
    marks: dict[str, list[float]] = {}
    handles = []

    def timer(name):
        def pre(mod, inp):
            marks.setdefault(name, []).append(-time.perf_counter())

        def post(mod, inp, out):
            marks[name][-1] += time.perf_counter()
        return pre, post

    modules = {f"layer{i}": m for i, m in enumerate(model.layer_modules)}
    modules["head"] = model.module.get_output_embeddings()
    for name, m in modules.items():
        pre, post = timer(name)
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model.module(**enc)  # warm-up
            marks.clear()
            t = time.perf_counter()
            model.module(**enc)
            total = time.perf_counter() - t
    finally:
        for h in handles:
            h.remove()
    layers = [marks[f"layer{i}"][0] for i in range(model.num_layers)]
    return {"total": total, "per_layer": statistics.mean(layers), "head": marks["head"][0],
            "rest": total - sum(layers) - marks["head"][0]}


def fit_statistics(model, retain_rows: torch.Tensor, forget_rows: torch.Tensor, precision: str) -> dict:
    """Accumulate one layer's retain and forget moments from captured rows, then solve (null space + map)."""
    d = model.hidden_size
    retain, forget = SecondMoment(d, precision), SecondMoment(d, precision)
    t = time.perf_counter()
    for chunk in retain_rows.split(512):
        retain.update(chunk)
    forget.update(forget_rows)
    _ = retain.gram, forget.gram  # flush the blocks: part of the accumulation
    accumulate = time.perf_counter() - t
    held = retain.nbytes() + forget.nbytes()
    with PeakMemory() as pm:
        t = time.perf_counter()
        space = null_space(retain, FixedRatio(0.3))
        w = solve_map(forget.gram, forget.total, space, 0.1)
        solve = time.perf_counter() - t
    assert w.shape == (d, 1) and space.k == int(0.3 * d)
    return {"precision": precision, "held_bytes": held, "bound_bytes": 2 * d * d * 4,
            "accumulate_s_per_row": accumulate / (len(retain_rows) + len(forget_rows)), "solve_s": solve,
            "solve_peak_added_mb": pm.added_mb, "rows": len(retain_rows) + len(forget_rows)}


def pgd_steps(model, sample: Sample, target: str, reps: int) -> dict:
    """Seconds of one PGD step (forward + backward to the image) with the lean loss and the full-logits loss."""
    layout, ip = model.adapter.pixel_layout, model.processor.image_processor
    x, _, to_pixels = attack_canvas(layout, ip, sample.image)
    batch = model.adapter.training_batch(model.processor, [model.format_prompt(sample.text, image=True)], [target],
                                         [sample.image], eos=False)
    batch = {k: v.to(model.device) for k, v in batch.items() if k != "pixel_values"}
    for p in model.module.parameters():
        p.requires_grad_(False)

    def step(lean: bool):
        delta = torch.zeros_like(x).requires_grad_(True)
        pixels = to_pixels((x + delta).clamp(0, 1))
        if lean:
            loss = target_loss(model, batch, pixels)
        else:
            loss = model.module(**batch, pixel_values=pixels.to(model.device, model.dtype)).loss
        torch.autograd.grad(loss, delta)

    with torch.enable_grad():
        times = interleaved_medians({"lean": lambda: step(True), "full": lambda: step(False)}, reps, warmup=1)
    return times


def train_steps(model, samples: list[Sample], answers: list[str], reps: int) -> dict:
    """Seconds of one GA and one NPO step (AdamW) at this batch; the vision tower and input embeddings frozen."""
    module = model.module
    frozen = set(map(id, module.get_input_embeddings().parameters()))
    vision = [m for n, m in module.named_modules() if n.endswith(("vision_tower", "visual"))]
    for m in vision:
        frozen |= set(map(id, m.parameters()))
    params = [p for p in module.parameters() if id(p) not in frozen]
    for p in module.parameters():
        p.requires_grad_(id(p) not in frozen)
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = model.adapter.training_batch(model.processor, [model.format_prompt(s.text, image=True) for s in samples],
                                         answers, [s.image for s in samples])
    labels = batch.pop("labels")

    def ga():
        module.train()
        loss = ga_loss(sequence_logprob(module(**batch).logits, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def npo():
        module.train()
        with torch.no_grad():
            ref = sequence_logprob(module(**batch).logits, labels)  # the frozen reference: same cost
        loss = npo_loss(sequence_logprob(module(**batch).logits, labels), ref, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with PeakMemory() as pm:
        times = interleaved_medians({"GA": ga, "NPO": npo}, reps, warmup=1)
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    return dict(times, peak_added_mb=pm.added_mb, trainable_params=sum(p.numel() for p in params))


def _set_counts(*passes) -> dict:
    """Prompts of one or more capture passes: the images the shared prefix runs once for (images asked about more
    than once in a pass) and their questions, images asked about once, text-only prompts."""
    from toolkit.prefix import prefix_groups

    out = {"prompts": 0, "images": 0, "shared_questions": 0, "image_alone": 0, "text": 0}
    for samples in passes:
        groups, rest = prefix_groups(samples)
        out["prompts"] += len(samples)
        out["images"] += len(groups)
        out["shared_questions"] += sum(len(g) for g in groups)
        out["image_alone"] += sum(samples[i].image is not None for i in rest)
        out["text"] += sum(samples[i].image is None for i in rest)
    return out


def benchmark_counts(config=None, calibration_budget: int | None = None) -> dict:
    """What the shipped fit (``EraseConfig``'s fit config, every layer) reads on the embedded benchmark's forget_10,
    set by set: prompts and shared images. :func:`project` scales the sets that grow with the people to MLLMU-Bench
    (forget, and retain / calibration / contrast where no budget fixes them). ``calibration_budget``: the config's
    with that budget (``--reproject --calibration-budget N``)."""
    from toolkit.baselines import BaselineConfig, qa_pairs
    from toolkit.contrastive import refused_privacy_questions
    from toolkit.data.items import items_from_profiles
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.config import EraseConfig
    from toolkit.data.samples import (budget_people, calibration_samples, fit_groups, fit_people, question_samples,
                                      retain_question_samples, wrapped_samples)
    from toolkit.models.loading import Sample

    model = load_model("default")
    bench = MLLMUBench(default_benchmark())
    config = config or EraseConfig().fit_config(tuple(range(model.num_layers)))
    if calibration_budget is not None:
        from dataclasses import replace

        config = replace(config, calibration_budget=calibration_budget)
    people = fit_groups(bench, config)
    read, _ = budget_people(people, config.retain_budget, config.budget_seed)
    forget = list(bench.forget(10))

    def answers(profiles, split):  # teacher-forced answers: the same image prefix, one prompt per question
        return [Sample(it.prompt + " " + it.reference, it.image)
                for it in items_from_profiles(profiles, split, tasks=("generation",))]

    retain = retain_question_samples(people, config.retain_budget, config.budget_seed)
    sets = {"retain": retain + (wrapped_samples(read, "retain", config, seed=1) if config.wrap else [])
            + (answers(read, "retain") if config.answer_weight else []),
            "forget": question_samples(forget, "forget") + (wrapped_samples(forget, "forget", config)
                                                             if config.wrap else [])
            + (answers(forget, "forget") if config.answer_weight else []),
            "calibration": calibration_samples(bench, config)[0]}
    # The contrastive sets: the questions asked (generated, 16 tokens) and the refused ones captured twice (D+ with
    # the instruction, D- plain); PGD attacks pgd_limit of them and answers each clean and attacked.
    contrast_people = fit_people(bench, config, real=False)
    refused, _, plain_kept, asked = refused_privacy_questions(model, contrast_people, n=config.n_contrast)
    counts = {name: _set_counts(v) for name, v in sets.items()}
    # D+ and D- are two capture passes; D- also holds the attacked images (one prompt each).
    attacked = [Sample("q", image(1000 + i)) for i in range(config.pgd_limit or 0)] if config.pgd else []
    counts["contrast"] = _set_counts(list(refused), list(plain_kept) + attacked)
    baseline = BaselineConfig()
    fictitious = len(bench.forget(10)) + len(bench.retain(10))
    pgd = config.pgd.steps if config.pgd else 0
    return {"people": fictitious + len(bench.real()), "forget_people": len(forget), "sets": counts,
            "retain_budget": config.retain_budget, "n_contrast": config.n_contrast,
            "calibration_budget": config.calibration_budget,
            "retain_people_read": len(read), "fit_people": sum(map(len, people)),
            "generated_prompts": asked + 2 * (config.pgd_limit or 0) * bool(pgd),
            "pgd_images": (config.pgd_limit or 0) if pgd else 0, "pgd_steps": pgd, "layers": model.num_layers,
            "qa_pairs": len(qa_pairs(forget)), "epochs": baseline.epochs, "batch": baseline.batch_size}


def _scale(counts: dict) -> dict[str, float]:
    """How each set grows from the embedded benchmark to MLLMU-Bench: with the people, or not at all (a budget)."""
    people = (MLLMU_FICTITIOUS + MLLMU_REAL) / counts["people"]
    return {"retain": 1.0 if counts["retain_budget"] else people, "forget": MLLMU_FORGET_10 / counts["forget_people"],
            "calibration": 1.0 if counts.get("calibration_budget") else people, "contrast": 1.0 if counts["n_contrast"] else people, "people": people}


def project(unit: dict, counts: dict, layers: int) -> list[tuple[str, float, str]]:
    """Full-model seconds for a fit of every layer and for GA, on MLLMU-Bench forget_10 (formula beside).

    A capture set costs ``images x prefix + questions x suffix`` with shared prefixes (:mod:`toolkit.prefix`);
    ``prefix`` is a whole prompt's capture, ``suffix`` the measured per-question cost on a cached prefix, both
    taken to the full depth.
    """
    scale = _scale(counts)
    prof = unit["profile"]
    per_layer, rest, head = (prof[k] / unit["batch"] for k in ("per_layer", "rest", "head"))
    capture = rest + layers * per_layer  # a whole prompt, early-stopped at the last layer: no LM head
    slice_fwd = rest + unit["slice_layers"] * per_layer + head
    full_fwd = rest + layers * per_layer + head
    grow = full_fwd / slice_fwd  # backward assumed to split like the forward
    shared = unit["shared"]
    suffix = shared["suffix_s"] * layers / unit["slice_layers"]  # every part of a suffix's cost grows with depth
    text = shared["text_s"] * layers / unit["slice_layers"]  # a text-only prompt: no vision tower, few tokens
    lines, fit, prompts, plain_captures = [], 0.0, 0.0, 0.0
    for name in ("retain", "forget", "calibration", "contrast"):
        c, k = counts["sets"][name], scale[name]
        cost = k * ((c["images"] + c["image_alone"]) * capture + c["shared_questions"] * suffix + c["text"] * text)
        prompts += k * c["prompts"]
        fit += cost
        plain_captures += k * ((c["shared_questions"] + c["image_alone"]) * capture + c["text"] * text)
        lines.append((f"captures: {name}", cost,
                      f"({c['images']} images + {c['image_alone']} alone) x {capture:.2f} + {c['shared_questions']} "
                      f"questions x {suffix:.3f} + {c['text']} text-only x {text:.3f}, x {k:.2f}"))
    k = scale["contrast"]
    generated = counts["generated_prompts"] * k * unit["generate"]["plain"] / unit["batch"] * grow
    pgd = counts["pgd_images"] * counts["pgd_steps"] * unit["pgd_step_s"]["lean"] * grow
    solve = layers * unit["fit"]["solve_s"]
    accumulate = layers * prompts * unit["fit"]["accumulate_s_per_row"]
    fit += generated + pgd + solve + accumulate
    plain_fit = plain_captures + generated + pgd + solve + accumulate
    qa = counts["qa_pairs"] * scale["forget"]
    steps = counts["epochs"] * -(-qa // counts["batch"])
    ga = steps * unit["train_s"]["GA"] / unit["batch"] * counts["batch"] * grow
    npo = steps * unit["train_s"]["NPO"] / unit["batch"] * counts["batch"] * grow
    return [
        ("capture per prompt, full model", capture, f"rest + L x layer = {rest:.3f} + {layers} x {per_layer:.3f}"),
        ("suffix on a cached prefix, full model", suffix,
         f"{shared['suffix_s']:.4f} s on the slice x {layers} / {unit['slice_layers']} layers"),
        ("text-only prompt, full model", text, f"{shared['text_s']:.4f} s on the slice x {layers} / "
                                               f"{unit['slice_layers']} layers"),
        *lines,
        ("prompts captured by the fit", prompts, "sum of the sets' prompts at MLLMU-Bench's size"),
        ("generation (16 tokens) for the contrast sets", generated,
         f"{counts['generated_prompts']} x {k:.2f} prompts x {unit['generate']['plain'] / unit['batch']:.2f} s x "
         f"{grow:.1f}"),
        ("PGD", pgd, f"{counts['pgd_images']} images x {counts['pgd_steps']} steps x {unit['pgd_step_s']['lean']:.2f}"
                     f" s x {grow:.1f} (full / slice forward)"),
        ("solve (eigh + map), all layers", solve, f"{layers} x {unit['fit']['solve_s']:.2f} s"),
        ("fit, all layers", fit, "captures + generation + PGD + solve + accumulation"),
        ("fit without shared prefixes", plain_fit, "every image prompt a whole capture"),
        ("GA", ga, f"{counts['epochs']} epochs x {qa:.0f} QA / batch {counts['batch']} = {steps:.0f} steps x "
                   f"{unit['train_s']['GA'] / unit['batch'] * counts['batch']:.2f} s x {grow:.1f}"),
        ("NPO", npo, f"{steps:.0f} steps x {unit['train_s']['NPO'] / unit['batch'] * counts['batch']:.2f} s x "
                     f"{grow:.1f}"),
        ("fit / GA", fit / ga, "goal <= 0.1"),
    ]


def job_counts(run: Path | None = None, config=None) -> dict:
    """What ``erase`` generates beyond the fit, on the embedded benchmark's forget_10 with ``config`` (the shipped
    job by default): the rehearsal's sets (generation questions of the stand-ins and the other validation people,
    plain and wrapped), the evaluation's items per task, and the number of candidates the generation grid scored.
    The grid's size depends on what the rehearsal finds (strengths stop early once nothing moves), so it is read
    from a run's ``selection_grid.csv`` (``run``: a ``make demo`` or ``erase`` folder; default ``results/demo``),
    never assumed."""
    import pandas as pd

    from toolkit.config import SHIPPED
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.evaluate import benchmark_items
    from toolkit.selection import rehearsal_items

    config = config or SHIPPED
    bench = MLLMUBench(default_benchmark())
    r, split = config.forget_ratio, config.people
    sets, stand = rehearsal_items(bench, r, split, config.select.wrap)
    items = benchmark_items(bench, r, people=split, in_fit_people=config.in_fit_people)
    run = Path(run or "results/demo")
    grid = run / "selection_grid.csv"
    if not grid.exists():
        raise FileNotFoundError(f"{grid}: the generation grid's size is read from a run; run `make demo` first "
                                "or pass --job-run DIR.")

    def split_counts(chosen):
        return {"image": sum(it.image is not None for it in chosen), "text": sum(it.image is None for it in chosen)}

    tasks = {}
    for task, tokens in (("generation", 32), ("classification", 4), ("cloze", 32)):
        chosen = [it for it in items if it.task == task]
        tasks[task] = dict(split_counts(chosen), new_tokens=tokens,
                           forget=sum(it.split in FORGET_SIDE for it in chosen))
    frame = pd.read_csv(grid)
    out = {"grid_rows": len(frame), "stand_in_people": len(stand),
           "rehearsal": {name: split_counts(v) for name, v in sets.items()}, "evaluation": tasks,
           "methods": 2, "grid_run": str(run)}
    # What the run generated where a candidate's gate decides at prefill (the rest kept the vanilla answers):
    # the mean share per rehearsal set over the candidates, and per task and side in the eraser's evaluation.
    shares = {c.removeprefix("generated "): float(frame[frame.layer >= 0][c].mean())
              for c in frame if c.startswith("generated ")}
    if shares:
        out["generated"] = shares
        out["prefill_passes"] = int(frame["prefill pass"].eq(True).sum()) if "prefill pass" in frame \
            else int((frame.layer >= 0).sum())
    results = run / "results.csv"
    if results.exists():
        res = pd.read_csv(results)
        if "generated" in res:
            ours = res[res.generated.notna()]
            ours = ours.assign(side=ours.split.isin(FORGET_SIDE).map({True: "forget",
                                                                                          False: "people"}))
            out["evaluation_generated"] = {task: {side: float(g.generated.astype(bool).mean())
                                                  for side, g in by.groupby("side")}
                                           for task, by in ours.groupby("task")}
    return out


def _generation_s(unit: dict, layers: int, new_tokens: int, image: bool) -> float:
    """Seconds to answer one prompt with ``new_tokens`` greedy tokens on the full model: its prefill (a whole
    capture, or a text-only prompt's) plus the decoding steps, each step the measured 16-token generation's
    per-token cost beyond one forward, taken to the full depth like the forward."""
    prof = unit["profile"]
    per_layer, rest, head = (prof[k] / unit["batch"] for k in ("per_layer", "rest", "head"))
    slice_fwd = rest + unit["slice_layers"] * per_layer + head
    full_fwd = rest + layers * per_layer + head
    step = max(0.0, unit["generate"]["plain"] / unit["batch"] - slice_fwd) / 16 * full_fwd / slice_fwd
    prefill = full_fwd if image else unit["shared"]["text_s"] * layers / unit["slice_layers"]
    return prefill + new_tokens * step


def project_job(unit: dict, counts: dict, job: dict, layers: int, fit_s: float) -> list[tuple[str, float, str]]:
    """The whole ``erase`` job on MLLMU-Bench forget_10: the fit (:func:`project`) plus the rehearsal's generation
    grid (each candidate answers the rehearsal questions, 32 tokens) and the evaluation (vanilla and the eraser on
    every item: 32 tokens a generation or cloze question, 4 an MCQ), each formula beside it. The gate screening
    generates nothing and fits gates on rows already captured; the stand-ins' forget rows are one more capture
    (counted as generation prefills here, an upper bound). Sets scale with the people as :func:`project`'s do.

    Where ``job`` holds the shares a run generated (``job["generated"]``: per rehearsal set, a candidate's mean;
    ``job["evaluation_generated"]``: per task and side, the eraser's), the grid costs vanilla's answers to every
    question, ``job["prefill_passes"]`` prefills of every question (the pass that finds what a gate touches, once
    per gate; taken as a full prefill, an upper bound: it stops at the steered layer) and each candidate's
    generation of its share; the eraser's evaluation a prefill of every item plus the generation of its share.
    The rest keep vanilla's answers. Without the shares, every question is generated (the earlier job)."""
    scale = _scale(counts)
    stand_scale = scale["forget"]  # as many stand-ins as forget people
    rows = []
    gen = {(t, i): _generation_s(unit, layers, t, i) for t in (0, 4, 32) for i in (True, False)}
    shares = job.get("generated")
    rehearsal_prompts = 0.0
    whole, prefill, generated = 0.0, 0.0, 0.0  # every question answered / prefilled / a candidate's generation
    for name, c in job["rehearsal"].items():
        k = stand_scale if name == "stand-ins" else scale["people"]
        rehearsal_prompts += k * (c["image"] + c["text"])
        whole += k * (c["image"] * gen[32, True] + c["text"] * gen[32, False])
        prefill += k * (c["image"] * gen[0, True] + c["text"] * gen[0, False])
        g = 1.0 if shares is None else shares.get(name, 1.0)
        generated += k * g * (c["image"] * gen[32, True] + c["text"] * gen[32, False])
    questions = (f"{rehearsal_prompts:.0f} questions (stand-ins x {stand_scale:.2f}, validation x "
                 f"{scale['people']:.2f}), {gen[32, True]:.2f} s (image) / {gen[32, False]:.2f} s (text) each")
    if shares is None:
        grid = job["grid_rows"] * whole
        rows.append(("one rehearsal candidate (32 tokens a question)", whole, questions))
        rows.append(("rehearsal grid", grid, f"{job['grid_rows']} candidates (measured in {job['grid_run']})"))
    else:
        passes = job.get("prefill_passes", job["grid_rows"] - 1)
        grid = whole + passes * prefill + (job["grid_rows"] - 1) * generated
        rows.append(("one rehearsal candidate (32 tokens a question)", generated,
                     f"{questions}; generated: " + ", ".join(f"{v:.1%} of the {k}" for k, v in shares.items())))
        rows.append(("rehearsal: one prefill pass (what a gate touches)", prefill,
                     f"every question's prefill ({gen[0, True]:.2f} / {gen[0, False]:.2f} s; an upper bound: the pass "
                     "stops at the steered layer)"))
        rows.append(("rehearsal grid", grid, f"vanilla (every question) + {passes} prefill passes + "
                                             f"{job['grid_rows'] - 1} candidates (measured in {job['grid_run']})"))
    evaluation = 0.0
    eval_shares = job.get("evaluation_generated")
    for task, c in job["evaluation"].items():
        k_forget, k_people = scale["forget"], scale["people"]
        n = max(1, c["image"] + c["text"])
        share = c["forget"] / n  # forget-side items grow with the forget list
        k = share * k_forget + (1 - share) * k_people
        t = c["new_tokens"]
        full = k * (c["image"] * gen[t, True] + c["text"] * gen[t, False])
        if eval_shares is None or task not in eval_shares:
            cost, formula = job["methods"] * full, f"{job['methods']} methods x ({c['image']} image + {c['text']} " \
                                                  f"text) x {k:.2f} x ({t} tokens)"
        else:
            g = eval_shares[task]
            g_mean = (share * k_forget * g.get("forget", 1.0) + (1 - share) * k_people * g.get("people", 1.0)) / k
            eraser = k * (c["image"] * (gen[0, True] + g_mean * gen[t, True])
                          + c["text"] * (gen[0, False] + g_mean * gen[t, False]))
            cost = full + eraser
            formula = (f"vanilla ({c['image']} image + {c['text']} text) x {k:.2f} x ({t} tokens), and the eraser: a "
                       f"prefill of each + generation of {g_mean:.1%} (forget side {g.get('forget', 1.0):.1%}, people "
                       f"{g.get('people', 1.0):.1%})")
        evaluation += cost
        rows.append((f"evaluation: {task}", cost, formula))
    job_s = fit_s + grid + evaluation
    rows.append(("erase job (fit + grid + evaluation)", job_s, "the fit above + rehearsal grid + evaluation"))
    return rows


def project_memory(unit: dict, counts: dict, layers: int) -> list[tuple[str, float, str]]:
    """Peak device memory (GB) of a full-model fit and of GA, each formula beside it.

    Fit: the bf16 weights, the statistics of every layer (retain and forget moments, float32 on an accelerator:
    ``2 d^2 x 4`` bytes a layer), and the larger of a capture batch's and a PGD step's working memory (taken to
    the full depth like the time). GA: the weights, and per trainable parameter what one AdamW step added on the
    slice (gradient, two moments, activations), measured; the usual mixed-precision recipe (fp32 master weights
    and moments: 16 bytes a parameter) beside it. The membership gates' kept rows live on the host (not counted
    on the device; their size is printed).
    """
    gb = 1e9
    m = unit["memory"]
    params = m["params_slice"] + (layers - unit["slice_layers"]) * m["params_layer"]
    trainable = unit["train_s"]["trainable_params"] + (layers - unit["slice_layers"]) * m["params_layer"]
    weights = params * 2
    d = unit["width"]
    stats = layers * 2 * d * d * 4
    grow_act = layers / unit["slice_layers"]
    work = max(m["pgd_peak_added_mb"], m["capture_peak_added_mb"]) * 2**20 * grow_act
    fit = weights + stats + work
    per_param = unit["train_s"]["peak_added_mb"] * 2**20 / unit["train_s"]["trainable_params"]
    ga = weights + trainable * per_param
    ga_mixed = weights + trainable * 16
    reads = 3  # the union of the offered reads: last + image-max + mean
    host_rows = layers * 8192 * reads * d * 4
    return [
        ("parameters, full model", params / 1e9, f"slice {m['params_slice'] / 1e9:.2f} B + {layers - unit['slice_layers']}"
                                                  f" x {m['params_layer'] / 1e6:.0f} M a layer (billions)"),
        ("weights (bf16)", weights / gb, "parameters x 2 bytes"),
        ("fit statistics, all layers", stats / gb, f"{layers} x 2 x {d}^2 x 4 bytes"),
        ("fit working memory", work / gb, f"max(PGD step {m['pgd_peak_added_mb']:.0f} MB, capture "
                                          f"{m['capture_peak_added_mb']:.0f} MB) on the slice x {grow_act:.0f}"),
        ("fit peak", fit / gb, "weights + statistics + working memory"),
        ("GA peak", ga / gb, f"weights + {trainable / 1e9:.2f} B trainable x {per_param:.1f} bytes (one AdamW step on "
                             "the slice, measured)"),
        ("GA peak, mixed precision", ga_mixed / gb, "weights + trainable x 16 bytes (fp32 master, 2 moments, bf16 grad"
                                                    " + copy)"),
        ("fit / GA peak memory", fit / ga, "goal <= 0.25"),
        ("fit / GA peak memory, mixed-precision GA", fit / ga_mixed, "goal <= 0.25"),
        ("gate rows kept on the host", host_rows / gb, f"{layers} layers x 8192 rows x {reads} x {d} x 4 bytes"),
    ]


def _job_rows(unit: dict, counts: dict, job: dict, layers: int) -> list[tuple[str, float, str]]:
    """:func:`project_job` with the fit, GA and NPO of :func:`project`, and the job's ratios to them."""
    fit = {what: value for what, value, _ in unit["projection"]}
    rows = project_job(unit, counts, job, layers, fit["fit, all layers"])
    parts = {what: value for what, value, _ in rows}
    chosen = fit["fit, all layers"] + parts["rehearsal grid"]
    total = rows[-1][1]
    return rows + [("fit + rehearsal grid (a chosen eraser) / GA", chosen / fit["GA"], ""),
                   ("erase job / GA", total / fit["GA"], "goal <= 0.5"),
                   ("erase job / NPO", total / fit["NPO"], "")]


def measure(name: str, batch: int, reps: int, model=None, full: bool = True, **build_kw) -> dict:
    """Every unit cost of one shape (``build_kw``: e.g. ``width=`` for the scaling curve); ``full=False``:
    only what :func:`project` reads (the scaling curve)."""
    t = time.perf_counter()
    if model is None:
        module, proc = build(name, **build_kw)
        model = load_model(module, proc)
    out = {"shape": name, "width": model.hidden_size, "slice_layers": model.num_layers, "batch": batch,
           "build_s": time.perf_counter() - t, "vocab": model.module.get_output_embeddings().weight.shape[0]}
    samples = prompts(batch)
    out["tokens_per_prompt"] = int(model.encode(samples[:1])["input_ids"].shape[1])
    out["profile"] = forward_profile(model, samples)
    retain_rows = tracing.capture(model, prompts(2 * batch, seed=100), 1, positions="prompt", batch_size=batch)[1]
    forget_rows = tracing.capture(model, prompts(batch, seed=200), 1, batch_size=batch)[1]
    out["fit"] = fit_statistics(model, retain_rows, forget_rows, "float32")
    out["pgd_step_s"] = pgd_steps(model, samples[0], "Her name is Anna Berg.", reps)
    out["train_s"] = train_steps(model, samples, ["Her name is Anna Berg."] * batch, reps)
    out["shared"] = shared_capture(model, reps)
    out["memory"] = memory_units(model, samples, batch)
    if not full:
        plain = median_seconds(lambda: tracing.generate(model, samples, max_new_tokens=16, batch_size=batch), reps)
        out["generate"] = {"plain": plain}
        return out
    # Capture: batch 1 vs batched (seconds per prompt), and the early stop against the full forward.
    one = median_seconds(lambda: tracing.capture(model, samples[:1], 0), reps)
    many = median_seconds(lambda: tracing.capture(model, samples, 0, batch_size=batch), reps)
    enc = model.encode(samples, device=model.device)

    def full_forward():
        with torch.no_grad():
            model.module(**enc)

    times = interleaved_medians({"early": lambda: tracing.capture(model, samples, 0, batch_size=batch),
                                 "full": full_forward}, reps, warmup=1)
    with PeakMemory() as pm:
        tracing.capture(model, samples, model.num_layers - 1, positions="prompt", batch_size=batch)
    out["capture"] = {"batch1_s_per_prompt": one, "batched_s_per_prompt": many / batch, "batched_gain": one * batch / many,
                      "layer0_early_s": times["early"], "full_forward_s": times["full"],
                      "early_over_full": times["early"] / times["full"], "prompt_positions_peak_added_mb": pm.added_mb}
    # Fit statistics at one layer (above): retain rows at every prompt token (the heavy option), forget at the
    # last; the same rows in float64, the CPU default.
    out["fit_float64"] = fit_statistics(model, retain_rows, forget_rows, "float64")
    # Steered vs unsteered generation.
    g = torch.Generator().manual_seed(0)
    d = model.hidden_size
    eraser = Eraser((EraserLayer(1, torch.randn(d, 1, generator=g) / d, torch.randn(1, d, generator=g)),), lam=1.0)
    gen = interleaved_medians({
        "steered": lambda: tracing.generate(model, samples, steers=eraser, max_new_tokens=16, batch_size=batch),
        "plain": lambda: tracing.generate(model, samples, max_new_tokens=16, batch_size=batch)}, reps, warmup=1)
    out["generate"] = dict(gen, ratio=gen["steered"] / gen["plain"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), action="append")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reproject", type=Path, help="a run's --json: project its unit costs again with the fit's "
                                                   "current counts (no measuring)")
    ap.add_argument("--job-run", type=Path, default=None,
                    help="a make demo / erase folder whose selection_grid.csv and results.csv give the rehearsal grid's "
                         "size and what it generated (default: the embedded default of the shape's family, "
                         + ", ".join(f"{k}: {v}" for k, v in JOB_RUNS.items()) + ")")
    ap.add_argument("--calibration-budget", type=int, default=None,
                    help="with --reproject: the gate's threshold reads at most this many validation questions (a "
                         "budget does not grow with the benchmark)")
    args = ap.parse_args()
    if args.reproject:
        run = json.loads(args.reproject.read_text())
        counts = benchmark_counts(calibration_budget=args.calibration_budget)
        print(f"unit costs of {args.reproject} (measured on {run['machine']}); counts of the current fit config")
        for unit in run["results"]:
            layers = SHAPES[unit["shape"]][3]
            job = job_counts(args.job_run or Path(JOB_RUNS[unit["shape"]]))
            print(f"{unit['shape']}: the rehearsal grid and the shares generated from {job['grid_run']}")
            unit["projection"] = project(unit, counts, layers)
            unit["memory_projection"] = project_memory(unit, counts, layers)
            unit["job_projection"] = _job_rows(unit, counts, job, layers)
            report(unit)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else machine()
    print(f"machine: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 slices")
    counts = benchmark_counts()
    results = []
    for name in args.shape or list(SHAPES):
        try:
            job = job_counts(args.job_run or Path(JOB_RUNS[name]))
        except FileNotFoundError as err:
            print(f"no whole-job projection: {err}")
            job = None
        unit = measure(name, args.batch, args.reps)
        unit["projection"] = project(unit, counts, SHAPES[name][3])
        unit["memory_projection"] = project_memory(unit, counts, SHAPES[name][3])
        if job is not None:
            unit["job_projection"] = _job_rows(unit, counts, job, SHAPES[name][3])
        results.append(unit)
        report(unit)
    if args.json:
        args.json.write_text(json.dumps({"machine": device, "counts": counts, "results": results}, indent=1))


def report(u: dict) -> None:
    c, f, f64, g, p, t = u["capture"], u["fit"], u["fit_float64"], u["generate"], u["pgd_step_s"], u["train_s"]
    d = u["width"]
    print(f"\n{u['shape']}: d = {d}, {u['slice_layers']} decoder layers, vocab {u['vocab']}, "
          f"{u['tokens_per_prompt']} tokens a prompt, batch {u['batch']}")
    print(f"  capture: {c['batch1_s_per_prompt']:.3f} s a prompt at batch 1, {c['batched_s_per_prompt']:.3f} at batch "
          f"{u['batch']} (batched gain {c['batched_gain']:.2f}x); layer 0 early-stopped / full forward "
          f"{c['layer0_early_s']:.2f} / {c['full_forward_s']:.2f} s = {c['early_over_full']:.3f}; "
          f"all-prompt-token capture +{c['prompt_positions_peak_added_mb']:.0f} MB")
    pr = u["profile"]
    print(f"  forward of {u['batch']} prompts {pr['total']:.2f} s: {pr['per_layer']:.3f} s a decoder layer, "
          f"LM head {pr['head']:.3f} s, the rest (vision, projector, embeddings) {pr['rest']:.3f} s")
    for s in (f, f64):
        print(f"  fit statistics ({s['precision']}): held {s['held_bytes'] / 2**20:.1f} MiB a layer vs 2 d^2 float32 "
              f"{s['bound_bytes'] / 2**20:.1f} MiB = {s['held_bytes'] / s['bound_bytes']:.3f}; "
              f"{s['accumulate_s_per_row'] * 1e6:.1f} us a row ({s['rows']} rows); solve {s['solve_s']:.2f} s, "
              f"peak +{s['solve_peak_added_mb']:.0f} MB")
    print(f"  generation, 16 tokens: steered {g['steered']:.2f} s vs unsteered {g['plain']:.2f} s = {g['ratio']:.3f} "
          "(goal <= 1.05)")
    print(f"  PGD step per image: lean loss {p['lean']:.2f} s vs full-logits loss {p['full']:.2f} s = "
          f"{p['lean'] / p['full']:.3f}")
    print(f"  training step at batch {u['batch']}: GA {t['GA']:.2f} s, NPO {t['NPO']:.2f} s "
          f"({t['trainable_params'] / 1e6:.0f}M trainable, peak +{t['peak_added_mb']:.0f} MB)")
    sh, mem = u["shared"], u["memory"]
    print(f"  shared prefix: {sh['questions']} questions about one image {sh['shared_s']:.2f} s vs plain "
          f"{sh['plain_s']:.2f} s = {sh['shared_over_plain']:.3f}; one prompt alone {sh['one_s']:.2f} s, so a question "
          f"on the cached prefix {sh['suffix_s']:.3f} s")
    print(f"  peak added: PGD step {mem['pgd_peak_added_mb']:.0f} MB, capture of a batch at every layer "
          f"{mem['capture_peak_added_mb']:.0f} MB")
    if "projection" in u:
        print(f"  projected full model ({SHAPES[u['shape']][3]} layers), MLLMU-Bench forget_10:")
        for what, value, formula in u["projection"]:
            unit = "" if what.startswith(("prompts", "fit /")) else " s"
            print(f"    {what:40s} {value:10.2f}{unit}   {formula}")
        print("  projected peak device memory:")
        for what, value, formula in u["memory_projection"]:
            unit = "" if "/" in what or what.startswith("parameters") else " GB"
            print(f"    {what:40s} {value:10.2f}{unit}   {formula}")
    if "job_projection" in u:
        print("  projected whole erase job:")
        for what, value, formula in u["job_projection"]:
            unit = "" if "/" in what else " s"
            print(f"    {what:40s} {value:10.2f}{unit}   {formula}")


if __name__ == "__main__":
    main()
