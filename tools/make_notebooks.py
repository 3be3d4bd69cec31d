"""Writes notebooks/*.ipynb (outputs stripped). Run after editing the cells below:

    .venv/bin/python tools/make_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """%matplotlib inline
import warnings, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
import transformers; transformers.logging.set_verbosity_error()"""

QUICKSTART = [
    new_markdown_cell("# Quickstart: load, trace, capture, steer, generate\n\n"
                      "The embedded default is a small LLaVA trained on a synthetic benchmark of fictitious people "
                      "in the MLLMU-Bench format. Everything here runs offline on a CPU."),
    new_code_cell(SETUP),
    new_code_cell("""from toolkit import load_model, Sample, tracing
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark

model = load_model("default")
bench = MLLMUBench(default_benchmark())
person = bench.forget(10)[0]
question = next(q for q in person.generation if q.modality == "image")
sample = Sample(question.question, person.image)
model, question.question, question.ground_truth"""),
    new_markdown_cell("## Trace with nnsight directly\n`model.nn` is the `nnsight.TransformersModel`; "
                      "`model.layers[l]` is decoder block `l` (its output is the residual stream after the block)."),
    new_code_cell("""import nnsight
enc = model.encode([sample])
with torch.no_grad(), model.nn.trace(**enc):
    h4 = nnsight.save(model.layers[4].output[:, -1])
h4.shape"""),
    new_markdown_cell("## Capture with the toolkit (batched, left padded, CPU tensors keyed by layer)"),
    new_code_cell("""acts = tracing.capture(model, [sample], layers=[2, 4, 6])
assert torch.allclose(acts[4], h4.float(), atol=1e-6)
{l: tuple(a.shape) for l, a in acts.activations.items()}"""),
    new_markdown_cell("## Steer and generate; the steering block always cleans up"),
    new_code_cell("""answer = tracing.generate(model, [sample])[0]
d = acts[4][0] / acts[4][0].norm()
steer = tracing.Steer(4, lambda h: -2.0 * (h @ d)[:, None] * d, positions="prompt")
with tracing.steering(model, [steer]):
    steered = tracing.generate(model, [sample])[0]
again = tracing.generate(model, [sample])[0]
print("answer :", answer)
print("steered:", steered)
print("after  :", again)
assert again == answer"""),
]

PROBES = [
    new_markdown_cell("# Probe report: before running the full erasure\n\n"
                      "Does the erasure direction separate refusal from recall at each layer? How much null space "
                      "does each layer have, and how much forget signal lies in it? What does steering do, layer by "
                      "layer and strength by strength?"),
    new_code_cell(SETUP),
    new_code_cell("""from toolkit import load_model
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.adversarial import PGDConfig
from toolkit.config import FitConfig
from probes.report import probe_report

model = load_model("default")
bench = MLLMUBench(default_benchmark())
report = probe_report(model, bench, forget_ratio=10,
                      fit_config=FitConfig(layers=tuple(range(model.num_layers)), pgd=PGDConfig(steps=20)))
report.fit.report["contrast"], report.fit.report.get("pgd_success_rate")"""),
    new_markdown_cell("## Is the direction stable? Cosine between directions from disjoint halves of the pairs"),
    new_code_cell("report.stability.round(3)"),
    new_markdown_cell("## Separability of D+ (refusal) and D- (recall) along the direction, per layer"),
    new_code_cell("report.direction_separability.round(3)"),
    new_code_cell("report.figures['separability']"),
    new_code_cell("report.figures['cosines']"),
    new_markdown_cell("## Null-space rank per layer and policy; forget energy inside it"),
    new_code_cell("report.ranks.round(4).head(18)"),
    new_code_cell("report.figures['ranks']"),
    new_code_cell("report.figures['spectrum']"),
    new_markdown_cell("## Gate values on forget vs retain (their overlap is the retain damage to expect)"),
    new_code_cell("report.figures['gates']"),
    new_markdown_cell("## The gate per group of people: forget, in the fit, validation (never in the fit)"),
    new_code_cell("report.figures['gate_groups']"),
    new_markdown_cell("## Per-layer steering effects across lambda (rehearsal: validation people stand in for forget)"),
    new_code_cell("report.figures['grid']"),
    new_code_cell("report.window.drop(columns=['ok_lams'])"),
    new_code_cell("print('recommended (layer, lambda):', report.recommended)"),
    new_markdown_cell("## How large must an image perturbation be? PGD across epsilons\n\n"
                      "The image-only direction rests on adversarial images that make the model answer a question "
                      "it refused. Attack a few refused privacy-instructed questions at each budget."),
    new_code_cell("""from toolkit.contrastive import refused_privacy_questions
