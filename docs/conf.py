"""Sphinx configuration: MyST pages, the notebooks as tutorials, the API from the docstrings and the CLI from
the argument parser. ``make docs`` builds it with warnings as errors; ``tests/test_docs.py`` runs that build."""

import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "mllmeraser"
author = "mllmeraser developers"
copyright = "2026, mllmeraser developers"
release = "0.1.0"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "sphinxarg.ext"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# `make docs` executes the tutorials (MLLMERASER_DOCS_EXECUTE=cache) so that the site shows their outputs and plots;
# the test suite's build keeps them off (it executes the notebooks itself, tests/test_notebooks.py).
nb_execution_mode = os.environ.get("MLLMERASER_DOCS_EXECUTE", "off")
nb_execution_timeout = 1800
nb_execution_raise_on_error = True
nb_output_stderr = "remove"  # progress bars and warnings: what a reader of the tutorial does not need
nb_execution_cache_path = str(Path(__file__).parent / "_build" / ".jupyter_cache")
html_theme = "furo"
html_title = "mllmeraser"
exclude_patterns = ["_build", "tutorials/.ipynb_checkpoints"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Docstrings name tensors and shapes in prose; unresolved cross-references are not errors.
nitpicky = False
suppress_warnings = ["myst.xref_missing", "ref.python"]

# The code a tutorial's outputs depend on: the library, the commands and the embedded defaults.
SOURCES = ("toolkit", "experiments", "probes", "studies")


def source_stamp(root: Path = ROOT) -> str:
    """A hash of every file the tutorials' outputs depend on (:data:`SOURCES`). The execution cache keys a notebook
    on its code cells and their metadata only, so each copy carries this stamp in its first cell's metadata: a change
    to the library re-executes the tutorials instead of serving outputs of the earlier code."""
    digest = hashlib.sha256()
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stamped_copy(notebook: Path, target: Path, stamp: str) -> None:
    """``notebook`` copied to ``target`` with ``stamp`` in its first code cell's metadata."""
    nb = json.loads(notebook.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    first.setdefault("metadata", {})["mllmeraser_source"] = stamp
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if not target.exists() or target.read_text() != text:  # unchanged copies keep their time stamps
        target.write_text(text)


# The tutorials are the repository's notebooks, copied in at build time (one copy, no drift).
TUTORIALS = Path(__file__).parent / "tutorials"
TUTORIALS.mkdir(exist_ok=True)
_STAMP = source_stamp()
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    stamped_copy(notebook, TUTORIALS / notebook.name, _STAMP)
