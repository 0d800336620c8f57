"""What every strategy sees and returns: :class:`AcquisitionContext` and :class:`Selection`.

A strategy is a function ``select(ctx) -> Selection`` registered under a name
(:mod:`~lookahead_jax.strategies.registry`). The loop builds the context once per cycle
from the trained network and the random candidate subset, calls the strategy, and reveals
the labels of the returned candidates through the oracle.

The helpers here are the pieces strategies share, each written once: the top-k tail
(:func:`select_top`), network outputs on device (:func:`predict`), class probabilities
(:func:`probabilities`) and padding to a fixed capacity (:func:`pad_rows`); the entropy
formula is :func:`lookahead_jax.numerics.entropy`.

Probabilities. Networks trained with squared loss on one-hot targets output scores, not
log-probabilities; like the paper (and the authors' code) we turn any network output into
class probabilities with ``softmax(f(x))``. For squared-loss outputs (roughly in [0, 1])
this is a monotone but flattened calibration, so compare strategies under the same loss.

Device residency: scores stay on the device; :func:`top_k` moves only the chosen indices
and two check values (the number of non-finite scores, the k-th best score) to the host,
in one explicit transfer. Its device half, :func:`top_k_on_device`, moves nothing, so a
strategy can keep its whole acquisition on the device and fetch once at the end
(:func:`check_top_k` is the host half).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax.models import Bound, Model, Variables, apply_in_chunks, check_outputs
from lookahead_jax.numerics import entropy  # noqa: F401  (re-exported for the strategies)

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

    Shapes: L labeled points, U candidates, C classes, inputs ``(n, ...)`` of any
    per-example shape (images NHWC, tabular ``(n, d)``, embeddings).

    Attributes:
      model: the network as a :class:`~lookahead_jax.models.Model`.
      params: the trained parameters of f_L (what the NTK is taken with respect to).
      x_labeled: ``(L, ...)`` float labeled inputs X.
      y_labeled: ``(L,)`` int labels Y in ``[0, C)``.
      x_candidates: ``(U, ...)`` candidate inputs (the random subset of the unlabeled
        pool; also the evaluation set of the look-ahead scores by default).
      num_classes: C.
      query_size: how many candidates to return, ``1 <= query_size <= U``.
      key: PRNG key for this acquisition (already folded with the cycle number).
      state: the model's non-parameter state (BatchNorm statistics; ``{}`` if none).
      loss: ``"mse"`` or ``"ce"``, the loss the network was trained with.
      label_fn: reveals a candidate's true label; ``None`` in batch mode. Strategies
        registered with ``sequential=True`` run the paper's sequential mode when given.
      labeled_capacity: the largest L this run will reach. Strategies that compile on L
        pad their buffers to it so that a growing labeled set never recompiles.
      options: the strategy's options: an instance of its options type, a mapping
        (validated when the strategy is called) or ``None`` for the defaults.
    """

    model: Model
    params: PyTree
    x_labeled: Array
    y_labeled: Array
    x_candidates: Array
    num_classes: int
    query_size: int
    key: Array
    state: PyTree = dataclasses.field(default_factory=dict)
    loss: str = "mse"
    label_fn: Optional[LabelFn] = None
    labeled_capacity: Optional[int] = None
    options: Any = None

    @property
    def num_candidates(self) -> int:
        return int(self.x_candidates.shape[0])

    @property
    def num_labeled(self) -> int:
        return int(self.x_labeled.shape[0])

    @property
    def apply_fn(self) -> Bound:
        """``f(params, x) -> (n, C)`` in evaluation mode (the state bound)."""
        return self.model.bind(self.state)

    @property
    def capacity(self) -> int:
        """The labeled capacity, at least L (fixed-shape buffers are padded to it)."""
        return max(int(self.labeled_capacity or 0), self.num_labeled)


class Selection(NamedTuple):
    """A strategy's answer.

    Attributes:
      indices: ``(query_size,)`` int64 on the host: distinct positions in
        ``ctx.x_candidates``, in the order they were chosen.
      scores: ``(U,)`` score of every candidate (higher = more wanted), on device; for
        set-based strategies a per-candidate quantity worth logging (documented per
        strategy), not what decided the picks.
      revealed: ``(query_size,)`` labels already revealed through ``label_fn``
        (sequential strategies), else ``None``.
      info: host scalars worth logging (e.g. the Cholesky jitter used).
    """

    indices: np.ndarray
    scores: Array
    revealed: Optional[np.ndarray] = None
    info: Mapping[str, float] = {}


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _context_flags(y, x_labeled, x_candidates, num_classes: int) -> dict:
    """Labels in ``[0, C)`` and finite inputs, one flag each, on device (empty: True)."""
    return {"y_labeled": jnp.all((y >= 0) & (y < num_classes)),
            "x_labeled": jnp.all(jnp.isfinite(x_labeled)),
            "x_candidates": jnp.all(jnp.isfinite(x_candidates))}


