"""Gates: how much an input belongs to the forget set, as swappable parts.

An eraser's shift at layer ``l`` is ``lam * g(x) @ D`` (or a rotation by it, see
:mod:`toolkit.eraser`): ``D`` (r x d) the erasure direction(s), ``g`` a gate that
maps the layer's state to ``(B, r)`` weights. What the gate reads:

* ``"last"``: the state ``h`` (B, d) the shift is computed from (the last prompt
  token at prefill, the new token at each decoding step);
* anything else of :mod:`toolkit.reads` (``"last+mean"``, ``"image-max"``,
  ``"last+image-max"`` ...): pooled reads of the prompt, (B, k d) for k parts,
  read at prefill only (the image tokens carry the face, which the last token of
  "What is the name of the person in the image?" does not). Such a gate decides
  once per prompt: its eraser steers ``positions="prompt"`` or ``"last"``, and
  with ``latch=True`` carries that decision into every generated token.

Kinds (each a frozen dataclass; all computed in float32 on the state's device):

* :class:`LinearGate` the paper's null-space map ``h @ W`` (W: d x r), unbounded;
  the eraser's dead zone ``threshold`` applies to it. Memory ``r d``.
* :class:`LogisticGate` a membership classifier (forget rows vs fit-retain rows):
  logit ``((x - center) / scale) @ coef + bias``; the weight is
  ``1[logit > threshold]`` (hard) or ``sigmoid((logit - threshold) / temperature)``
  (soft). Memory ``3 f`` (f = features: d or 2d).
* :class:`PrototypeGate` nearness: in the retain-standardised space
  ``z = (x - center) / scale`` (the fit-retain rows' mean and standard deviation),
  score = max cosine to the forget exemplars minus max cosine to the retain
  exemplars; weight as above. Memory ``(n_f + n_r + 2) f``: the forget rows are kept
  whole (a few hundred), the retain rows subsampled to at most ``max_retain``.
  Kind ``prototype_whitened``: the same in the retain-*whitened* space
  ``z = (x - center) W``, ``W = (C + s mean(eig C) I)^{-1/2}`` from the fit-retain
  rows' covariance ``C`` (shrinkage ``s = 0.1``). Whitening stretches the
  directions retain people rarely vary in, which is where one face differs from
  another when the question text is the same ("What is the name of the person in
  the image?"). Memory ``f^2`` more (at f = 2 x 4096: 256 MiB a layer).

* :class:`MLPGate` the paper's ablation of the map: a one-hidden-layer classifier on the same
  rows as the logistic gate (``relu(z @ w1 + b1) @ w2 + b2``, ``z`` standardised as there), trained
  full-batch with Adam on the class-balanced cross-entropy plus an L2 penalty; weight as above.
  Memory ``(f + 2) h + 2 f`` (h hidden units, 32 by default).

Membership gates get their threshold from :func:`calibrate`: a quantile of their
scores on rows of people outside the fit (validation people), so that a target
share of them is steered; GUARD-IT and Dynamic SAE Guardrails set thresholds the
same way. The rate then seen on evaluation people is reported, never used.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .reads import READS, parse_reads

__all__ = ["Gate", "LinearGate", "LogisticGate", "PrototypeGate", "MLPGate", "GateStack", "GATE_KINDS", "READS",
           "fit_gate", "fit_logistic", "fit_prototype", "pool_exemplars", "fit_mlp", "whitener", "calibrate", "auroc",
           "gate_from_parts"]

GATE_KINDS = ("linear", "logistic", "prototype", "prototype_whitened", "mlp")


class Gate:
    """Interface: ``gate(x)`` -> ``(B, r)`` float32 weights; ``score(x)`` -> ``(B,)`` raw score.

    ``x``: ``(B, f)`` with ``f = k d`` for a read of ``k`` parts (:mod:`toolkit.reads`: ``d`` for ``"last"``).
    """

    kind = "gate"
    reads = "last"

    @property
    def width(self) -> int:  # the residual width d
        raise NotImplementedError

    @property
    def rank(self) -> int:
        return 1

    def score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "Gate":
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def meta(self) -> dict:
        raise NotImplementedError

    def finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.tensors().values())


def _check_features(x: torch.Tensor, features: int, gate: str) -> torch.Tensor:
    if x.shape[-1] != features:
        raise ValueError(f"The {gate} gate reads {features} features per row, got {x.shape[-1]}: "
                         "a gate reading k parts (toolkit.reads, e.g. 'last+image-max') needs (B, k d) rows.")
    return x.float()


def _weight(score: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    if temperature > 0:
        return torch.sigmoid((score - threshold) / temperature)
    return (score > threshold).float()


class _Membership(Gate):
    """What the membership gates share (their dataclasses hold ``threshold`` and ``temperature``): the
    score made a weight by the calibrated threshold (:func:`_weight`), and every tensor moved at once."""

    threshold: float
    temperature: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _weight(self.score(x), self.threshold, self.temperature)[:, None]

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "Gate":
        return replace(self, **{k: v.to(device, dtype or v.dtype) for k, v in self.tensors().items()})


def _standardised(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(x - center) / scale`` in float32 on ``x``'s device."""
    return (x - center.to(x.device, torch.float32)) / scale.to(x.device, torch.float32)


