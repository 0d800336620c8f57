"""Typed options: one frozen dataclass per strategy or stopping criterion, validated
before any work.

Strategies (:mod:`lookahead_jax.strategies`) and stopping criteria
(:mod:`lookahead_jax.stopping`) both declare their options with it. An options type
lists every setting it reads, with its type, default and documentation in one place (the
model is optax's ``alias.py``: typed, defaulted, documented arguments).
:meth:`Options.parse` turns a plain mapping (a config's ``strategy_options``, a
``--config.strategy_options.<name>=...`` flag) into an instance:

* an unknown or misspelled key is refused with the known ones listed (and the closest
  match suggested);
* a value of the wrong type is refused naming the option, the value and the type;
* range checks (:meth:`Options.check`) run at construction.

Field types understood: ``int``, ``float`` (an int is accepted), ``bool``, ``str``,
``typing.Literal[...]`` (one of the listed values), ``Optional[...]`` and ``Any``
(API-only values such as arrays).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Literal, Mapping, Union

import numpy as np


class OptionsError(ValueError):
    """A strategy option is unknown, of the wrong type or out of range."""


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + " or None"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp, value, where: str):
    """``value`` as type ``tp`` (int → float allowed), else :class:`OptionsError`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except OptionsError:
                pass
        raise OptionsError(f"{where} must be {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
        raise OptionsError(f"{where} must be {_describe(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif tp is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and \
                not isinstance(value, (bool, np.bool_)):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise OptionsError(f"{where} must be {_describe(tp)}, got {value!r} "
                       f"({type(value).__name__})")


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every strategy's options (a frozen, hashable dataclass).

    Subclasses declare fields with types and defaults and document them in their
    docstring; :meth:`check` adds range checks. Construction validates types.
    """

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"option {f.name!r} of {type(self).__name__}"
            object.__setattr__(self, f.name, _coerce(hints[f.name], getattr(self, f.name),
                                                     where))
        self.check()

    def check(self) -> None:
        """Range checks; raise :class:`OptionsError` (subclasses override)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def parse(cls, values: Union[Mapping[str, Any], "Options", None], *,
              strategy: str = "") -> "Options":
        """An instance from a mapping (``None``: the defaults); unknown keys are refused."""
        if isinstance(values, cls):
            return values
        if isinstance(values, Options):
            raise OptionsError(f"strategy {strategy!r} takes {cls.__name__}, got "
                               f"{type(values).__name__}")
        values = dict(values or {})
        known = cls.names()
        unknown = [k for k in values if k not in known]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = ", ".join(known) if known else "none: it takes no options"
            raise OptionsError(f"strategy {strategy!r} has no option {k!r}{hint}; its "
                               f"options: {listing}")
        try:
            return cls(**values)
        except OptionsError as e:
            raise OptionsError(f"strategy {strategy!r}: {e}") from None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def positive(opts: Options, *names: str) -> None:
    """Refuses a non-positive value of any of ``names``."""
    for n in names:
        v = getattr(opts, n)
        if v is not None and not v > 0:
            raise OptionsError(f"option {n!r} must be positive, got {v!r}")


def non_negative(opts: Options, *names: str) -> None:
    for n in names:
        v = getattr(opts, n)
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise OptionsError(f"option {n!r} must be a finite number >= 0, got {v!r}")


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """The strategy takes no options."""