def validate_context(ctx: AcquisitionContext, who: str) -> None:
    """Refuses a context no strategy can answer, naming the problem (before any work).

    Checks: at least one candidate; ``1 <= query_size <= U``; C ≥ 2; labels integers in
    ``[0, C)`` matching the labeled inputs; the same per-example shape for labeled and
    candidate inputs; finite inputs (one flag per array, computed on the device, comes to
    the host in one explicit transfer); the model's outputs ``(n, C)``
    (:func:`~lookahead_jax.models.check_outputs`, traced, not run).
    """
    U, L = ctx.num_candidates, ctx.num_labeled
    q = ctx.query_size
    if U == 0:
        raise ValueError(f"{who}: the candidate set is empty")
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= U:
        raise ValueError(f"{who}: query_size must be an integer in [1, {U}] (the number of "
                         f"candidates), got {q!r}")
    C = ctx.num_classes
    if isinstance(C, bool) or not isinstance(C, (int, np.integer)) or C < 2:
        raise ValueError(f"{who}: num_classes must be an integer >= 2, got {C!r}")
    y = ctx.y_labeled
    if tuple(np.shape(y)) != (L,):
        raise ValueError(f"{who}: y_labeled must have shape ({L},) to match x_labeled, got "
                         f"{tuple(np.shape(y))}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"{who}: y_labeled must hold integer class labels, got dtype "
                         f"{jnp.result_type(y)}")
    if tuple(ctx.x_labeled.shape[1:]) != tuple(ctx.x_candidates.shape[1:]):
        raise ValueError(f"{who}: labeled inputs are {tuple(ctx.x_labeled.shape[1:])} per "
                         f"example but candidates are {tuple(ctx.x_candidates.shape[1:])}")
    checks = _context_flags(y, ctx.x_labeled, ctx.x_candidates, int(C))
    for name, ok in jax.device_get(checks).items():
        if not bool(ok):
            what = f"labels outside [0, {C})" if name == "y_labeled" else "NaN or inf values"
            raise ValueError(f"{who}: {name} holds {what}")
    check_outputs(ctx.model, int(C), ctx.x_candidates, Variables(ctx.params, ctx.state),
                  who=who)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_jit(scores: Array, k: int) -> tuple[Array, Array, Array]:
    values, idx = jax.lax.top_k(scores, k)
    return idx, jnp.sum(jnp.isnan(scores) | (scores == jnp.inf)), values[-1]


def top_k_on_device(scores, k: int) -> tuple[Array, Array, Array]:
    """The device half of :func:`top_k`: one jitted program, nothing leaves the device.

    Args:
      scores: ``(U,)`` scores (``-inf``: may not be picked).
      k: how many, ``1 <= k <= U`` (checked from the shape, on the host).

    Returns:
      ``(indices (k,) int32, bad () int32, worst ())``: positions of the ``k`` largest
      scores, best first (ties to the lower index), the number of NaN or +inf scores, and
      the k-th largest score; :func:`check_top_k` raises :func:`top_k`'s errors from
      host copies of the last two.
    """
    scores = jnp.asarray(scores)
    n = int(scores.shape[0])
    if not 1 <= int(k) <= n:
        raise ValueError(f"cannot select {k} of {n} candidates")
    return _top_k_jit(scores, int(k))


def check_top_k(bad, worst, k: int, n: int) -> None:
    """The host half of :func:`top_k`: raises when the top ``k`` of ``n`` scores may not be
    used (``bad``, ``worst``: host copies of :func:`top_k_on_device`'s check values)."""
    if int(bad):
        raise FloatingPointError(f"{int(bad)} of {n} acquisition scores are not finite")
    if worst == -np.inf:
        raise ValueError(f"cannot select {k} of {n} candidates: fewer than {k} may be picked")


def top_k(scores, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first; ties go to the lower index.

    Runs on the device (``jax.lax.top_k``, :func:`top_k_on_device`); only the ``k``
    indices and two check values come to the host, in one explicit transfer. ``-inf``
    marks candidates that may not be picked.

    Raises:
      FloatingPointError: a score is NaN or +inf (a bug upstream).
      ValueError: ``k`` is not in ``[1, U]``, or fewer than ``k`` scores are above ``-inf``.
    """
    scores = jnp.asarray(scores)
    idx, bad, worst = jax.device_get(top_k_on_device(scores, k))
    check_top_k(bad, worst, int(k), int(scores.shape[0]))
    return np.asarray(idx, np.int64)


def select_top(ctx: AcquisitionContext, scores, info: Optional[Mapping[str, float]] = None
               ) -> Selection:
    """The ranking strategies' answer: the top ``query_size`` of ``scores`` ``(U,)``."""
    return Selection(indices=top_k(scores, ctx.query_size), scores=jnp.asarray(scores),
                     info=dict(info or {}))


def predict(ctx: AcquisitionContext, x, chunk_size: int = 1024) -> Array:
    """Evaluation-mode logits ``(n, C)`` of f_L, on device."""
    return apply_in_chunks(ctx.apply_fn, ctx.params, x, chunk_size)


def probabilities(ctx: AcquisitionContext) -> Array:
    """``softmax(f_L(x'))`` for every candidate, ``(U, C)``."""
    return jax.nn.softmax(predict(ctx, ctx.x_candidates), -1)


def pad_rows(a, rows: int, fill: str = "zeros") -> Array:
    """``a`` padded along axis 0 to ``rows`` (fixed-shape buffers), on device.

    ``fill``: ``"zeros"``, or ``"first"`` (copies of the first row: real inputs, so every
    per-example quantity computed from the padding stays finite).
    """
    a = jnp.asarray(a)
    if a.shape[0] == rows:
        return a
    if fill == "first":
        return jnp.concatenate([a, jnp.broadcast_to(a[:1], (rows - a.shape[0],) + a.shape[1:])])
    return jnp.zeros((rows,) + a.shape[1:], a.dtype).at[:a.shape[0]].set(a)
