"""Deprecated import path (before the layout of 2026-12-07): kept for one release, then removed.

The fit moved to :mod:`toolkit.benchmark_fit` (the fit on a benchmark), :mod:`toolkit.config` (``FitConfig``) and
:mod:`toolkit.data.samples` (the sample builders). ``from toolkit import FitConfig, fit_eraser`` is the public face.
"""

import warnings

from .benchmark_fit import (FitResult, answer_samples, eraser_with_gate, fit_eraser, refit_fitter,  # noqa: F401
                            refit_forget, rehearsal_eraser)
from .config import FitConfig  # noqa: F401
from .data.samples import (budget_people, calibration_samples, fit_groups, fit_people, question_samples,  # noqa: F401
                           retain_question_samples, wrapped_samples)

warnings.warn("toolkit.fit is deprecated and goes after one release: import from toolkit (FitConfig, fit_eraser) or "
              "toolkit.benchmark_fit / toolkit.data.samples.", DeprecationWarning, stacklevel=2)
