"""Acquisition strategies: one registry, one calling convention, one module per family.

==========================  ========================================================
module                      strategies
==========================  ========================================================
:mod:`.uncertainty`         ``random``, ``entropy``, ``margin``, ``least_confidence``
:mod:`.diversity`           ``badge``, ``coreset``
:mod:`.bayesian`            ``bald``
:mod:`.ll4al`               ``ll4al``
:mod:`.ntk_lookahead`       ``mlmoc``, ``emoc``, ``eer``, ``label_flip`` (the paper's)
:mod:`.sgd_lookahead`       ``naive_lookahead``, ``onestep_lookahead``
:mod:`.kernel_lookahead`    ``infinite_ntk_lookahead``, ``gp_lookahead``
==========================  ========================================================

:mod:`.base` holds :class:`AcquisitionContext` and :class:`Selection`, :mod:`.options`
the typed options, :mod:`.registry` the :class:`Strategy` records. A strategy of your own::

    from lookahead_jax import strategies

    @strategies.register_strategy("my_strategy")
    def my_strategy(ctx: strategies.AcquisitionContext) -> strategies.Selection:
        return strategies.select_top(ctx, my_scores(ctx))
"""

# The built-in families register themselves on import; the order is the table's.
from lookahead_jax.strategies import uncertainty  # noqa: F401
from lookahead_jax.strategies import diversity  # noqa: F401
from lookahead_jax.strategies import bayesian  # noqa: F401
from lookahead_jax.strategies import ll4al  # noqa: F401
from lookahead_jax.strategies import ntk_lookahead  # noqa: F401
from lookahead_jax.strategies import sgd_lookahead  # noqa: F401
from lookahead_jax.strategies import kernel_lookahead  # noqa: F401
from lookahead_jax.strategies.base import (AcquisitionContext, LabelFn, Selection,
                                           predict, probabilities, select_top, top_k)
from lookahead_jax.strategies.options import NoOptions, Options, OptionsError
from lookahead_jax.strategies.registry import (Strategy, get, names, register,
                                               register_strategy, sequential_names)

get_strategy = get
available_strategies = names

__all__ = ["AcquisitionContext", "LabelFn", "NoOptions", "Options", "OptionsError",
           "Selection", "Strategy", "available_strategies", "get", "get_strategy", "names",
           "predict", "probabilities", "register", "register_strategy", "select_top",
           "sequential_names", "top_k"]
