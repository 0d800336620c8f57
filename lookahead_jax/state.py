"""The active-learning state over a fixed pool: the labeled mask and revealed labels.

:class:`ALState` is an immutable pytree whose shapes never change across cycles (a mask
over the *fixed* pool, not a growing list); :func:`initial_indices` and
:func:`draw_candidates` are the seeded draws (:mod:`lookahead_jax.rng`) that start a run
and feed each acquisition.
"""

from __future__ import annotations

import numpy as np
from flax import struct

from lookahead_jax import rng
from lookahead_jax.config import LoopConfig


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


def initial_indices(config: LoopConfig, dataset) -> np.ndarray:
    """The initial labeled set: the pool's given labels, or a seeded random draw."""
    pool = int(dataset.x_train.shape[0])
    if config.initial_set == "auto" and dataset.given is not None and np.any(dataset.given):
        return np.flatnonzero(dataset.given)
    gen = rng.numpy_rng(rng.key(config.seed, "initial_set"))
    return np.sort(gen.choice(pool, config.initial_size, replace=False))


def draw_candidates(state: ALState, config: LoopConfig, subset: int) -> np.ndarray:
    """Sorted pool indices of a seeded random subset of the unlabeled pool, ``(subset,)``."""
    gen = rng.numpy_rng(rng.key(config.seed, "candidates", state.cycle))
    unlabeled = np.flatnonzero(~state.labeled)
    return np.sort(gen.choice(unlabeled, subset, replace=False))
