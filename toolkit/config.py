"""The configuration, written once: the fit's, the rehearsal's and the job's, and the shipped preset.

Three frozen dataclasses, one per stage of :func:`toolkit.erase`:

* :class:`FitConfig`: what the fit reads and solves (:func:`toolkit.benchmark_fit.fit_eraser`,
  :meth:`toolkit.fitter.EraserFitter.eraser`). Its field defaults are the **paper's reference method**
  (one layer, the linear null-space map, no retain penalty, no answer rows).
* :class:`SelectConfig`: what the rehearsal chooses among (:func:`toolkit.selection.select_setting`).
* :class:`EraseConfig`: the job: a ``fit`` and a ``select`` plus what only the job adds (who is
  evaluated, the evaluation batch).

:data:`SHIPPED` is the one named preset the toolkit runs with (``erase``, ``mllmeraser erase`` /
``demo``, the notebooks): ``EraseConfig()`` *is* it, since ``EraseConfig``'s fields default to
:data:`SHIPPED_FIT` and :data:`SHIPPED_SELECT`. Every other value is written once, as a field default
here; the CLI's flags and help texts are generated from these fields and their docstrings
(:func:`field_docs`).

Plain data: nothing here runs a model (PGD's settings come from :mod:`toolkit.adversarial`, beside the attack).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import textwrap
from dataclasses import dataclass, fields, replace

from .adversarial import PGDConfig
from .data.splits import PeopleSplit
from .nullspace import FixedRatio, RankPolicy
from .reads import needs_prompt

__all__ = ["FitConfig", "SelectConfig", "EraseConfig", "SHIPPED_FIT", "SHIPPED_SELECT", "SHIPPED",
           "field_docs", "settings_fingerprint"]


@dataclass(frozen=True)
class FitConfig:
    """What the fit reads and solves. The defaults are the paper's reference method; :data:`SHIPPED_FIT` is
    what the toolkit ships."""

    layers: tuple[int, ...] | None = (-1,)
    """Layers fitted (outputs of decoder blocks, 0-based; -1 the last). None: every decoder layer."""
    forget_ratio: int = 10
    """An MLLMU-Bench folder's forget split (forget_5 / 10 / 15)."""
    recipe: str = "privacy"
    """Contrastive pairs: "privacy" (questions about people) or "safety" (harmful requests)."""
    variant: str = "multimodal"
    """Direction variant: "multimodal" (the pairs as given), "image_only" or "text_only"."""
    rank_policy: RankPolicy = FixedRatio(0.3)
    """Null-space size: ratio:RHO (share of the width), energy:TAU or rtol:RTOL (:mod:`toolkit.nullspace`)."""
    gamma: float = 0.1
    """Ridge term of the map's least squares."""
    retain_weight: float = 0.0
    """Weight of the retain rows (target 0) in the least squares, per row relative to the forget rows (the solver
    gets ``retain_weight * n_forget / n_retain``); 0 is the reference method."""
    lam: float = 1.0
    """Steering strength (summed over the steered layers)."""
    answer_weight: float = 0.0
    """Weight of teacher-forced answer-token rows (:mod:`toolkit.benchmark_fit`); 0 is the reference."""
    positions: str | None = None
    """Where the eraser steers: prompt, last or all; None: "all" with answer rows and a gate reading the state
    (the answer gate acts on generated tokens), else "prompt" (the reference)."""
    include_real: bool = True
    """Real people (Retain_Set) whose role is fit enter the null space too."""
    retain_positions: str = "last"
    """Retain rows at the last prompt token (the reference) or at every prompt token ("prompt")."""
    n_contrast: int | None = None
    """Questions asked for the contrastive pairs, spread over the fit people; None: every image question of
    every fit person."""
    pgd: PGDConfig | None = PGDConfig()
    """PGD on the contrastive images; None: no adversarial images."""
    pgd_limit: int | None = 16
    """PGD attacks at most this many refused questions (the costly part); None: all."""
    batch_size: int = 32
    """Inputs per forward pass in the fit's captures."""
    people: PeopleSplit | None = PeopleSplit()
    """Who may enter the fit: retain and real people whose role is "fit". None: all of them (the reference;
    utility figures are then in-fit)."""
    gate: str = "linear"
    """"linear": the paper's null-space map; "logistic", "prototype", "prototype_whitened", "mlp": membership
    gates fitted on forget vs fit-retain rows and calibrated to ``gate_fpr`` on validation people."""
    gate_reads: str = "last+mean"
    """What a membership gate reads (:mod:`toolkit.reads`): the last prompt token, the prompt's mean, the image
    tokens pooled (image-max / image-mean: keyed to the person, not the wording)."""
    gate_reads_kept: tuple[str, ...] = ()
    """More reads to keep gate rows in (the rehearsal screens gates reading each)."""
    latch: bool = False
    """Membership gates: once the gate fires for a row, steer every token generated after it."""
    wrap: int = 0
    """Fit-pool wrappers per question (:mod:`toolkit.data.wrappers`) added to the membership gate's forget, retain
    and calibration rows (not to the map's statistics); 0: the benchmark's phrasings only."""
    gate_fpr: float = 0.05
    """Membership gates: share of validation people's questions the gate may fire on."""
    gate_softness: float = 0.0
    """> 0: a sigmoid around the threshold (temperature = softness x score std); 0: a hard gate."""
    gate_pool: str = "rows"
    """What a prototype gate stores as exemplars, and so what the eraser file holds: "rows", one state per
    question of each forget and fit-retain person; "people", one mean per person and question kind (image or
    text), never a single question's state (docs: method, "What the eraser file holds")."""
    edit: str = "add"
    """"add": h + lam g d (the paper); "rotate": the same, norm-preserving."""
    gate_rows: bool = False
    """Keep the rows membership gates need even for a linear gate (the rehearsal compares kinds)."""
    share_prefix: bool = True
    """Questions about one image run its prompt prefix once (:mod:`toolkit.prefix`; the same states, less
    compute)."""
    retain_budget: int | None = None
    """Retain questions the fit reads (statistics and gate rows), drawn as whole people in a seeded order; None:
    every question of every fit person."""
    budget_seed: int = 0
    """Seed of the order in which the retain and calibration budgets draw people."""
    calibration_budget: int | None = None
    """Validation questions the membership gates' thresholds and the gate screening read, drawn as whole people in
    a seeded order (as the retain budget); None: every question of every validation person (the rehearsal's
    generation sets are not affected)."""
    name_gate: bool = False
    """Add a name gate to the chosen eraser (toolkit.names): a prompt whose text names a forget person (case,
    spacing, accents and one typo tolerated; the whole name) is steered whatever the state gate says. Added after
    the rehearsal, which chooses without it."""

    @property
    def keeps_gate_rows(self) -> bool:
        return self.gate != "linear" or self.gate_rows

    def steer_positions(self) -> str:
        """Where the eraser steers: ``positions``, else "all" with answer rows and a gate reading the state
        (the answer gate acts on generated tokens), else "prompt" (the reference)."""
        if self.positions:
            return self.positions
        reads_prompt = self.gate != "linear" and needs_prompt(self.gate_reads)
        return "all" if self.answer_weight and not reads_prompt else "prompt"


