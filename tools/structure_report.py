"""The structure figures a review reads: configs, defaults, the import graph, the longest code, repeated blocks.

    .venv/bin/python tools/structure_report.py [--root DIR] [--json OUT]

Static: it parses the files of ``DIR`` (default: this checkout; give another checkout, e.g. a ``git worktree`` of
an earlier commit, to compare) and imports nothing from them. It prints

* **configs**: the fields of every config dataclass in ``toolkit/``, ``experiments/``, ``studies/`` and ``tools/``
  (aliases named), and the field names that more than one of the erasure's configs spells (:data:`ERASURE`);
* **defaults written**: ``default=`` in the CLI (``experiments/cli.py``), and the keyword parameters with a
  default of ``fit_from_samples`` and ``EraserFitter.eraser`` (the loose spellings of the fit's knobs);
* **import graph** of ``toolkit/`` (module-level and function-level imports, ``if TYPE_CHECKING`` blocks left
  out): arrows, circles, and imports that point up the data path (a module importing one of a later stage,
  by :data:`STAGES`);
* the **longest function and class** in ``toolkit/``, ``experiments/`` and ``studies/`` (``tools/`` in the old
  layout);
* pairs of repeated blocks of six lines or more (the ``duplicates`` command, where it is installed).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

# The data path, in order; a module may import from its own stage or an earlier one. Modules not named sit at
# the stage of their package's entry, else at the end.
STAGES = [
    # samples: loading, data, metrics
    ("models", "data", "metrics", "memory"),
    # activations: capture, reads, steering hooks, PGD on images, the contrastive sets
    ("tracing", "prefix", "reads", "steering", "adversarial", "contrastive"),
    # direction, null space, gates (and the name gate, text in): tensors in, tensors out
    ("direction", "nullspace", "gates", "names"),
    # the configuration (plain data, above the maths it names)
    ("config",),
    # the eraser and the fitter that solves it
    ("eraser", "fitter"),
    # the pipeline that feeds the fitter, and the fit on a benchmark
    ("pipeline", "benchmark_fit", "fit"),
    # evaluation, selection, reports
    ("evaluate", "judge", "selection", "attacks", "headline", "goals", "report"),
    # the job and the baselines
    ("job", "erase", "baselines"),
]


# The configs of the erasure itself (the job, its fit, its rehearsal, the study that reruns them).
ERASURE = ("FitConfig", "SelectConfig", "EraseConfig", "AblationConfig", "DemoConfig")


def stage(module: str) -> int:
    parts = module.split(".")[1:]  # drop "toolkit"
    for i, names in enumerate(STAGES):
        if parts and parts[0] in names:
            return i
    return len(STAGES)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def module_graph(root: Path, outside: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """``{module: modules of toolkit/ it imports}`` (``outside``: also keep imports of these top-level packages)."""
    files = {}
    for f in (root / "toolkit").rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(f.read_text())
        skip = {id(n) for t in ast.walk(tree) if _type_checking(t) for n in ast.walk(t)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    target = f"{module}.{alias.name}"
                    deps.add(target if target in files else module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d != name and d != "toolkit" and (d in files or d.split(".")[0] in outside)}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = set()

    def visit(node, path):
        for dep in graph.get(node, ()):
            if dep in path:
                cycle = path[path.index(dep):]
                k = cycle.index(min(cycle))
                found.add(tuple(cycle[k:] + cycle[:k]))
            elif len(path) < 30:
                visit(dep, path + [dep])

    for start in graph:
        visit(start, [start])
    return [list(c) for c in sorted(found)]


def configs(root: Path) -> dict[str, list[str]]:
    out = {}
    for folder in ("toolkit", "experiments", "studies", "tools"):
        for f in sorted((root / folder).rglob("*.py")) if (root / folder).exists() else []:
            tree = ast.parse(f.read_text())
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and any(
                        "dataclass" in ast.unparse(d) for d in node.decorator_list):
                    out[node.name] = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign)]
                elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                        and node.targets[0].id.endswith("Config") and isinstance(node.value, ast.Name) \
                        and node.value.id.endswith("Config"):
                    out[node.targets[0].id] = [f"(alias of {node.value.id})"]
    return out


def loose_keywords(root: Path) -> dict[str, int]:
    """Keyword parameters with a default of the two entry points that used to spell the fit's knobs loosely."""
    out = {}
    for f in (root / "toolkit").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == "EraserFitter":
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "eraser":
                        a = item.args
                        out["EraserFitter.eraser"] = len(a.defaults) + sum(d is not None for d in a.kw_defaults)
            elif isinstance(node, ast.FunctionDef) and node.name == "fit_from_samples":
                a = node.args
                out["fit_from_samples"] = len(a.defaults) + sum(d is not None for d in a.kw_defaults)
    return out


def longest(root: Path) -> dict[str, tuple[str, int]]:
    best = {"function": ("", 0), "class": ("", 0)}
    for folder in ("toolkit", "experiments", "studies", "tools", "probes"):
        if not (root / folder).exists():
            continue
        for f in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                kind = "class" if isinstance(node, ast.ClassDef) else "function" if isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
                if kind:
                    n = node.end_lineno - node.lineno + 1
                    if n > best[kind][1]:
                        best[kind] = (f"{f.relative_to(root)}:{node.name}", n)
    return best


def duplicate_pairs(root: Path) -> int | None:
    if not shutil.which("duplicates"):
        return None
    out = subprocess.run(["duplicates", "--repo", str(root), "--most", "1", "--seconds", "120"], capture_output=True,
                         text=True).stdout
    m = re.search(r"(\d+) pairs?", out)
    return int(m[1]) if m else 0 if "no duplicates" in out else None


def report(root: Path) -> dict:
    graph = module_graph(root)
    up = sorted((a, b) for a, deps in graph.items() for b in deps if stage(b) > stage(a))
    cfg = configs(root)
    names: dict[str, list[str]] = {}
    for cls, fields in cfg.items():
        if cls not in ERASURE:
            continue
        for name in fields:
            names.setdefault(name, []).append(cls)
    cli = root / "experiments" / "cli.py"
    return {"configs": {k: len(v) if not v[0].startswith("(alias") else v[0] for k, v in cfg.items()},
            "fields in more than one of the erasure configs": {k: v for k, v in sorted(names.items()) if len(v) > 1},
            "default= in experiments/cli.py": cli.read_text().count("default=") if cli.exists() else None,
            "loose keyword defaults": loose_keywords(root),
            "modules": len(graph), "arrows": sum(map(len, graph.values())), "circles": circles(graph),
            "imports up the data path": [f"{a} -> {b}" for a, b in up],
            "longest": {k: f"{v[0]} ({v[1]} lines)" for k, v in longest(root).items()},
            "toolkit public names": _public(root), "repeated blocks (6+ lines)": duplicate_pairs(root)}


def _public(root: Path) -> int:
    tree = ast.parse((root / "toolkit" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return sum(1 for e in node.value.elts if not isinstance(e, ast.Starred)) + sum(
                len(ast.literal_eval(n.value)) for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "_PUBLIC" for e in node.value.elts if isinstance(e, ast.Starred))
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures there")
    args = ap.parse_args()
    result = report(args.root)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
