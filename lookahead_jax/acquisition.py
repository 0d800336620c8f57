"""Acquisition strategies: one registry, one calling convention.

Every strategy is a function ``select(ctx: AcquisitionContext) -> Selection`` registered
under a name with :func:`register_strategy`. The loop (``loop.py``) builds the context
once per cycle from the trained network and the random candidate subset, calls the
strategy, and reveals the labels of the returned candidates through the oracle.

The myopic baselines of the paper live here (``random``, ``entropy``, ``margin``,
``least_confidence``); the NTK look-ahead (``lookahead.py``) and the other baselines
register themselves through the same :func:`register_strategy`.

Probabilities. Networks trained with squared loss on one-hot targets output scores, not
log-probabilities; like the paper (and the authors' code) we turn any network output into
class probabilities with ``softmax(f(x))``. For squared-loss outputs (roughly in [0, 1])
this is a monotone but flattened calibration: entropy, margin and least-confidence *rank*
candidates by the same order statistics of ``f(x)`` as they would on calibrated
probabilities only approximately, so compare strategies under the same loss.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PyTree = Any
Array = jax.Array


class LabelFn(Protocol):
    """Reveals the true label of one candidate (sequential strategies).

    ``label_fn(j)`` takes ``j``, a position in ``ctx.x_candidates`` (not a pool index),
    and returns the integer class label. The loop's implementation writes every
    revealed label to the workdir before returning it, so nothing is lost if the run
    stops half-way.
    """

    def __call__(self, j: int) -> int:
        ...


@dataclasses.dataclass(frozen=True)
class AcquisitionContext:
    """Everything a strategy may look at in one acquisition step.

    Shapes: L labeled points, U candidates, C classes, inputs ``(..., H, W, Ch)``.

    Attributes:
      apply_fn: ``f(params, x) -> (n, C)`` logits in evaluation mode (BatchNorm running
        statistics bound, dropout off). This is the function the NTK engine
        differentiates: only ``params`` are parameters.
      params: the ``params`` collection of the trained network f_L.
      variables: the full variable dict (``params`` plus e.g. ``batch_stats``), for
        strategies that call ``model.apply`` themselves (embeddings, MC dropout).
      model: the Flax module (or ``None`` for plain functions).
      x_labeled: ``(L, ...)`` float32 labeled inputs X.
      y_labeled: ``(L,)`` int32 labels Y.
      x_candidates: ``(U, ...)`` float32 candidate inputs (the random subset of the
        unlabeled pool; also the evaluation set of look-ahead scores by default).
      num_classes: C.
      query_size: how many candidates to return.
      key: PRNG key for this acquisition (already folded with the cycle number).
      loss: ``"mse"`` or ``"ce"``, the loss the network was trained with.
      label_fn: reveals a candidate's true label; ``None`` when labels may only be
        revealed after selection (batch mode). Strategies registered with
        ``sequential=True`` run the paper's sequential mode when it is given.
      labeled_capacity: the largest L this run will reach (initial + all queries).
        Strategies that compile on L pad their buffers to it so that a growing
        labeled set never recompiles (``None``: no padding).
      options: strategy-specific settings (e.g. ``{"kernel": "first_logit"}``).
    """

    apply_fn: Callable[[PyTree, Array], Array]
    params: PyTree
    x_labeled: Array
    y_labeled: Array
    x_candidates: Array
    num_classes: int
    query_size: int
    key: Array
    variables: Optional[PyTree] = None
    model: Any = None
    loss: str = "mse"
    label_fn: Optional[LabelFn] = None
    labeled_capacity: Optional[int] = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_candidates(self) -> int:
        return int(self.x_candidates.shape[0])

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


class Selection(NamedTuple):
    """A strategy's answer.

    Attributes:
      indices: ``(query_size,)`` int, distinct positions in ``ctx.x_candidates``, in the
        order they were chosen.
      scores: ``(U,)`` float64 score of every candidate (higher = more wanted); finite.
      revealed: ``(query_size,)`` int labels already revealed through ``label_fn``
        (sequential strategies), else ``None``.
      info: scalars worth logging (e.g. the Cholesky jitter used).
    """

    indices: np.ndarray
    scores: np.ndarray
    revealed: Optional[np.ndarray] = None
    info: Mapping[str, float] = {}


StrategyFn = Callable[[AcquisitionContext], Selection]


class _Entry(NamedTuple):
    fn: StrategyFn
    sequential: bool
    doc: str
    wrap_model: Optional[Callable[[Any], Any]]
    fit: Optional[Callable[..., Any]]


_REGISTRY: dict[str, _Entry] = {}


def register_strategy(name: str, *, sequential: bool = False,
                      wrap_model: Optional[Callable[[Any], Any]] = None,
                      fit: Optional[Callable[..., Any]] = None):
    """Decorator adding ``fn`` to the strategy registry under ``name``.

    Args:
      name: the key used by configs and ``--strategy``; duplicates are refused.
      sequential: whether the strategy uses ``ctx.label_fn`` to reveal labels one at a
        time (the paper's sequential mode).
      wrap_model: for strategies that change the network itself (LL4AL's loss-prediction
        module): ``wrap_model(module) -> module``; the wrapper's ``__call__(x, train)``
        must still return the base logits ``(n, C)``.
      fit: for strategies that change training: a drop-in replacement of
        :func:`lookahead_jax.train.fit` with the same signature and return value.
    """

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = _Entry(fn, sequential, doc[0] if doc else "", wrap_model, fit)
        return fn

    return wrap


def strategy_hooks(name: str) -> tuple[Optional[Callable], Optional[Callable]]:
    """``(wrap_model, fit)`` registered with a strategy (``None`` for the defaults)."""
    get_strategy(name)
    entry = _REGISTRY[name]
    return entry.wrap_model, entry.fit


def _ensure_builtin_strategies() -> None:
    """Imports the modules that register strategies (idempotent)."""
    import importlib

    for module in ("lookahead_jax.lookahead", "lookahead_jax.baselines"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # a module that does not exist yet
            if e.name != module:
                raise


def available_strategies() -> tuple[str, ...]:
    """Sorted names of every registered strategy."""
    _ensure_builtin_strategies()
    return tuple(sorted(_REGISTRY))


def get_strategy(name: str) -> StrategyFn:
    """Looks a strategy up by name; an unknown name lists the known ones."""
    _ensure_builtin_strategies()
    try:
        return _REGISTRY[name].fn
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown strategy {name!r}; known strategies: {known}") from None


def is_sequential(name: str) -> bool:
    get_strategy(name)
    return _REGISTRY[name].sequential


# ----------------------------------------------------------------------------- helpers


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite scores, best first; ties by lower index.

    Args:
      scores: ``(U,)`` array; NaN is refused (a NaN score is a bug upstream).
      k: ``1 <= k <= U``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise FloatingPointError(f"{bad} of {scores.size} acquisition scores are not finite")
    if not 1 <= k <= scores.size:
        raise ValueError(f"cannot select {k} of {scores.size} candidates")
    # stable sort on -score keeps the lower index first among ties
    return np.argsort(-scores, kind="stable")[:k]


def predict_in_chunks(apply_fn, params, x: Array, chunk_size: int = 1024) -> Array:
    """``apply_fn(params, x)`` evaluated on fixed-size chunks (the last one padded).

    Padding keeps one compiled shape for any number of inputs. Returns ``(n, C)``.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("predict_in_chunks needs at least one input")
    chunk = min(chunk_size, n)
    fn = pytree_fn_caller(apply_fn)
    outs = []
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        m = int(xb.shape[0])
        if m < chunk:
            xb = jnp.concatenate([xb, jnp.zeros((chunk - m,) + xb.shape[1:], xb.dtype)])
        outs.append(fn(params, xb)[:m])
    return jnp.concatenate(outs)


_JIT_CACHE: dict[int, tuple] = {}


def pytree_fn_caller(fn) -> Callable[[PyTree, Array], Array]:
    """A jitted ``(params, x) -> fn(params, x)`` that does not retrace every cycle.

    A :class:`~lookahead_jax.models.BoundModel` (a pytree) goes through one shared jit
    as an argument; a plain function gets one ``jax.jit`` per function object.
    """
    if isinstance(fn, struct.PyTreeNode):
        return functools.partial(_apply_pytree_fn, fn)
    entry = _JIT_CACHE.get(id(fn))
    if entry is None or entry[0] is not fn:
        entry = (fn, jax.jit(fn))
        _JIT_CACHE[id(fn)] = entry
    return entry[1]


@jax.jit
def _apply_pytree_fn(fn, params, x):
    return fn(params, x)


def candidate_probabilities(ctx: AcquisitionContext) -> Array:
    """``softmax(f_L(x'))`` for every candidate, ``(U, C)`` float32."""
    return jax.nn.softmax(predict_in_chunks(ctx.apply_fn, ctx.params, ctx.x_candidates), -1)


def _score_selection(ctx: AcquisitionContext, scores: Array) -> Selection:
    scores = np.asarray(scores, dtype=np.float64)
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores)


