"""Every study in studies/ imports against today's library and builds its command line (its smoke test at the
smallest size: no model is loaded). The ablations' smallest matched run is in test_ablations.py (slow)."""

import importlib
import inspect
import re
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("*.py") if p.stem != "__init__")


def test_studies_are_apart_from_the_package():
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("studies") for pattern in found)
    assert len(STUDIES) >= 12 and not list((ROOT / "tools").glob("*_study.py"))


@pytest.mark.parametrize("name", STUDIES)
def test_study_imports_names_its_section_and_builds_its_parser(name, monkeypatch, capsys):
    module = importlib.import_module(f"studies.{name}")
    # Annotations name real things (postponed ones are only checked when resolved).
    for value in vars(module).values():
        if inspect.isfunction(value) and value.__module__ == module.__name__:
            typing.get_type_hints(value)
    header = module.__doc__ or ""
    assert re.search(r"Produces: .*docs/[\w-]+\.md", header.replace("\n", " ")), f"{name} names no results section"
    for section in re.findall(r'docs/(results|research-log|method)\.md, "([^"]+)"', header.replace("\n", " ")):
        page = (ROOT / "docs" / f"{section[0]}.md").read_text()
        assert section[1].split(" (")[0].split("`")[0] in page, f"{name}: {section} is not on the page"
    if name == "ablations":  # a library of the study, run by `mllmeraser ablations`
        from experiments.cli import main

        with pytest.raises(SystemExit) as done:
            main(["ablations", "--help"])
    else:
        monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
        with pytest.raises(SystemExit) as done:
            module.main()
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out
