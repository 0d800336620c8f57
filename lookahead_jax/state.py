"""The loop's state: everything a run changes, as one immutable pytree.

:class:`ALState` is the pool ledger, an immutable pytree whose shapes never change
across cycles (a mask over the *fixed* pool, not a growing list). :class:`LoopState`
(like Flax's ``TrainState``) holds it with the network variables, the query rows, the
stopping criteria's memory, the cycle waiting for its acquisition and the stopped flag;
every step of the loop takes a state and returns a new one (``state.replace(...)``).
:func:`initial_indices` and :func:`draw_candidates` are the seeded draws
(:mod:`lookahead_jax.rng`) that start a run and feed each acquisition.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from flax import struct

from lookahead_jax import rng
from lookahead_jax.config import LoopConfig
from lookahead_jax.models import Variables


class ALState(struct.PyTreeNode):
    """Immutable active-learning state over a fixed pool of N examples.

    Attributes:
      labeled: ``(N,)`` bool mask of the labeled set.
      labels: ``(N,)`` int32 revealed labels, −1 where unknown.
      cycle: ``()`` the next cycle to run.
    """

    labeled: np.ndarray
    labels: np.ndarray
    cycle: int = struct.field(pytree_node=False, default=0)

    def reveal(self, pool_indices, labels) -> "ALState":
        pool_indices = np.asarray(pool_indices, dtype=np.int64)
        if np.any(self.labeled[pool_indices]):
            raise ValueError("a queried point is already labeled")
        return self.replace(labeled=_set(self.labeled, pool_indices, True),
                            labels=_set(self.labels, pool_indices, labels))


def _set(a: np.ndarray, idx, values) -> np.ndarray:
    out = a.copy()
    out[idx] = values
    return out


def starts_from_given(config: LoopConfig, dataset) -> bool:
    """Whether the run starts from the labels that came with the pool (``initial_set``
    ``"auto"`` and a pool with given labels, a user's own data)."""
    return bool(config.initial_set == "auto" and dataset.given is not None
                and np.any(dataset.given))


def initial_indices(config: LoopConfig, dataset) -> np.ndarray:
    """The initial labeled set: the pool's given labels, or a seeded random draw."""
    pool = int(dataset.x_train.shape[0])
    if starts_from_given(config, dataset):
        return np.flatnonzero(dataset.given)
    gen = rng.numpy_rng(rng.key(config.seed, "initial_set"))
    return np.sort(gen.choice(pool, config.initial_size, replace=False))


def draw_candidates(state: ALState, config: LoopConfig, subset: int) -> np.ndarray:
    """Sorted pool indices of a seeded random subset of the unlabeled pool, ``(subset,)``."""
    gen = rng.numpy_rng(rng.key(config.seed, "candidates", state.cycle))
    unlabeled = np.flatnonzero(~state.labeled)
    return np.sort(gen.choice(unlabeled, subset, replace=False))


class LoopState(struct.PyTreeNode):
    """The whole state of a run between two steps (what :func:`~lookahead_jax.resume.
    restore` rebuilds from a workdir).

    Attributes:
      pool: the labeled mask and revealed labels over the fixed pool, and ``pool.cycle``,
        the next cycle to run.
      variables: the network of the last trained cycle (fresh before cycle 0).
      queries: the query rows so far, one per acquisition (``cycle``, ``indices``,
        ``labels``).
      memory: the stopping criteria's memory, ``{criterion: JSON-serialisable dict}``.
      pending: the metrics row of cycle ``pool.cycle`` once it is trained and waiting for
        its acquisition (the labels it asks for), else ``None``; ``pending["recorded"]``:
        that row is in the workdir already (the last cycle of a finished run that is
        given more cycles).
      stopped: ``{"cycle", "by", "value"}`` once a stopping criterion fired, else ``None``.
    """

    pool: ALState
    variables: Variables
    queries: tuple = struct.field(pytree_node=False, default=())
    memory: dict = struct.field(pytree_node=False, default_factory=dict)
    pending: Optional[dict] = struct.field(pytree_node=False, default=None)
    stopped: Optional[dict] = struct.field(pytree_node=False, default=None)

    @property
    def cycle(self) -> int:
        """The cycle to run next (``pool.cycle``)."""
        return self.pool.cycle