@dataclass(frozen=True)
class LinearGate(Gate):
    """The paper's gate ``h @ weights`` (weights: d x r). Reads the state only."""

    weights: torch.Tensor
    kind = "linear"
    reads = "last"

    @property
    def width(self) -> int:
        return self.weights.shape[0]

    @property
    def rank(self) -> int:
        return self.weights.shape[1]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, 0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weights.to(x.device, torch.float32)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "LinearGate":
        return LinearGate(self.weights.to(device, dtype or self.weights.dtype))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights}

    def meta(self) -> dict:
        return {"kind": self.kind}


@dataclass(frozen=True)
class LogisticGate(_Membership):
    """Membership classifier: ``logit = ((x - center) / scale) @ coef + bias``. Vectors: (f,)."""

    coef: torch.Tensor
    bias: float
    center: torch.Tensor
    scale: torch.Tensor
    threshold: float = 0.0
    temperature: float = 0.0
    reads: str = "last"
    kind = "logistic"

    @property
    def width(self) -> int:
        return self.coef.shape[0] // len(parse_reads(self.reads))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_features(x, self.coef.shape[0], self.kind)
        return _standardised(x, self.center, self.scale) @ self.coef.to(x.device, torch.float32) + self.bias

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"coef": self.coef, "center": self.center, "scale": self.scale}

    def meta(self) -> dict:
        return {"kind": self.kind, "bias": self.bias, "threshold": self.threshold,
                "temperature": self.temperature, "reads": self.reads}


@dataclass(frozen=True)
class PrototypeGate(_Membership):
    """Nearness: ``max_i cos(z, forget_i) - max_j cos(z, retain_j)`` with ``z = (x - center) / scale``.

    ``forget`` (n_f, f) and ``retain`` (n_r, f) are stored already standardised and unit-normed.
    ``whitener`` (f, f), if given, replaces the standardisation: ``z = (x - center) @ whitener``.
    """

    forget: torch.Tensor
    retain: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor
    threshold: float = 0.0
    temperature: float = 0.0
    reads: str = "last"
    whitener: torch.Tensor | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "prototype" if self.whitener is None else "prototype_whitened"

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        x = x.float() - self.center.to(dev, torch.float32)
        if self.whitener is not None:
            return x @ self.whitener.to(dev, torch.float32)
        return x / self.scale.to(dev, torch.float32)

    @property
    def width(self) -> int:
        return self.center.shape[0] // len(parse_reads(self.reads))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_features(x, self.center.shape[0], self.kind)
        dev = x.device
        z = torch.nn.functional.normalize(self.standardise(x), dim=-1)
        near_forget = (z @ self.forget.to(dev, torch.float32).T).max(-1).values
        near_retain = (z @ self.retain.to(dev, torch.float32).T).max(-1).values
        return near_forget - near_retain

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"forget": self.forget, "retain": self.retain, "center": self.center, "scale": self.scale}
        if self.whitener is not None:
            out["whitener"] = self.whitener
        return out

    def meta(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold, "temperature": self.temperature,
                "reads": self.reads}


