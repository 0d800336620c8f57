"""The strategy registry: one :class:`Strategy` record per name.

A record carries the selection function, whether it has a sequential mode, the model
pieces it needs, its options type, and its hooks into the network and its training
(LL4AL). :func:`register` refuses duplicates; :func:`get` lists the known names when a
name is unknown. The built-in strategies are registered by explicit imports in
:mod:`lookahead_jax.strategies` (one module per family), nothing is discovered.

Calling a record validates before any work: the options (unknown or misspelled keys,
wrong types), the model's pieces and the context (:func:`~.base.validate_context`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from lookahead_jax.models import Model, require
from lookahead_jax.registry import Registry
from lookahead_jax.strategies.base import AcquisitionContext, Selection, validate_context
from lookahead_jax.strategies.options import NoOptions, Options

SelectFn = Callable[[AcquisitionContext], Selection]


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A registered acquisition strategy.

    Attributes:
      name: the key of configs and ``--strategy``.
      select: ``select(ctx) -> Selection``; ``ctx.options`` is already an instance of
        ``options``.
      options: the options type (a frozen :class:`~.options.Options` dataclass).
      sequential: uses ``ctx.label_fn`` to reveal labels one at a time (the paper's
        sequential mode) when it is given.
      needs: the optional :class:`~lookahead_jax.models.Model` pieces it calls (e.g.
        ``("embed",)``); a model without one is refused naming it.
      wrap_model: ``wrap_model(model, options) -> model``: for strategies that change the
        network (LL4AL's loss-prediction module); the wrapper's ``apply`` must still give
        the base logits.
      aux_loss: ``aux_loss(options) -> train.AuxLoss``: an extra training term.
      doc: one line for listings.
    """

    name: str
    select: SelectFn
    options: type = NoOptions
    sequential: bool = False
    needs: tuple = ()
    wrap_model: Optional[Callable[[Model, Options], Model]] = None
    aux_loss: Optional[Callable[[Options], Callable]] = None
    doc: str = ""

    def parse_options(self, values: Any = None) -> Options:
        """The validated options instance (``values``: mapping, instance or ``None``)."""
        return self.options.parse(values, strategy=self.name)

    def check_model(self, model: Model) -> None:
        """Refuses a model that lacks a piece this strategy needs."""
        for piece in self.needs:
            require(model, piece, f"strategy {self.name!r}")

    def __call__(self, ctx: AcquisitionContext) -> Selection:
        opts = self.parse_options(ctx.options)
        self.check_model(ctx.model)
        validate_context(ctx, f"strategy {self.name!r}")
        if ctx.label_fn is not None and not self.sequential:
            raise ValueError(f"strategy {self.name!r} has no sequential mode (label_fn given)")
        return self.select(dataclasses.replace(ctx, options=opts))


_REGISTRY: Registry[Strategy] = Registry("strategy", known="known strategies")


def register(strategy: Strategy) -> Strategy:
    """Adds ``strategy``; a name already registered is refused."""
    if not (isinstance(strategy.options, type) and issubclass(strategy.options, Options)):
        raise TypeError(f"strategy {strategy.name!r}: options must be an Options subclass")
    return _REGISTRY.add(strategy.name, strategy)


def register_strategy(name: str, *, options: type = NoOptions, sequential: bool = False,
                      needs: tuple = (), wrap_model=None, aux_loss=None):
    """Decorator form of :func:`register` for a ``select(ctx) -> Selection`` function."""

    def wrap(fn: SelectFn) -> SelectFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        register(Strategy(name=name, select=fn, options=options, sequential=sequential,
                          needs=tuple(needs), wrap_model=wrap_model, aux_loss=aux_loss,
                          doc=doc[0] if doc else ""))
        return fn

    return wrap


def get(name: str) -> Strategy:
    """The record registered under ``name``; an unknown name lists the known ones."""
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    """Sorted names of every registered strategy."""
    return _REGISTRY.names()


def sequential_names() -> tuple[str, ...]:
    return tuple(n for n in names() if get(n).sequential)


def describe() -> Mapping[str, str]:
    """``{name: one-line description}``."""
    return {n: get(n).doc for n in names()}
