"""Deprecated import path (before the layout of 2026-12-07): kept for one release, then removed.

The job moved to :mod:`toolkit.job` (``erase``, ``EraseResult``), :mod:`toolkit.config` (``EraseConfig``, the
``SHIPPED`` preset), :mod:`toolkit.headline` (the headline tables), :mod:`toolkit.report` (``report.md``) and
:mod:`toolkit.data.request` (``as_benchmark``). ``from toolkit import erase, EraseConfig`` is the public face.
"""

import warnings

from .config import SHIPPED, EraseConfig  # noqa: F401
from .data.request import as_benchmark  # noqa: F401
from .headline import HEADLINE_COLUMNS, PEOPLE_COLUMNS, headline, headline_table, people_refused  # noqa: F401
from .job import EraseResult, erase, evaluate_people  # noqa: F401
from .report import report_markdown  # noqa: F401

warnings.warn("toolkit.erase is deprecated and goes after one release: import from toolkit (erase, EraseConfig) or "
              "toolkit.job.", DeprecationWarning, stacklevel=2)


class _CallableModule(type(warnings)):
    """``toolkit.erase`` is also the job's function on the public face; importing this module must not turn
    ``toolkit.erase(model, ...)`` into an uncallable module, so the module calls the job."""

    def __call__(self, *args, **kwargs):
        return erase(*args, **kwargs)


import sys  # noqa: E402

sys.modules[__name__].__class__ = _CallableModule
