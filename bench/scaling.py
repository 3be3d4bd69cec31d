"""Fit time and GA time against the language model's width at a fixed depth: where the fit becomes the cheaper method.

    .venv/bin/python bench/scaling.py [--widths 256,1024,2048,4096] [--out docs/scaling.png] [--json out.json]
    .venv/bin/python bench/scaling.py --replot out.json     # redraw a run's figure

For each width, a LLaVA-1.5-shaped model (CLIP-L/336 vision tower, 576 image tokens, vocabulary 32064,
heads of 128, LLaVA's MLP ratio) with 2 decoder layers is built with random bf16 weights and every unit
cost of ``bench/real_shapes.py`` is measured on it in this run; the fit of all 32 layers and a GA run are
then projected on MLLMU-Bench forget_10 with ``real_shapes.project`` (formulas printed). Width 4096 is
LLaVA-1.5-7B's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import real_shapes  # noqa: E402

DEPTH = 32  # LLaVA-1.5-7B's decoder layers


def projected(unit: dict) -> dict[str, float]:
    """``{line: value}`` of a unit's projection (``real_shapes.project``)."""
    return {what: value for what, value, _ in unit["projection"]}


def plot(rows: list[dict], out: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [r["width"] for r in rows]
    fit = [projected(r)["fit, all layers"] / 3600 for r in rows]
    ga = [projected(r)["GA"] / 3600 for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(widths, fit, "o-", label="eraser fit, all 32 layers (captures + PGD + solve)")
    ax.plot(widths, ga, "s--", label="GA training (4 epochs on the forget QA)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("language-model width d (32 decoder layers, 576 image tokens)")
    ax.set_ylabel("projected hours on MLLMU-Bench forget_10")
    ratios = [f / g for f, g in zip(fit, ga)]
    ax.set_title(f"The fit costs {ratios[0]:.1f}x GA at d = {widths[0]} and {ratios[-1]:.1f}x at d = {widths[-1]}",
                 fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.06), ncol=1, frameon=False, fontsize=9)
    fig.text(0.01, 0.01, f"unit costs measured on 2-layer slices, {machine}", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="256,1024,2048,4096")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/scaling.png"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--replot", type=Path, help="redraw the figure from an earlier run's --json file")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(args.replot.read_text())
        plot(saved["results"], args.out, saved["machine"])
        return
    torch = real_shapes.torch
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else real_shapes.machine()
    print(f"machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    counts = real_shapes.benchmark_counts()
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        unit = real_shapes.measure("llava-1.5-7b", args.batch, args.reps, full=False, width=width)
        unit["projection"] = real_shapes.project(unit, counts, DEPTH)
        rows.append(unit)
        table = projected(unit)
        print(f"d = {width:5d}: capture {table['capture per prompt, full model']:.3f} s a prompt; fit "
              f"{table['fit, all layers']:9.0f} s (PGD {table['PGD']:.0f}, solve {table['solve (eigh + map), all layers']:.0f}); "
              f"GA {table['GA']:8.0f} s; fit / GA {table['fit / GA']:.2f}", flush=True)
    plot(rows, args.out, machine)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "counts": counts, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
