"""Chunks of examples laid over the devices: the NTK engine's mesh and padding helpers.

The engine (:mod:`lookahead_jax.ntk.empirical`) processes examples a fixed-size chunk at a
time. Chunks are padded to that size (repeating the last example, so every call of a
jitted piece sees the same shapes and never recompiles) and, with more than one device,
laid out over a 1-D ``Mesh(jax.devices(), ("batch",))``: ``PartitionSpec("batch")`` on
the example axis, ``PartitionSpec()`` (replicated) for parameters and column features.
Several processes: each leaf becomes a global array from the host value every process
holds (:func:`lookahead_jax.distributed.global_array`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from lookahead_jax.distributed import global_array


def mesh():
    """The 1-D ``("batch",)`` mesh over every device, or ``None`` with one device."""
    devices = jax.devices()
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), ("batch",))


def put(tree, mesh, spec):
    """``tree`` laid out over ``mesh`` as ``spec`` (unchanged without a mesh).

    One process: ``jax.device_put``. Several processes: each leaf becomes a global array
    from the host value every process holds (:func:`lookahead_jax.distributed.global_array`;
    ``device_put`` would first gather every process's copy to check they are equal).
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda a: global_array(a, sharding), tree)


def pad_rows(a, size):
    """``a`` (n, ...) padded to (size, ...) by repeating its last row (size ≥ n)."""
    n = a.shape[0]
    if n == size:
        return a
    pad = jnp.broadcast_to(a[-1:], (size - n, *a.shape[1:]))
    return jnp.concatenate([a, pad], axis=0)


def pad_tree(tree, size):
    """Every leaf of ``tree`` (example axis first) padded to ``size`` rows."""
    return jax.tree.map(lambda a: pad_rows(a, size), tree)


def round_chunk(c, n, mesh):
    """Chunk ≤ c that splits n into equal pieces (least padding), a multiple of #devices."""
    c = max(1, min(int(c), n))
    c = -(-n // -(-n // c))
    if mesh is not None:
        m = mesh.devices.size
        c = -(-c // m) * m
    return c