from probes.pgd_sweep import epsilon_sweep
from probes.plots import plot_epsilon_sweep

refused, targets, _, asked = refused_privacy_questions(model, bench.retain(10), n=6)
sweep = epsilon_sweep(model, refused, targets, (8 / 255, 32 / 255, 128 / 255), steps=10)
print(f"{len(refused)} of {asked} asked were refused")
sweep.round(3)"""),
    new_code_cell("plot_epsilon_sweep(sweep)"),
]

SENSITIVITY = [
    new_markdown_cell("# Layer-sensitivity study on people the fit never saw\n\n"
                      "People are split by a seeded hash of their ID (`PeopleSplit`): *fit* people build the eraser, "
                      "*validation* people choose its settings, *evaluation* people are only reported. Settings are "
                      "chosen on a rehearsal: validation people stand in for the forget list with the same fit. "
                      "Steer one layer at a time, then cumulatively, across a lambda grid (next token, seconds); "
                      "look at where the gate fires per group of people; then generate at the shortlisted layers "
                      "and run the full erasure with the chosen setting."),
    new_code_cell(SETUP),
    new_code_cell("""from toolkit import load_model
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark
from toolkit.evaluate import items_from_profiles
from toolkit.benchmark_fit import fit_eraser, refit_forget
from toolkit.models.loading import Sample
from toolkit.config import EraseConfig
from probes import gate_distribution, plots, steering_effects

model = load_model("default")
bench = MLLMUBench(default_benchmark())
layers = list(range(model.num_layers))
cfg = EraseConfig()  # rank ratio 0.97, retain weight 40, answer weight 0.3; people split seed 0
split, r = cfg.people, cfg.forget_ratio
fit_cfg = cfg.fit_config(tuple(layers))
fit = fit_eraser(model, bench, fit_cfg)  # fit people only
stand_ins, val_retain = split.rehearsal(bench.retain(r), len(bench.forget(r)))
rehearsal = refit_forget(model, fit, stand_ins, fit_cfg)  # the same fit, validation people "forgotten"

def generation(people):
    items = items_from_profiles(people, "x", ("generation",))
    return [Sample(it.prompt, it.image) for it in items], [it.reference for it in items]

(fv, fa), (rv, ra) = generation(stand_ins), generation(val_retain)
sets, answers = {"forget": fv, "retain": rv}, {"forget": fa, "retain": ra}
lams = [2.0, 4.0, 8.0, 12.0]
steer = lambda ls, lam: rehearsal.with_options(layers=ls, lam=lam)
print(f"fit people {len(fit.report['fit_people'])}, stand-ins {len(stand_ins)}, validation retain {len(val_retain)}")"""),
    new_markdown_cell("## Where the gate fires, per group of people\n\n"
                      "Inside the fit the gate is ~0 by construction; on people the fit never saw it is not. This "
                      "is where held-out utility is lost."),
    new_code_cell("""groups = {"forget": generation(bench.forget(r))[0],
          "retain (in fit)": generation(split.people(bench.retain(r), "fit"))[0],
          "retain (validation)": rv,
          "real (validation)": generation(split.people(bench.real(), "validation"))[0]}
