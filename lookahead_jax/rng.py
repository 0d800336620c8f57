"""The one PRNG scheme of a run: a root key from the seed, ``fold_in`` per purpose and cycle.

Every random choice of an active-learning run is derived here, so two runs with the same
seed make the same choices and no two purposes share a stream::

    root        = jax.random.key(seed)
    key(p)      = fold_in(root, PURPOSES[p])                  e.g. the initial draw
    key(p, c)   = fold_in(fold_in(root, PURPOSES[p]), c)      e.g. cycle c's candidates

Host-side choices (the initial labeled set, the candidate subsets, the epoch shuffles)
use a NumPy ``Generator`` seeded with the raw bits of the same key (:func:`numpy_rng`),
so NumPy and JAX randomness come from one tree of keys.

Purposes (:data:`PURPOSES`):
  * ``init``: network initialisation (cycle c > 0 only for cold starts).
  * ``initial_set``: the seeded random initial labeled set.
  * ``candidates``: cycle c's random subset of the unlabeled pool.
  * ``train``: cycle c's training (shuffles from its NumPy stream, dropout masks from
    ``fold_in(key, step)``).
  * ``acquire``: cycle c's strategy key (``AcquisitionContext.key``).
  * ``stop``: stopping criteria that draw (e.g. a fixed stop set).
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

PURPOSES: dict[str, int] = {
    "init": 1,
    "initial_set": 2,
    "candidates": 3,
    "train": 4,
    "acquire": 5,
    "stop": 6,
}


def root_key(seed: int) -> jax.Array:
    """The run's root key ``jax.random.key(seed)``; ``seed`` is a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return jax.random.key(int(seed))


def key(seed: int, purpose: str, cycle: Optional[int] = None) -> jax.Array:
    """``fold_in(root, purpose)``, then ``fold_in(·, cycle)`` when a cycle is given."""
    try:
        k = jax.random.fold_in(root_key(seed), PURPOSES[purpose])
    except KeyError:
        raise ValueError(f"unknown PRNG purpose {purpose!r}; known: {', '.join(PURPOSES)}") \
            from None
    return k if cycle is None else jax.random.fold_in(k, int(cycle))


def numpy_rng(k: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded with the raw bits of key ``k`` (host-side choices)."""
    return np.random.default_rng(np.asarray(jax.device_get(jax.random.key_data(k)), np.uint64))
