"""Every code block of the README runs as written: the quickstart (and its three routes agree), the erase
command and the eraser it wrote in the user's own nnsight block, and the two `make` commands (dry run:
they name the targets that exist)."""

import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_the_readme_is_short_and_every_block_is_one_this_file_runs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    opening = re.findall(r"^```(\w+)$", text, re.M)
    assert len(re.findall(r"^```", text, re.M)) == 2 * len(opening)  # no block without a language
    assert sorted(opening) == ["bash", "bash", "python", "python"], opening


@pytest.fixture
def in_a_copy(tmp_path, monkeypatch):
    """The README's relative paths (examples/..., results/...) from a scratch folder, not the repository."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_python_block(section: str, folder: Path) -> dict:
    """Run the first Python block under README heading ``section`` as a script; its globals."""
    block = re.search(rf"## {section}.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    script = folder / "readme_block.py"  # nnsight reads a trace's source back from its file
    script.write_text(block)
    return runpy.run_path(str(script))


def test_readme_quickstart_runs_and_routes_agree(tmp_path):
    scope = run_python_block("Quickstart", tmp_path)
    from toolkit import tracing

    model, eraser, forget, enc = scope["model"], scope["eraser"], scope["forget"], scope["enc"]
    width = enc["input_ids"].shape[1]
    want = tracing.generate(model, forget[:2], steers=eraser, max_new_tokens=24, return_ids=True)
    for row, w in enumerate(want):
        assert scope["ids"][row, width: width + len(w)].tolist() == w.tolist()
        assert scope["out"][row, width: width + len(w)].tolist() == w.tolist()
    gates = scope["gates"].per_step(7)
    assert len(gates) >= 1 and all(isinstance(g, float) for g in gates)
    assert torch.isfinite(torch.tensor(gates)).all()


def test_readme_erase_command_then_its_eraser_in_the_user_s_own_block(in_a_copy, capsys):
    """The bash block (`mllmeraser erase ...`) as written, then the Python block that loads what it wrote."""
    from experiments.cli import main
    from toolkit import Sample, tracing

    command = next(b for b in blocks("bash") if "mllmeraser erase" in b).strip()
    argv = shlex.split(command)
    # As written after `make demo`: the command installed into .venv (main() is what it runs).
    assert argv[0] == ".venv/bin/mllmeraser"
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    assert "chosen on the rehearsal" in out and "forget_leak_img" in out
    report = (in_a_copy / "results" / "my_people" / "report.md").read_text()
    assert "| vanilla " in report and "| MLLMEraser " in report

    scope = run_python_block("Erase your own people", in_a_copy)
    model, eraser, enc, ids = scope["model"], scope["eraser"], scope["enc"], scope["ids"]
    width = enc["input_ids"].shape[1]
    asked = [Sample("Where was the person in the image born?", "examples/my_people/images/vuvos_zibrigo.png")]
    want = tracing.generate(model, asked, steers=eraser, max_new_tokens=24, return_ids=True)[0]
    assert ids[0, width: width + len(want)].tolist() == want.tolist()  # the user's block = the toolkit's call
    plain = tracing.generate(model, asked, max_new_tokens=24)[0]
    steered = model.decode(ids[:, width:])[0]
    assert "Marbury" in plain and "Marbury" not in steered  # as the block's comment says


def test_readme_make_commands_name_targets_that_exist():
    block = next(b for b in blocks("bash") if "make demo" in b)
    targets = [line.split()[1] for line in block.splitlines() if line.startswith("make ")]
    assert targets == ["demo", "test"]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert ("experiments.cli demo" if target == "demo" else "pytest -q") in dry.stdout