# ----------------------------------------------------------------------------- myopic


def entropy_scores(probs: Array) -> Array:
    """Predictive entropy H(Y | x) = -Σ_c p_c log p_c, ``(U, C) -> (U,)``."""
    return -jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=-1)


def margin_scores(probs: Array) -> Array:
    """Negative gap between the two largest probabilities, ``(U, C) -> (U,)``.

    Margin sampling (Roth & Small, 2006) queries the *smallest* gap p_(1) - p_(2); we
    return its negative so that, like every score here, higher means more wanted. (The
    authors' released code sorted the gap the wrong way and picked the most confident.)
    """
    top2 = jax.lax.top_k(probs, 2)[0]
    return -(top2[:, 0] - top2[:, 1])


def least_confidence_scores(probs: Array) -> Array:
    """``1 - max_c p_c``, ``(U, C) -> (U,)``."""
    return 1.0 - jnp.max(probs, axis=-1)


@register_strategy("random")
def random_strategy(ctx: AcquisitionContext) -> Selection:
    """Uniformly random candidates (scores are i.i.d. uniform draws from ``ctx.key``)."""
    scores = jax.random.uniform(ctx.key, (ctx.num_candidates,), dtype=jnp.float32)
    return _score_selection(ctx, scores)


@register_strategy("entropy")
def entropy_strategy(ctx: AcquisitionContext) -> Selection:
    """Maximum predictive entropy of softmax(f_L(x')). Cost: one forward pass over U."""
    return _score_selection(ctx, entropy_scores(candidate_probabilities(ctx)))


@register_strategy("margin")
def margin_strategy(ctx: AcquisitionContext) -> Selection:
    """Smallest gap between the two most probable classes. Cost: one forward pass over U."""
    return _score_selection(ctx, margin_scores(candidate_probabilities(ctx)))


@register_strategy("least_confidence")
def least_confidence_strategy(ctx: AcquisitionContext) -> Selection:
    """Lowest top-class probability. Cost: one forward pass over U."""
    return _score_selection(ctx, least_confidence_scores(candidate_probabilities(ctx)))
