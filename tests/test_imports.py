"""The library's import graph: no circle anywhere in toolkit/ (function-level imports included), and toolkit/
imports nothing from the probes or the experiments (CLI, demo, compare, training of the defaults)."""

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("experiments", "probes")


def module_graph() -> dict[str, set[str]]:
    files = {}
    for f in (ROOT / "toolkit").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
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
        graph[name] = {d for d in deps if d != name and (d in files or d.split(".")[0] in EXPERIMENTS)}
    return graph


def test_no_import_circle_in_toolkit():
    graph = module_graph()
    cycles = []

    def visit(node, path):
        for dep in graph.get(node, ()):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep in graph and len(path) < 30:
                visit(dep, path + [dep])

    for start in graph:
        visit(start, [start])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])


def test_toolkit_imports_no_probes_and_no_experiment_code():
    graph = module_graph()
    offending = {name: sorted(d for d in deps if d.split(".")[0] in EXPERIMENTS) for name, deps in graph.items()}
    assert not {k: v for k, v in offending.items() if v}


def test_every_module_imports_on_its_own():
    for name in sorted(module_graph()):
        importlib.import_module(name)