@dataclass(frozen=True)
class MLPGate(_Membership):
    """Membership by a small MLP: ``logit = relu(z @ w1 + b1) @ w2 + b2``, ``z = (x - center) / scale``.

    ``w1`` (f, h), ``b1`` (h,), ``w2`` (h,), ``center`` / ``scale`` (f,).
    """

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: float
    center: torch.Tensor
    scale: torch.Tensor
    threshold: float = 0.0
    temperature: float = 0.0
    reads: str = "last"
    kind = "mlp"

    @property
    def width(self) -> int:
        return self.w1.shape[0] // len(parse_reads(self.reads))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_features(x, self.w1.shape[0], self.kind)
        dev, f32 = x.device, torch.float32
        hidden = torch.relu(_standardised(x, self.center, self.scale) @ self.w1.to(dev, f32) + self.b1.to(dev, f32))
        return hidden @ self.w2.to(dev, f32) + self.b2

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w1": self.w1, "b1": self.b1, "w2": self.w2, "center": self.center, "scale": self.scale}

    def meta(self) -> dict:
        return {"kind": self.kind, "b2": self.b2, "threshold": self.threshold, "temperature": self.temperature,
                "reads": self.reads}


@dataclass(frozen=True)
class GateStack(Gate):
    """Several gates side by side (an eraser composed of others): their weight columns concatenated.
    All parts read the same features."""

    parts: tuple[Gate, ...]
    kind = "stack"

    def __post_init__(self) -> None:
        reads = {p.reads for p in self.parts}
        if len(reads) > 1:
            raise ValueError(f"Gates reading {sorted(reads)} cannot share one layer's map; apply the erasers "
                             "together instead: generate(..., steers=[e1, e2]).")

    @property
    def reads(self) -> str:  # type: ignore[override]
        return self.parts[0].reads

    @property
    def width(self) -> int:
        return self.parts[0].width

    @property
    def rank(self) -> int:
        return sum(p.rank for p in self.parts)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).sum(-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], -1)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "GateStack":
        return GateStack(tuple(p.to(device, dtype) for p in self.parts))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.tensors().items()}

    def meta(self) -> dict:
        return {"kind": self.kind, "parts": [p.meta() for p in self.parts]}


def gate_from_parts(meta: dict, tensors: dict[str, torch.Tensor]) -> Gate:
    """Rebuild a gate from :meth:`Gate.meta` and :meth:`Gate.tensors` (the eraser file's layout)."""
    kind = meta.get("kind")
    if kind == "linear":
        return LinearGate(tensors["weights"])
    if kind == "logistic":
        return LogisticGate(tensors["coef"], float(meta["bias"]), tensors["center"], tensors["scale"],
                            float(meta["threshold"]), float(meta["temperature"]), meta.get("reads", "last"))
    if kind in ("prototype", "prototype_whitened"):
        whitener = tensors["whitener"] if kind == "prototype_whitened" else None
        return PrototypeGate(tensors["forget"], tensors["retain"], tensors["center"], tensors["scale"],
                             float(meta["threshold"]), float(meta["temperature"]), meta.get("reads", "last"),
                             whitener)
    if kind == "mlp":
        return MLPGate(tensors["w1"], tensors["b1"], tensors["w2"], float(meta["b2"]), tensors["center"],
                       tensors["scale"], float(meta["threshold"]), float(meta["temperature"]), meta.get("reads", "last"))
    if kind == "stack":
        parts = []
        for i, m in enumerate(meta["parts"]):
            prefix = f"{i}."
            parts.append(gate_from_parts(m, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}))
        return GateStack(tuple(parts))
    raise ValueError(f"Unknown gate kind {kind!r} in the eraser file (known: {', '.join(GATE_KINDS)}, stack).")