gates = gate_distribution.gate_distribution(model, fit.eraser, groups, layers[-3:])
display(gate_distribution.gate_summary(gates).round(3))
plots.plot_gate_groups(gates)"""),
    new_markdown_cell("## Gate kinds side by side: ROC on validation people (no generation)\n\n"
                      "The paper's linear gate against membership gates (`toolkit.gates`), each fitted on the "
                      "stand-ins' questions and scored on them and on the other validation people."),
    new_code_cell("""from probes.gate_roc import gate_roc

roc = gate_roc(model, fit, bench, fit_cfg, layers[-3:])
display(roc.summary.round(3))
plots.plot_gate_roc(roc.curves)"""),
    new_markdown_cell("## One layer at a time (next token, rehearsal)"),
    new_code_cell("""single = steering_effects.steering_grid(model, steer, sets, layers, lams, answers=answers)
plots.plot_grid(single)"""),
    new_markdown_cell("## Cumulatively (layers 0..l together): layers compound"),
    new_code_cell("""cumulative = steering_effects.steering_grid(model, steer, sets, layers, lams, cumulative=True)
plots.plot_grid(cumulative)"""),
    new_markdown_cell("## Shortlist, then generate: the selection grid (rehearsal leakage, validation recall)"),
    new_code_cell("""from toolkit import SelectConfig
from toolkit.selection import select_setting

shortlist = steering_effects.shortlist_layers(single, 3)
eraser, sel = select_setting(model, fit, bench, fit_cfg,
                             SelectConfig(layers=tuple(shortlist), lams=(2.0, 4.0, 8.0, 12.0), thresholds=(0.0, 0.2)))
print(f"shortlisted layers {shortlist}; chosen: layer {sel.layer}, lambda {sel.lam}, threshold {sel.threshold} ({sel.rule})")
sel.grid.round(3)"""),
    new_markdown_cell("## The full erasure with the chosen setting: evaluation people (headline) and fit people"),
    new_code_cell("""from toolkit.evaluate import benchmark_items, run_items, summarize
import pandas as pd

items = benchmark_items(bench, r, people=split, in_fit_people=10)
vanilla = run_items(model, items, batch_size=48)
erased = run_items(model, items, steers=eraser, batch_size=48)
table = pd.concat([summarize(vanilla).assign(method="vanilla"), summarize(erased).assign(method="MLLMEraser")])
table.round(3)"""),
    new_code_cell("""from toolkit.goals import UTILITY_POINTS  # the project's goals, written once (docs: results)
from toolkit.selection import fact_rate  # the fact in the answer (ROUGE-L >= 0.5 without answer keys)

def rate(df, split, modality=None):
    s = df[(df.split == split) & (df.task == "generation")]
    return fact_rate(s[s.modality == modality] if modality else s)

for who in ("Retain", "Real", "Retain (in fit)"):
    drop = 100 * (rate(vanilla, who) - rate(erased, who))
    print(f"{who:16s} recall drop: {drop:.1f} points (goal: <= {UTILITY_POINTS:g})")
print(f"forget leakage, image+text questions: {100 * rate(erased, 'Forget', 'image'):.1f}%; "
      f"text-only: {100 * rate(erased, 'Forget', 'text'):.1f}% (goal: <= 5%)")
"""),
]

BRING_YOUR_OWN = [
    new_markdown_cell("# Bring your own checkpoint: plain nnsight code, your own samples\n\n"
                      "A checkpoint directory of another family (here a tiny random Qwen2.5-VL saved to disk, loaded "
                      "exactly as you would load `Qwen/Qwen2.5-VL-7B-Instruct` from a local copy, with `dtype=` and "
                      "`device_map=` on a GPU), your own trace to capture, a fit from lists of samples, the eraser "
                      "inside your own `generate`, and its gate at every step."),
    new_code_cell(SETUP),
    new_code_cell("""import tempfile
import numpy as np
from PIL import Image
from toolkit import load_model, Sample
from toolkit.models.tiny import build_tiny
from toolkit.models.processors import save_processor

