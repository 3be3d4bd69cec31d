"""The documentation site builds with no warning, and its pages hold what they promise."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_docs_build_with_no_warning(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinxarg")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                            str(DOCS), str(tmp_path / "html")], capture_output=True, text=True, cwd=ROOT)
    assert build.returncode == 0 and "WARNING" not in build.stderr, build.stderr[-3000:]
    html = tmp_path / "html"
    cli = (html / "cli.html").read_text()
    from experiments.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:  # the CLI reference is generated from the parser: every command is there
        assert f'id="mllmeraser-{name}"' in cli, name
    api = (html / "api.html").read_text()
    assert "toolkit.job.erase" in api and "toolkit.data.request.read_people" in api
    # Config fields are documented with their meaning (attribute docstrings, also the CLI's help texts).
    assert "toolkit.config.FitConfig.retain_budget" in api and "toolkit.config.SHIPPED" in api
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert (html / "tutorials" / f"{notebook.stem}.html").exists(), notebook.name
    shutil.rmtree(tmp_path / "html")


def test_results_hold_no_figure_of_an_earlier_model():
    """Earlier models' figures live in the research log, never beside current ones."""
    text = (DOCS / "results.md").read_text()
    for word in ("previous default", "previous recipe", "instruction-rule default", "previous `default",
                 "earlier default", "previous session"):
        assert word not in text, word
    assert re.findall(r"\*Recorded 2026-\d\d-\d\d\.\*", text), "each section says when it was recorded"
    log = (DOCS / "research-log.md").read_text()
    headings = re.findall(r"^## (\d{4}-\d\d-\d\d): ", log, re.M)
    assert len(headings) >= 10  # dated entries


def test_every_docs_page_is_in_the_site():
    index = (DOCS / "index.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.stem != "index":
            assert re.search(rf"^{page.stem}$", index, re.M), f"{page.name} is not in the index's toctree"