# ------------------------------------------------------------------------------------------ fitting
def _standardiser(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = rows.double()
    return x.mean(0).float(), (x.std(0) + 1e-6).float()


def fit_logistic(forget: torch.Tensor, retain: torch.Tensor, *, l2: float = 10.0, reads: str = "last",
                 forget_weight: torch.Tensor | None = None) -> LogisticGate:
    """L2-regularised logistic regression, forget rows (1) against retain rows (0), classes balanced.

    ``forget`` (n_f, f), ``retain`` (n_r, f); features standardised by the pooled rows' mean and
    standard deviation; ``l2`` is sklearn's ``1 / C``. Threshold 0 (p = 0.5) until :func:`calibrate`.
    """
    from sklearn.linear_model import LogisticRegression

    rows = torch.cat([forget, retain]).float()
    center, scale = _standardiser(rows)
    x = ((rows - center) / scale).double().numpy()
    y = [1] * len(forget) + [0] * len(retain)
    weights = None
    if forget_weight is not None:
        weights = torch.cat([forget_weight.double(), torch.ones(len(retain), dtype=torch.float64)]).numpy()
    clf = LogisticRegression(C=1.0 / l2, class_weight="balanced", max_iter=5000, tol=1e-6)
    clf.fit(x, y, sample_weight=weights)
    return LogisticGate(torch.tensor(clf.coef_[0], dtype=torch.float32), float(clf.intercept_[0]),
                        center, scale, 0.0, 0.0, reads)


def fit_mlp(forget: torch.Tensor, retain: torch.Tensor, *, hidden: int = 32, l2: float = 1e-3, steps: int = 300,
            lr: float = 1e-2, seed: int = 0, reads: str = "last") -> MLPGate:
    """A one-hidden-layer classifier, forget rows (1) against retain rows (0), classes balanced.

    ``forget`` (n_f, f), ``retain`` (n_r, f); features standardised as :func:`fit_logistic` does;
    ``steps`` full-batch Adam steps at ``lr`` on the mean class-balanced cross-entropy plus
    ``l2 * ||w||^2`` (weights, not biases). The initialisation is seeded (``seed``), so a fit
    is repeatable. Threshold 0 (p = 0.5) until :func:`calibrate`.
    """
    if hidden < 1 or steps < 1:
        raise ValueError(f"An MLP gate needs hidden >= 1 and steps >= 1, got hidden={hidden}, steps={steps}.")
    rows = torch.cat([forget, retain]).float()
    center, scale = _standardiser(rows)
    x = (rows - center) / scale
    y = torch.cat([torch.ones(len(forget)), torch.zeros(len(retain))])
    # Each class weighs half, as class_weight="balanced" does for the logistic gate.
    w = torch.where(y > 0, 0.5 / max(1, len(forget)), 0.5 / max(1, len(retain)))
    gen = torch.Generator().manual_seed(seed)
    f = x.shape[1]
    w1 = (torch.randn(f, hidden, generator=gen) / math.sqrt(f)).requires_grad_(True)
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=gen) / math.sqrt(hidden)).requires_grad_(True)
    b2 = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logit = torch.relu(x @ w1 + b1) @ w2 + b2
            loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")).sum()
            loss = loss + l2 * ((w1 ** 2).sum() + (w2 ** 2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return MLPGate(w1.detach(), b1.detach(), w2.detach(), float(b2.detach()), center, scale, 0.0, 0.0, reads)


def whitener(rows: torch.Tensor, shrinkage: float = 0.1) -> torch.Tensor:
    """``(C + s mean(eig C) I)^{-1/2}`` (f x f, float32) for the rows' covariance ``C`` (float64 eigh)."""
    x = rows.double()
    cov = torch.cov(x.T)
    eig, vec = torch.linalg.eigh(cov)
    eig = eig.clamp_min(0) + shrinkage * float(eig.clamp_min(0).mean())
    return ((vec * eig.rsqrt()) @ vec.T).float()


MIN_POOLED_ROWS = 3
"""A pooled exemplar averages at least this many rows where its person has them (:func:`pool_exemplars`)."""


def pool_exemplars(unit_rows: torch.Tensor, groups: Sequence[str], min_rows: int = MIN_POOLED_ROWS) -> torch.Tensor:
    """One unit exemplar per group: the normalised mean of the group's unit rows ``(n, f)``.

    ``groups``: one ``"person|kind"`` label per row (kind: the question's, e.g. image or text). A person with a
    kind of fewer than ``min_rows`` rows gets one exemplar over all their rows, so that no stored exemplar is one
    question's state where the person has ``min_rows`` rows or more. Returns ``(n_groups, f)``, groups in first-seen
    order."""
    if len(groups) != len(unit_rows):
        raise ValueError(f"pool_exemplars: {len(unit_rows)} rows but {len(groups)} group labels.")
    person = [g.split("|", 1)[0] for g in groups]
    size = Counter(groups)
    # A person with any kind below min_rows is pooled whole: no exemplar of fewer rows than it need be.
    whole = {p for g, p in zip(groups, person) if size[g] < min_rows}
    keys = [p if p in whole else g for g, p in zip(groups, person)]
    order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    index = torch.tensor([order[k] for k in keys])
    sums = torch.zeros(len(order), unit_rows.shape[1], dtype=torch.float64).index_add_(0, index, unit_rows.double())
    return torch.nn.functional.normalize(sums, dim=-1).to(unit_rows.dtype)


def fit_prototype(forget: torch.Tensor, retain: torch.Tensor, *, max_retain: int = 2048, reads: str = "last",
                  seed: int = 0, whiten: bool = False, shrinkage: float = 0.1,
                  forget_groups: Sequence[str] | None = None, retain_groups: Sequence[str] | None = None
                  ) -> PrototypeGate:
    """Exemplars in the retain-standardised space (``whiten``: the retain-whitened one, :func:`whitener`
    of every retain row given); at most ``max_retain`` retain exemplars (a seeded subsample).

    ``forget_groups`` / ``retain_groups`` (one ``"person|kind"`` label per row): store one exemplar per person and
    question kind (:func:`pool_exemplars`) instead of one per row, so that the gate keeps no single question's
    state. The standardisation (and the whitener) still come from every retain row: they are a mean, a scale
    and a covariance, not rows."""
    center, scale = _standardiser(retain)
    white = whitener(retain, shrinkage) if whiten else None
    gate = PrototypeGate(forget[:0], retain[:0], center, scale, 0.0, 0.0, reads, white)

    def unit(rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(gate.standardise(rows), dim=-1)

    if retain_groups is not None:
        retain = pool_exemplars(unit(retain), list(retain_groups))
    if len(retain) > max_retain:
        keep = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[:max_retain]
        retain = retain[keep.sort().values]
    if retain_groups is None:
        retain = unit(retain)
    forget = pool_exemplars(unit(forget), list(forget_groups)) if forget_groups is not None else unit(forget)
    return replace(gate, forget=forget, retain=retain)


def fit_gate(kind: str, forget: torch.Tensor, retain: torch.Tensor, *, reads: str = "last", **options: Any) -> Gate:
    """A membership gate of ``kind`` (``logistic``, ``prototype``, ``prototype_whitened`` or ``mlp``) from
    forget and retain rows."""
    if kind == "logistic":
        return fit_logistic(forget, retain, reads=reads, **options)
    if kind == "prototype":
        return fit_prototype(forget, retain, reads=reads, **options)
    if kind == "prototype_whitened":
        return fit_prototype(forget, retain, reads=reads, whiten=True, **options)
    if kind == "mlp":
        return fit_mlp(forget, retain, reads=reads, **options)
    raise ValueError(f"Unknown membership gate {kind!r}: use logistic, prototype, prototype_whitened or mlp (linear "
                     "is the fitted map).")


def calibrate(gate: Gate, outside: torch.Tensor, fpr: float = 0.05, softness: float = 0.0) -> tuple[Gate, dict]:
    """Set a membership gate's threshold so that a share ``fpr`` of the rows ``outside`` (people neither
    forgotten nor fitted) scores above it; ``softness > 0`` makes the gate a sigmoid around the threshold
    with temperature ``softness`` x the standard deviation of those scores.

    Returns ``(calibrated gate, {"threshold", "fpr_target", "fpr_calibration", "n_calibration"})``;
    ``fpr_calibration`` is the share of ``outside`` rows whose weight exceeds 0.5.
    """
    if not 0 <= fpr < 1:
        raise ValueError(f"The gate's target false-positive rate must be in [0, 1), got {fpr}.")
    if softness < 0:
        raise ValueError(f"The gate's softness must be >= 0, got {softness}.")
    if not len(outside):
        raise ValueError("No calibration rows: the gate's threshold is set on people outside the fit "
                         "(validation people). Give the split validation people.")
    scores = gate.score(outside).double()
    threshold = float(torch.quantile(scores, 1.0 - fpr, interpolation="higher")) if fpr > 0 \
        else float(scores.max())
    temperature = float(softness * scores.std()) if softness else 0.0
    tuned = replace(gate, threshold=threshold, temperature=temperature)
    seen = float((tuned(outside)[:, 0] > 0.5).double().mean())
    return tuned, {"threshold": threshold, "temperature": temperature, "fpr_target": fpr,
                   "fpr_calibration": seen, "n_calibration": int(len(outside))}


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of scores (ties count one half): P(score_pos > score_neg)."""
    if not len(positive) or not len(negative):
        return math.nan
    p, n = positive.double()[:, None], negative.double()[None, :]
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())
