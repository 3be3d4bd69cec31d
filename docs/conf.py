"""Sphinx configuration: MyST pages, the notebooks as tutorials, the API from the docstrings and the CLI from
the argument parser. ``make docs`` builds it with warnings as errors; ``tests/test_docs.py`` runs that build."""

import shutil
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
nb_execution_mode = "off"  # the notebooks are executed by the test suite, not by the docs build
html_theme = "furo"
html_title = "mllmeraser"
exclude_patterns = ["_build", "tutorials/.ipynb_checkpoints"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Docstrings name tensors and shapes in prose; unresolved cross-references are not errors.
nitpicky = False
suppress_warnings = ["myst.xref_missing", "ref.python"]

# The tutorials are the repository's notebooks, copied in at build time (one copy, no drift).
TUTORIALS = Path(__file__).parent / "tutorials"
TUTORIALS.mkdir(exist_ok=True)
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copyfile(notebook, TUTORIALS / notebook.name)
