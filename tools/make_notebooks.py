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
from toolkit.fit import FitConfig
from probes.report import probe_report

model = load_model("default")
bench = MLLMUBench(default_benchmark())
report = probe_report(model, bench, forget_ratio=10,
                      fit_config=FitConfig(layers=tuple(range(model.num_layers)), n_contrast=16,
                                           pgd=PGDConfig(steps=20)))
report.fit.report["contrast"], report.fit.report.get("pgd_success_rate")"""),
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
    new_markdown_cell("## Per-layer steering effects across lambda (validation questions)"),
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
    new_markdown_cell("# Layer-sensitivity study\n\nSteer one layer at a time, then cumulatively, across a lambda "
                      "grid, on validation questions (other phrasings of the same facts, never the evaluation "
                      "questions). The next-token grid (seconds) shortlists layers; generating answers at each "
                      "shortlisted (layer, lambda) shows where forget stops leaking while retain recall holds; the "
                      "chosen setting then runs the full erasure on the benchmark's own questions."),
    new_code_cell(SETUP),
    new_code_cell("""from toolkit import load_model
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import validation_items, validation_samples
from toolkit.data.synthetic import default_benchmark
from experiments.demo import DemoConfig
from toolkit.fit import fit_eraser
from probes import steering_effects, plots

model = load_model("default")
bench = MLLMUBench(default_benchmark())
layers = list(range(model.num_layers))
cfg = DemoConfig()  # rank ratio 0.97, retain weight 40, answer weight 0.3 (chosen on validation questions)
fit = fit_eraser(model, bench, cfg.fit_config(tuple(layers)))
fv, fa = validation_samples(bench.forget(cfg.forget_ratio))
rv, ra = validation_samples(bench.retain(cfg.forget_ratio)[: cfg.validation_retain_people])
sets, answers = {"forget": fv, "retain": rv}, {"forget": fa, "retain": ra}
lams = list(cfg.lams)
steer = lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam)"""),
    new_markdown_cell("## One layer at a time (next token)"),
    new_code_cell("""single = steering_effects.steering_grid(model, steer, sets, layers, lams, answers=answers)
plots.plot_grid(single)"""),
    new_markdown_cell("## Cumulatively (layers 0..l together): layers compound"),
    new_code_cell("""cumulative = steering_effects.steering_grid(model, steer, sets, layers, lams, cumulative=True)
plots.plot_grid(cumulative)"""),
    new_markdown_cell("## Shortlist, then generate: leakage and recall per (layer, lambda)"),
    new_code_cell("""shortlist = steering_effects.shortlist_layers(single, cfg.shortlist, retain_max=cfg.retain_max)
validation = {"forget": validation_items(bench.forget(cfg.forget_ratio), "forget"),
              "retain": validation_items(bench.retain(cfg.forget_ratio)[: cfg.validation_retain_people], "retain")}
leak = steering_effects.leakage_grid(model, steer, validation, shortlist, lams)
layer, lam = steering_effects.choose_setting(leak, retain_max=cfg.retain_max)
print(f"shortlisted layers {shortlist}; chosen: layer {layer}, lambda {lam}")
plots.plot_leakage_grid(leak)"""),
    new_markdown_cell("## The full erasure with the chosen setting, on the benchmark's own questions"),
    new_code_cell("""from toolkit.evaluate import items_from_profiles, run_items, summarize
eraser = fit.eraser.with_options(layers=[layer], lam=lam)
items = (items_from_profiles(bench.forget(10), "Forget") + items_from_profiles(bench.test(10), "Test", all_images=True)
         + items_from_profiles(bench.retain(10)[:20], "Retain"))
vanilla = run_items(model, items, batch_size=48)
erased = run_items(model, items, steers=eraser, batch_size=48)
import pandas as pd
table = pd.concat([summarize(vanilla).assign(method="vanilla"), summarize(erased).assign(method="MLLMEraser")])
table.round(3)"""),
    new_code_cell("""def share(df, split, task, col, modality=None):
    s = df[(df.split == split) & (df.task == task)]
    s = s[s.modality == modality] if modality else s
    return float(s[col].mean())

leak_img = share(erased, "Forget", "generation", "leaked", "image")
leak_txt = share(erased, "Forget", "generation", "leaked", "text")
retain_drop = share(vanilla, "Retain", "classification", "accuracy") - share(erased, "Retain", "classification", "accuracy")
print(f"forget leakage, image+text questions: {leak_img:.3f} (bar: <= 0.05); text-only questions: {leak_txt:.3f}")
print(f"retain MCQ accuracy drop:              {retain_drop:.3f} (bar: <= 0.05)")
print("meets the bar" if leak_img <= 0.05 and retain_drop <= 0.05 else "misses the bar: see the grids above")
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
                      "(activations on any device and dtype); `add_samples` captures lists of samples for you."),
    new_code_cell("""from toolkit.fitter import EraserFitter
from toolkit.nullspace import FixedRatio

fitter = EraserFitter(model.hidden_size, layers=[1])
fitter.update_retain({1: retain_acts})
fitter.add_samples(model, "forget", forget)
fitter.add_samples(model, "refusal", [Sample("do not say who this is", image(i)) for i in range(4)])
fitter.add_samples(model, "recall", [Sample("who is this", image(i)) for i in range(4)])
eraser = fitter.eraser(FixedRatio(0.5), gamma=1e-4, lam=20.0, positions="all", fingerprint=model.fingerprint())
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