@dataclass(frozen=True)
class SelectConfig:
    """What the rehearsal chooses among, and its rule (:mod:`toolkit.selection`)."""

    layers: tuple[int, ...] | None = None
    """Layers the rehearsal chooses among; None: the upper half of the fitted layers."""
    lams: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 12.0, 16.0)
    """Strengths tried, weakest first."""
    thresholds: tuple[float, ...] = (0.0, 0.2)
    """Linear gate: dead zones tried (0: the paper's map)."""
    positions: tuple[str | None, ...] = (None, "prompt")
    """Where to steer: None = the eraser's own mode ("all" with answer rows), and "prompt" (at every generated
    token strong steering turns refusals into loops; at the prompt it refuses)."""
    leak_max: float = 0.05
    """The rule: highest validation recall among settings whose stand-ins leak at most this."""
    repetition_max: float = 0.25
    """A setting is fluent when the stand-ins' answers repeat at most this share of their 3-grams."""
    rule: str = "leakage"
    """"leakage": the rule above; "reward": the highest mean ASRU reward on the rehearsal."""
    batch_size: int = 48
    """Inputs per generation batch, in the rehearsal and in the job's evaluation."""
    gates: tuple[str, ...] | None = None
    """Gate kinds to choose among; None: the fit config's own kind ("linear": the paper's map alone)."""
    gate_fprs: tuple[float, ...] = (0.05,)
    """Target false-positive rates a membership gate is calibrated to (screened with the kinds)."""
    gate_reads: tuple[str, ...] | None = None
    """What membership gates may read (screened with the kinds); None: the fit config's."""
    latch: tuple[bool, ...] = (False,)
    """Latch or not (membership gates; searched like the position modes)."""
    wrap: int = 0
    """Fit-pool wrappers per stand-in and validation-retain question in the rehearsal, the gate rows and the
    calibration (0: the benchmark's phrasings only)."""
    screen_top: int = 1
    """Screened gates tried in the generation grid: the best of each read (and the linear gate), best first."""
    screen_fp: str = "people"
    """What the gate screening charges false fires by: "people" (held-out validation people with any question
    fired on) or "questions"."""


