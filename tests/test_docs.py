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
    # Every probe's functions, not only the package's docstring; the goals every page checks against.
    assert "probes.separability.separability" in api and "probes.nullspace_rank" in api, "probes' functions"
    assert "toolkit.goals.check_goals" in api and "toolkit.config.FitConfig.gate_pool" in api
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
    for section in re.split(r"^(?=## )", text, flags=re.M)[1:]:  # each section says when it was recorded
        assert re.search(r"[Rr]ecorded 20\d\d-\d\d-\d\d", section), section.splitlines()[0]
    log = (DOCS / "research-log.md").read_text()
    headings = re.findall(r"^## (\d{4}-\d\d-\d\d): ", log, re.M)
    assert len(headings) >= 10  # dated entries


def test_every_docs_page_is_in_the_site():
    index = (DOCS / "index.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.stem != "index":
            assert re.search(rf"^{page.stem}$", index, re.M), f"{page.name} is not in the index's toctree"


SETTINGS = re.compile(r"[Ss]ettings `([0-9a-f]{8})`")
NO_SETTINGS = "settings: none"


def stale_sections(text: str, current: str, options: set[str] = frozenset()) -> list[str]:
    """The ``## `` sections of a results page that name no settings fingerprint, or one that is neither ``current``
    nor, beside it, one of ``options`` (today's settings with one option on, ``toolkit.config.option_fingerprints``);
    sections under a ``# Earlier settings`` heading are exempt. A section that runs no erasure says
    "settings: none" and why."""
    stale, earlier = [], False
    for block in re.split(r"^(?=#{1,2} )", text, flags=re.M):
        heading = block.splitlines()[0] if block.strip() else ""
        if heading.startswith("# "):
            earlier = heading.lower().startswith("# earlier settings")
        if not heading.startswith("## ") or earlier:
            continue
        named = set(SETTINGS.findall(block))
        if (not named and NO_SETTINGS not in block.lower()) or named - {current} - set(options) \
                or (named & set(options) and current not in named):
            stale.append(heading)
    return stale


def test_every_results_section_names_todays_settings():
    """A change of the shipped configuration changes its fingerprint, and every section measured with the old one
    fails here until it is re-run or moved to the research log."""
    from toolkit.config import option_fingerprints, settings_fingerprint

    text = (DOCS / "results.md").read_text()
    current = settings_fingerprint()
    options = set(option_fingerprints().values())
    assert f"`{current}`" in text.split("\n## ")[0], "the page's opening names today's fingerprint"
    assert stale_sections(text, current, options) == []
    # Stale one section on purpose: the check must catch it, and only it.
    sections = re.split(r"^(?=## )", text, flags=re.M)
    i = next(i for i, b in enumerate(sections) if b.startswith("## ") and f"`{current}`" in b)
    staled = "".join(sections[:i] + [sections[i].replace(f"`{current}`", "`0badc0de`")] + sections[i + 1:])
    assert stale_sections(staled, current, options) == [sections[i].splitlines()[0]]
    assert stale_sections(text + "\n## A new section\n\nNo settings named.\n", current, options) == \
        ["## A new section"]
    moved = text + "\n# Earlier settings\n\n## Old\n\nSettings `0badc0de`.\n"
    assert stale_sections(moved, current, options) == []
    # An option's fingerprint counts only beside today's (the option measured against today's settings).
    option = next(iter(options))
    assert stale_sections(f"## With\n\nSettings `{current}`; settings `{option}` with it.\n", current, options) == []
    assert stale_sections(f"## Alone\n\nSettings `{option}`.\n", current, options) == ["## Alone"]


def test_the_goals_table_is_the_one_the_code_checks():
    from toolkit.goals import goals_markdown

    assert goals_markdown() in (DOCS / "results.md").read_text()


def test_the_tutorials_are_re_executed_when_the_library_changes(tmp_path):
    """``make docs`` executes the tutorials through a cache keyed on code cells and their metadata; each copy
    carries a stamp of the library's sources, so an output of earlier code is never served."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    for folder in conf.SOURCES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    before = conf.source_stamp(tmp_path)
    (tmp_path / "toolkit" / "a.py").write_text("x = 2\n")
    assert conf.source_stamp(tmp_path) != before
    notebook = next((ROOT / "notebooks").glob("*.ipynb"))
    conf.stamped_copy(notebook, tmp_path / "copy.ipynb", before)
    import nbformat

    nb = nbformat.read(tmp_path / "copy.ipynb", as_version=4)
    assert next(c for c in nb.cells if c.cell_type == "code").metadata["mllmeraser_source"] == before
    from jupyter_cache.cache.main import JupyterCacheBase

    cache = JupyterCacheBase(str(tmp_path / "cache"))
    _, one = cache.create_hashed_notebook(nb)
    conf.stamped_copy(notebook, tmp_path / "copy2.ipynb", conf.source_stamp(tmp_path))
    _, two = cache.create_hashed_notebook(nbformat.read(tmp_path / "copy2.ipynb", as_version=4))
    assert one != two  # the cache's own key moves with the stamp
    assert conf.nb_execution_mode == "off" or "MLLMERASER_DOCS_EXECUTE" in __import__("os").environ
