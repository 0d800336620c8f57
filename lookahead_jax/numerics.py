"""Small numerical helpers shared by the look-ahead algebra and the strategies."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def entropy(probs: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy −Σ p log p along ``axis`` (0 log 0 = 0), in nats."""
    return -jnp.sum(probs * jnp.log(jnp.clip(probs, 1e-30)), axis=axis)