checkpoint = tempfile.mkdtemp()
module, processor = build_tiny("qwen2_5_vl")
module.save_pretrained(checkpoint); save_processor(processor, checkpoint)
model = load_model(checkpoint)            # e.g. load_model(path, dtype="bfloat16", device_map="cuda")
def image(i):
    return Image.fromarray(np.random.RandomState(i).randint(0, 255, (32, 32, 3), dtype=np.uint8))
model"""),
    new_markdown_cell("## Capture with your own trace\nLeft-padded inputs from `model.encode`; `model.layers[l]` is "
                      "decoder block `l`, whose output the eraser edits."),
    new_code_cell("""import nnsight
retain = [Sample(t, image(i)) for i, t in enumerate(["what is this", "describe the image", "what colour is it",
                                                      "is it a photo", "where is this"] * 4)]
forget = [Sample("who is this person", image(50 + i)) for i in range(6)]
enc = model.encode(retain, device=model.device)
with torch.no_grad(), model.nn.trace(**enc):
    retain_acts = nnsight.save(model.layers[1].output[:, -1])
retain_acts.shape"""),
    new_markdown_cell("## Fit from your activations and your samples\n`EraserFitter` streams statistics "
                      "(activations on any device and dtype; it never sees the model); `add_samples` captures lists "
                      "of samples into it for you."),
    new_code_cell("""from toolkit import EraserFitter, FitConfig, FixedRatio, add_samples

fitter = EraserFitter(model.hidden_size, layers=[1])
fitter.update_retain({1: retain_acts})
add_samples(fitter, model, "forget", forget)
add_samples(fitter, model, "refusal", [Sample("do not say who this is", image(i)) for i in range(4)])
add_samples(fitter, model, "recall", [Sample("who is this", image(i)) for i in range(4)])
eraser = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.5), gamma=1e-4, lam=20.0, positions="all"),
                       fingerprint=model.fingerprint())
eraser.settings["layers_report"]"""),
    new_markdown_cell("## The eraser inside your own `generate`, and its gate at every step"),
    new_code_cell("""from toolkit.steering import GateLog

log = GateLog()
enc = model.encode(forget[:2], device=model.device)
with torch.no_grad(), model.nn.generate(max_new_tokens=8, do_sample=False,
                                        pad_token_id=model.tokenizer.pad_token_id) as tracer:
    with tracer.invoke(**enc):
        eraser.intervene(model, log=log)   # positions="all": the invoke's last statement
    with tracer.invoke():
        ids = nnsight.save(tracer.result)
print(model.decode(ids[:, enc["input_ids"].shape[1]:]))
frame = log.frame()
frame.head()"""),
    new_code_cell("""import seaborn as sns
ax = sns.lineplot(frame, x="call", y="gate", hue="row", marker="o")
ax.set(xlabel="generation step (0 = prompt)", ylabel="gate h . w at layer 1", title="when the eraser fired")"""),
    new_markdown_cell("The same eraser steers any forward of the plain HF module too, and the hooks are gone "
                      "after the block:"),
    new_code_cell("""with eraser.attached(model):
    hooked = model.module.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
assert hooked[:, enc["input_ids"].shape[1]:].tolist() == ids[:, enc["input_ids"].shape[1]:].tolist()
print("identical ids through nnsight and through plain hooks")"""),
]

ABLATIONS = [
    new_markdown_cell("# The paper's ablations at matched forgetting, on people the fit never saw\n\n"
                      "`studies.ablations` changes one part of MLLMEraser at a time (direction variant and PGD "
                      "objective, PGD budget, layers, map, gate kind, the reference setting). Each variant's "
                      "strength is searched on the rehearsal (validation stand-ins) until its leakage reaches a "
                      "common target, or it is reported unable; then the variants are compared where they forget "
                      "equally, on the recall of held-out retain and real people. This notebook runs a reduced "
                      "configuration (one seed, two studies, a few people, a short grid) in a few minutes; "
                      "`mllmeraser ablations` runs them all on three seeds (docs/results.md, \"The paper's "
                      "ablations at matched forgetting\")."),
    new_code_cell(SETUP),
    new_code_cell("""import sys