SHIPPED_FIT = FitConfig(layers=None, rank_policy=FixedRatio(0.97), retain_weight=40.0, answer_weight=0.3,
                        n_contrast=64, pgd=PGDConfig(steps=10), pgd_limit=4, retain_budget=800)
"""The fit the toolkit ships. ``rho`` 0.97, ``retain_weight`` 40 and ``answer_weight`` 0.3 were chosen on
validation questions of the embedded default (docs: method); 64 contrastive questions and PGD 4 x 10 gave the same
held-out figures as all questions and 16 x 20 on both defaults, and the retain budget of 800 questions was read
off the measured curve (docs: results, "What the fit costs"). Every layer is fitted; the rehearsal chooses."""

SHIPPED_SELECT = SelectConfig(gates=("prototype_whitened", "prototype", "logistic", "linear"), gate_fprs=(0.02, 0.05),
                              gate_reads=("last+mean", "image-max", "last+image-max"), wrap=1, screen_top=3)
"""The rehearsal the toolkit ships: four gate kinds, three reads, two target rates, one fit-pool wrapper."""


@dataclass(frozen=True)
class EraseConfig:
    """The job (:func:`toolkit.erase`): the fit, the rehearsal, and what only the job adds (who is evaluated).

    ``EraseConfig()`` is the shipped preset :data:`SHIPPED`. Change one part with
    ``dataclasses.replace``: ``replace(SHIPPED, fit=replace(SHIPPED.fit, retain_budget=None))``, or with
    :meth:`with_fit` / :meth:`with_select`. The gate rows the fit keeps follow the rehearsal's choices
    (:meth:`fit_config`).
    """

    fit: FitConfig = SHIPPED_FIT
    """What the fit reads and solves. ``fit.layers=None``: every decoder layer is fitted and the rehearsal chooses
    among the upper half."""
    select: SelectConfig = SHIPPED_SELECT
    """What the rehearsal chooses among."""
    in_fit_people: int = 20
    """Fit people evaluated beside the held-out ones (labelled "in fit")."""
    held_out_share: float = 0.2
    """A hand-written forget list: the share of each forget person's generation questions kept out of the fit, the
    rehearsal and the calibration and scored apart ("Held out"), beside the rows marked ``held_out``
    (:func:`toolkit.data.request.hold_out`); 0: only the marked rows. A benchmark folder holds out its own sets."""

    @property
    def forget_ratio(self) -> int:
        return self.fit.forget_ratio

    @property
    def people(self) -> PeopleSplit | None:
        return self.fit.people

    @property
    def batch_size(self) -> int:
        """Generation batch of the rehearsal and the evaluation (``select.batch_size``)."""
        return self.select.batch_size

    def with_fit(self, **changes) -> "EraseConfig":
        """This config with ``fit`` fields changed (``config.with_fit(retain_budget=None)``)."""
        return replace(self, fit=replace(self.fit, **changes))

    def with_select(self, **changes) -> "EraseConfig":
        """This config with ``select`` fields changed."""
        return replace(self, select=replace(self.select, **changes))

    def fit_config(self, layers: tuple[int, ...] | None = None, lam: float | None = None) -> FitConfig:
        """The fit the job runs: ``fit`` at ``layers`` (default ``fit.layers``) and strength ``lam`` (default
        ``fit.lam``), keeping the gate rows of every kind and read the rehearsal screens (derived, never a second
        default)."""
        screened = self.select.gates or ()
        reads = tuple(self.select.gate_reads or (self.fit.gate_reads,))
        return replace(self.fit, layers=self.fit.layers if layers is None else tuple(layers),
                       lam=self.fit.lam if lam is None else lam,
                       gate_rows=self.fit.gate_rows or any(k != "linear" for k in screened),
                       gate_reads=reads[0], gate_reads_kept=tuple(dict.fromkeys(
                           self.fit.gate_reads_kept + tuple(self.select.gate_reads or ()))),
                       wrap=self.select.wrap)


