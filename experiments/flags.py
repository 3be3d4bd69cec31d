"""Command-line flags generated from the configuration dataclasses, so that a default is written once.

Each flag is one field of :class:`toolkit.config.FitConfig`, :class:`~toolkit.config.SelectConfig`,
:class:`~toolkit.adversarial.PGDConfig`, :class:`~toolkit.data.splits.PeopleSplit` (or a study's config): its name is the
field's (``retain_budget`` -> ``--retain-budget``) unless a command renames it, its help text the field's docstring
(:func:`toolkit.config.field_docs`), and the default it shows the value of the config the command starts from.
A flag not given leaves that value alone (:func:`apply`).

Values: numbers and words as written; ``none`` (or ``all``) for a field that may be None; comma-separated lists for
tuples (layers also as ``3-6``); booleans as ``--flag`` / ``--no-flag``; a tuple of booleans as ``off``, ``on`` or
``off,on``; a null-space policy as ``ratio:RHO``, ``energy:TAU`` or ``rtol:RTOL``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.config import field_docs
from toolkit.nullspace import RankPolicy, format_rank_policy, parse_rank_policy

__all__ = ["add_fields", "apply", "parse_layers"]

NONE_WORDS = ("none", "all")


def parse_layers(text: str) -> tuple[int, ...]:
    """``"5"``, ``"4,5,6"``, ``"3-6"`` or ``"-1"``."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)-(\d+)\s*", part)
        out.extend(range(int(m[1]), int(m[2]) + 1) if m else [int(part)])
    return tuple(out)


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _scalar(kind: Any, name: str):
    if kind is bool:
        return _bool
    if kind in (int, float, str):
        def parse(text: str, kind=kind):
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        return parse
    if isinstance(kind, type) and issubclass(kind, RankPolicy):
        def policy(text: str):
            try:
                return parse_rank_policy(text)
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return policy
    raise TypeError(f"No command-line form for the field {name!r} of type {kind}.")


def _parser(hint: Any, name: str):
    """``(parse, metavar)`` for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner, metavar = _parser(next(a for a in args if a is not type(None)), name)
        return (lambda text: None if text.strip().lower() in NONE_WORDS else inner(text)), f"{metavar or 'N'}|none"
    if typing.get_origin(hint) is tuple:
        if args[0] is int and name.endswith("layers"):
            return parse_layers, "LAYERS"
        item = _parser(args[0], name)[0]
        own = (lambda t: None if t.strip().lower() == "own" else item(t)) if type(None) in typing.get_args(args[0]) \
            else item
        return (lambda text: tuple(own(x.strip()) for x in text.split(",") if x.strip())), "A,B,..."
    return _scalar(hint, name), None


def _plain(doc: str) -> str:
    """A docstring as terminal text: Sphinx roles and literals without their markup."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join("own" if v is None else _show(v) for v in value) or "none"
    if isinstance(value, RankPolicy):
        return format_rank_policy(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_fields(parser: argparse.ArgumentParser | Any, cls: type, base: Any, names: Sequence[str] | None = None, *,
               flags: Mapping[str, str] | None = None, choices: Mapping[str, Sequence] | None = None,
               section: str | None = None) -> None:
    """One flag per field of ``cls`` in ``names`` (default: every field), help from its docstring, the default
    shown from ``base``. ``flags``: a field's flag when it is not ``--field-name``; ``section``: the key
    :func:`apply` reads them back under (default: the class's name)."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    section = section or cls.__name__
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        flag = (flags or {}).get(f.name, "--" + f.name.replace("_", "-"))
        parse, metavar = _parser(hints[f.name], f.name)
        default = getattr(base, f.name)
        options = dict(dest=f"{section}.{f.name}", default=argparse.SUPPRESS,
                       help=f"{_plain(docs[f.name])} (default: {_show(default)})".replace("%", "%%"))
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if choices and f.name in choices and metavar is None:  # a scalar field with a fixed list of words
            options["choices"] = list(choices[f.name])
        parser.add_argument(flag, type=parse, metavar=None if "choices" in options else metavar or f.name.upper(),
                            **options)


def given(args: argparse.Namespace, cls: type, name: str, section: str | None = None) -> bool:
    """Whether the flag of ``cls``'s field ``name`` was given (flags not given are absent from ``args``)."""
    return f"{section or cls.__name__}.{name}" in vars(args)


def apply(args: argparse.Namespace, base: Any, section: str | None = None) -> Any:
    """``base`` with the fields whose flags were given (under ``section``, default the class's name) replaced."""
    prefix = (section or type(base).__name__) + "."
    changes = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return dataclasses.replace(base, **changes) if changes else base
