"""Myopic baselines: random, entropy, margin and least confidence.

Each looks at softmax(f_L(x')) of the candidates only (one forward pass over U). The
score functions map probabilities ``(U, C)`` to scores ``(U,)``, higher = more wanted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lookahead_jax.strategies.base import (AcquisitionContext, Selection, entropy,
                                           probabilities, select_top)
from lookahead_jax.strategies.registry import register_strategy

Array = jax.Array


def entropy_scores(probs: Array) -> Array:
    """Predictive entropy H(Y | x) = -Σ_c p_c log p_c, ``(U, C) -> (U,)``."""
    return entropy(probs)


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
    return select_top(ctx, jax.random.uniform(ctx.key, (ctx.num_candidates,), jnp.float32))


@register_strategy("entropy")
def entropy_strategy(ctx: AcquisitionContext) -> Selection:
    """Maximum predictive entropy of softmax(f_L(x')). Cost: one forward pass over U."""
    return select_top(ctx, entropy_scores(probabilities(ctx)))


@register_strategy("margin")
def margin_strategy(ctx: AcquisitionContext) -> Selection:
    """Smallest gap between the two most probable classes. Cost: one forward pass over U."""
    return select_top(ctx, margin_scores(probabilities(ctx)))


@register_strategy("least_confidence")
def least_confidence_strategy(ctx: AcquisitionContext) -> Selection:
    """Lowest top-class probability. Cost: one forward pass over U."""
    return select_top(ctx, least_confidence_scores(probabilities(ctx)))