from pathlib import Path

# The study lives in the repository's studies/ folder (not installed): find the clone's root from here.
sys.path.insert(0, str(next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "studies").is_dir())))
from studies.ablations import AblationConfig, run_ablations, summarise, check_claims, plot_strength_curves, plot_matched
from toolkit import SHIPPED, load_model
from toolkit.adversarial import PGDConfig

model = load_model("default")
cfg = AblationConfig(seeds=(0,), studies=("direction", "map"), lams=(1.0, 4.0, 16.0), max_people=4,
                     job=SHIPPED.with_fit(pgd=PGDConfig(steps=5), pgd_limit=4, n_contrast=24))
result = run_ablations(model, None, cfg)
curves, matched = result["curves"], result["matched"]
matched[["study", "variant", "target", "status", "lam", "stand-ins", "heldout_recall"]]"""),
    new_markdown_cell("PGD's flip rate on the contrastive pairs, per direction: where it flips none, the multimodal "
                      "direction's image side carries no refusal-to-recall contrast (docs/limits.md)."),
    new_code_cell("""result["pgd"][["seed", "direction", "refused_clean", "pgd_attacked", "pgd_success"]]"""),
    new_markdown_cell("## Each variant's search, the matched points, the paper's claims"),
    new_code_cell("""fig = plot_strength_curves(curves, cfg.targets)"""),
    new_code_cell("""fig = plot_matched(matched, 0.20)"""),
    new_code_cell("""summarise(matched)[["target", "study", "variant", "reached", "lam", "heldout_recall"]]"""),
    new_code_cell("""check_claims(matched, 0.20)"""),
]

ERASE_YOUR_OWN = [
    new_markdown_cell("# Erase your own people\n\n"
                      "A forget list and a retain list written by hand (JSONL or CSV, one row per question: "
                      "`person`, `question`, `answer`, optional `image`, `fact`, `options`, `task`; "
                      "`docs/data.md`), then one call that splits the kept people into fit / validation / evaluation "
                      "people, fits the eraser, chooses gate, layer and strength on the rehearsal (validation people "
                      "stand in for your forget list) and reports before / after on your forget people and on "
                      "held-out people. Here on the embedded default with `examples/my_people/` (three people to "
                      "forget, sixteen to keep; about a minute on 2 CPU cores)."),
    new_code_cell(SETUP),
    new_markdown_cell("## The one cell to change for a real checkpoint\n"
                      "Model id, dtype and device; and your lists, about people that model knows. For "
                      "LLaVA-1.5-7B in bf16 on one GPU expect at least 17.2 GiB (13.2 GiB of weights, 4 GiB of fit "
                      "statistics for all 32 layers) plus one batch of activations: `docs/install.md`."),
    new_code_cell("""MODEL = "default"                 # e.g. "llava-hf/llava-1.5-7b-hf" or a checkpoint directory
LOAD = {}                         # on a GPU: {"dtype": "bfloat16", "device_map": "cuda"}
FORGET = "examples/my_people/forget.jsonl"   # your lists; relative paths are read from the clone's root below
RETAIN = "examples/my_people/retain.csv"
OUT = "results/my_people"

from pathlib import Path
# Jupyter starts a notebook in its own folder (notebooks/); the example lives at the clone's root.
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "examples" / "my_people").is_dir())
FORGET, RETAIN, OUT = (p if Path(p).is_absolute() else ROOT / p for p in (FORGET, RETAIN, OUT))
"""),
    new_markdown_cell("## The lists, as read\nEvery problem in a file is one line naming the file, the row and "
                      "the fix."),
    new_code_cell("""import pandas as pd
from toolkit.data.request import read_people