SHIPPED = EraseConfig()
"""The one preset the toolkit runs with: :data:`SHIPPED_FIT`, :data:`SHIPPED_SELECT` and 20 in-fit people."""

# Fields that are not settings of the method: how fast a job runs (batches are padded and masked; a shared prefix
# gives the same states, tests/test_prefix.py) and which forget split it erases (the task, not the method).
_NOT_SETTINGS = {"batch_size", "share_prefix", "forget_ratio"}
# Fields added after figures were recorded, left out of the fingerprint at the value that reproduces the earlier
# behaviour exactly (the code path is the earlier one), so a new option off does not stale every figure; any
# other value enters the fingerprint. tests/test_names.py checks both.
_ADDED_OFF = {"name_gate": False, "calibration_budget": None}


def _canonical(value) -> str:
    """A text that two equal settings share and two different ones never do: dataclasses by their fields (the
    execution-only ones left out), numbers by ``repr``, sequences element-wise."""
    if hasattr(value, "__dataclass_fields__"):
        parts = [f"{f.name}={_canonical(getattr(value, f.name))}" for f in fields(value)
                 if f.name not in _NOT_SETTINGS
                 and not (f.name in _ADDED_OFF and getattr(value, f.name) == _ADDED_OFF[f.name])]
        return f"{type(value).__name__}({','.join(parts)})"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 40 and 40.0 are the same setting
    return repr(value)


def settings_fingerprint(config: EraseConfig | FitConfig | SelectConfig | None = None) -> str:
    """Eight hex digits that name a configuration: the same for equal settings, another for any change of a
    field that changes a figure (``batch_size`` and ``share_prefix`` do not; ``forget_ratio`` is the task, not a
    setting). ``settings_fingerprint()`` is :data:`SHIPPED`'s. Adding a field changes every fingerprint, except a
    field listed with its "off" value in ``_ADDED_OFF``: an option that, off, runs exactly the earlier code
    path, left out at that value (any other value enters).

    Every measured section of the results page names the fingerprint it ran with, ``report.md`` and
    ``metrics.json`` carry the job's, and ``tests/test_docs.py`` fails when a section names one that is not
    today's shipped fingerprint: a change of :data:`SHIPPED` makes every section measured with it stale,
    visibly, until it is re-run or moved to the research log."""
    text = _canonical(SHIPPED if config is None else config)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def option_fingerprints() -> dict[str, str]:
    """``{field: fingerprint}`` of :data:`SHIPPED` with each option of ``_ADDED_OFF`` turned on (today's settings
    plus one measured option, e.g. ``--name-gate``: a results section may name these beside the shipped one).
    Switches only: a valued option (a budget) is named by its value beside today's fingerprint."""
    out = {}
    for name, off in _ADDED_OFF.items():
        if not isinstance(off, bool):
            continue
        for part in ("fit", "select"):
            if hasattr(getattr(SHIPPED, part), name):
                on = replace(SHIPPED, **{part: replace(getattr(SHIPPED, part), **{name: not off})})
                out[name] = settings_fingerprint(on)
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields carry attribute docstrings (the string right after the
    field, as Sphinx's autodoc reads them); the CLI's help texts come from here. One paragraph each."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    missing = [f.name for f in fields(cls) if f.name not in docs]
    if missing:
        raise TypeError(f"{cls.__name__} fields {missing} have no docstring.")
    return docs
