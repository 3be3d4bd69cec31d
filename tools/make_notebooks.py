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
from toolkit.models.default import default_benchmark

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
from toolkit.models.default import default_benchmark
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
]

SENSITIVITY = [
    new_markdown_cell("# Layer-sensitivity study\n\nSteer one layer at a time, then cumulatively, across a lambda "
                      "grid; find each layer's operating window on validation questions (other phrasings of the same "
                      "facts, never the evaluation questions); recommend a setting; run the full erasure with it."),
    new_code_cell(SETUP),
    new_code_cell("""from toolkit import load_model
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import validation_samples
from toolkit.models.default import default_benchmark
from toolkit.adversarial import PGDConfig
from toolkit.fit import FitConfig, fit_eraser
from probes import steering_effects, plots

model = load_model("default")
bench = MLLMUBench(default_benchmark())
layers = list(range(model.num_layers))
from toolkit.nullspace import FixedRatio
fit = fit_eraser(model, bench, FitConfig(layers=tuple(layers), n_contrast=16, pgd=PGDConfig(steps=20),
                                         rank_policy=FixedRatio(0.5), retain_weight=20.0))
fv, fa = validation_samples(bench.forget(10))
rv, ra = validation_samples(bench.retain(10)[:30])
sets, answers = {"forget": fv, "retain": rv}, {"forget": fa, "retain": ra}
lams = [1.0, 2.0, 3.0, 4.0, 6.0]"""),
    new_markdown_cell("## One layer at a time"),
    new_code_cell("""single = steering_effects.steering_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
                                       sets, layers, lams, answers=answers)
plots.plot_grid(single)"""),
    new_markdown_cell("## Cumulatively (layers 0..l together): layers compound"),
    new_code_cell("""cumulative = steering_effects.steering_grid(model, lambda ls, lam: fit.eraser.with_options(layers=ls, lam=lam),
                                           sets, layers, lams, cumulative=True)
plots.plot_grid(cumulative)"""),
    new_markdown_cell("## Operating windows and the recommendation"),
    new_code_cell("""window = steering_effects.operating_window(single, forget_min=0.9, retain_max=0.03)
layer, lam = steering_effects.recommend(window)
print(f"recommended: layer {layer}, lambda {lam}")
window.drop(columns=['ok_lams'])"""),
    new_markdown_cell("## The full erasure with the recommended setting, on the benchmark's own questions"),
    new_code_cell("""from toolkit.evaluate import items_from_profiles, run_items, summarize
eraser = fit.eraser.with_options(layers=[layer], lam=lam)
items = (items_from_profiles(bench.forget(10), "Forget") + items_from_profiles(bench.test(10), "Test", all_images=True)
         + items_from_profiles(bench.retain(10)[:20], "Retain"))
vanilla = run_items(model, items)
erased = run_items(model, items, steers=eraser)
import pandas as pd
table = pd.concat([summarize(vanilla).assign(method="vanilla"), summarize(erased).assign(method="MLLMEraser")])
table.round(3)"""),
    new_code_cell("""def share(df, split, task, col, modality=None):
    s = df[(df.split == split) & (df.task == task)]
    s = s[s.modality == modality] if modality else s
    return float(s[col].mean())

leak = share(erased, "Forget", "generation", "leaked", "image")
retain_drop = share(vanilla, "Retain", "classification", "accuracy") - share(erased, "Retain", "classification", "accuracy")
print(f"forget image+text leakage: {leak:.3f} (bar: <= 0.05)")
print(f"retain MCQ accuracy drop:   {retain_drop:.3f} (bar: <= 0.05)")
print("meets the bar" if leak <= 0.05 and retain_drop <= 0.05 else "misses the bar: see the operating windows above")
"""),
]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path = Path(__file__).resolve().parent.parent / "notebooks" / name
    nbformat.write(nb, path)
    print("wrote", path)


if __name__ == "__main__":
    write("01_quickstart.ipynb", QUICKSTART)
    write("02_probe_report.ipynb", PROBES)
    write("03_layer_sensitivity.ipynb", SENSITIVITY)