forget_people, retain_people = read_people(FORGET), read_people(RETAIN)
pd.DataFrame([{"person": p.id, "images": len(p.image_bytes), "questions": len(p.generation),
               "MCQ": len(p.classification), "cloze": len(p.cloze)} for p in forget_people])"""),
    new_markdown_cell("## One call"),
    new_code_cell("""from toolkit import load_model, erase

model = load_model(MODEL, **LOAD)
result = erase(model, FORGET, RETAIN, out=OUT)
info = result.info
print(f"chosen on the rehearsal: {info['gate']} gate, layer {info['layer']}, lambda {info['lam']}, "
      f"positions {info['positions']}; people {info['people']['retain']}")
result.table.set_index("method").T"""),
    new_markdown_cell("`held_out_*` are the forget people's questions that `erase` kept out of the fit, the "
                      "rehearsal and the calibration (a seeded 20 % of each person's, and every row marked "
                      "`held_out`): the only forget figures that say whether the eraser learned the person rather "
                      "than the questions, and the first line of `report.md`. `retain_*` are evaluation people: "
                      "neither the fit nor the choice of settings read them. `in_fit_*` are people whose activations "
                      "built the fit, shown beside them."),
    new_code_cell("""import seaborn as sns
rows = result.table.set_index("method")
bars = pd.DataFrame([{"method": m, "people": who, "answers with the fact (%)": rows.loc[m, col]}
                     for m in rows.index for who, col in (("forget, read by the fit", "forget_leak_img"),
                                                          ("forget, held out of the fit", "held_out_leak_img"),
                                                          ("held-out kept people", "retain_recall"),
                                                          ("kept people in the fit", "in_fit_retain_recall"))
                     if col in rows])
ax = sns.barplot(bars, x="people", y="answers with the fact (%)", hue="method")
ax.set(xlabel="", ylim=(0, 105), title="answers that contain the fact, before and after erasing")
ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
ax.tick_params(axis="x", rotation=20)"""),
    new_markdown_cell("## The eraser it wrote, inside your own nnsight block\n"
                      "The file holds the chosen layer, gate and strength; `mask=` lets a gate that reads the "
                      "prompt's mean skip left padding."),
    new_code_cell("""import nnsight
from toolkit import Sample, Eraser

eraser = Eraser.load(f"{OUT}/eraser.safetensors", model)
asked = [Sample(q.question, forget_people[0].image_bytes[q.image] if q.modality == "image" else None)
         for q in forget_people[0].generation[:2]]
enc = model.encode(asked, device=model.device)
width = enc["input_ids"].shape[1]
with torch.no_grad(), model.nn.generate(max_new_tokens=24, do_sample=False) as tracer:
    with tracer.invoke(**enc):
        eraser.intervene(model, inputs=enc)
    with tracer.invoke():
        ids = nnsight.save(tracer.result)
with torch.no_grad():
    plain = model.module.generate(**enc, max_new_tokens=24, do_sample=False)
for q, before, after in zip(asked, model.decode(plain[:, width:]), model.decode(ids[:, width:])):
    print(f"{q.text}\\n  without the eraser: {before}\\n  with it:            {after}")"""),
    new_markdown_cell("The same file as hooks around the plain HF `generate`, removed when the block ends:"),
    new_code_cell("""with torch.no_grad(), eraser.attached(model):
    hooked = model.module.generate(**enc, max_new_tokens=24, do_sample=False)
assert hooked[:, width:].tolist() == ids[:, width:].tolist()
print("identical ids through nnsight and through plain hooks")"""),
]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: regenerating changes only what was edited
    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    nbformat.write(nb, path)
    print("wrote", path)


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_probe_report.ipynb", PROBES)
    write("03_layer_sensitivity.ipynb", SENSITIVITY)
    write("04_bring_your_own_checkpoint.ipynb", BRING_YOUR_OWN)
    write("05_ablations.ipynb", ABLATIONS)
    write("06_erase_your_own_people.ipynb", ERASE_YOUR_OWN)
