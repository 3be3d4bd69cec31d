"""The library's import graph: no circle anywhere in toolkit/ (function-level imports included), and toolkit/
imports nothing from the probes, the experiments (CLI, demo, compare, training of the defaults) or the studies."""

import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("experiments", "probes", "studies")


def _structure():
    """tools/structure_report.py, the one reading of the import graph (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("structure_report", ROOT / "tools" / "structure_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_graph() -> dict[str, set[str]]:
    return _structure().module_graph(ROOT, outside=EXPERIMENTS)


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


def test_no_import_points_up_the_data_path():
    """Each module imports only from its own stage of the data path or an earlier one (the stages are
    tools/structure_report.py's STAGES: samples, activations, direction / null space, configuration, eraser, fit,
    evaluation, the job)."""
    structure = _structure()
    graph = structure.module_graph(ROOT)
    up = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if structure.stage(b) > structure.stage(a)]
    assert not up, up
    assert structure.stage("toolkit.fitter") < structure.stage("toolkit.pipeline") < structure.stage("toolkit.job")


def test_toolkit_imports_no_probes_and_no_experiment_code():
    graph = module_graph()
    offending = {name: sorted(d for d in deps if d.split(".")[0] in EXPERIMENTS) for name, deps in graph.items()}
    assert not {k: v for k, v in offending.items() if v}


def test_every_module_imports_on_its_own():
    for name in sorted(module_graph()):
        importlib.import_module(name)


def test_the_fitter_and_the_direction_are_maths():
    """Concept-erasure's shape: the streaming fitter and the direction take tensors and load no model code (no
    tracing, no nnsight, no transformers); capture lives in toolkit.pipeline."""
    import subprocess
    import sys

    code = ("import sys, toolkit.fitter, toolkit.direction, toolkit.nullspace; "
            "print(sorted({m.split('.')[0] if not m.startswith('toolkit') else m for m in sys.modules "
            "if m.startswith(('nnsight', 'transformers', 'toolkit.tracing', 'toolkit.models', 'toolkit.pipeline'))}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
    graph = module_graph()
    assert not graph["toolkit.fitter"] & {"toolkit.tracing", "toolkit.pipeline", "toolkit.models.loading"}


def test_the_public_face_names_what_a_user_needs():
    import toolkit

    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name
    # The names resolve to one home each; the job's function stays callable even after its old module is imported.
    import toolkit.erase as old  # noqa: F401  (kept one release)
    from toolkit.job import erase

    import pytest

    with pytest.raises(ValueError, match="A forget list needs a retain list"):
        toolkit.erase(None, "forget.jsonl")  # the module now bound to toolkit.erase calls the job
    assert old.erase is erase and toolkit.EraserFitter.__module__ == "toolkit.fitter"
