"""Diversity baselines: BADGE and core-set (both need the model's ``embed`` piece).

* ``badge`` (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient embeddings
  of the training loss at the pseudo-label.
* ``coreset`` (Sener & Savarese, ICLR 2018): k-center greedy on penultimate features.

Both choose a set, not a ranking: ``Selection.indices`` is the chosen set in pick order and
``scores`` a per-candidate quantity worth logging (documented per strategy).
Shapes: U candidates, L labeled points, C classes, D penultimate features.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import train as train_lib
from lookahead_jax.models import Bound, apply_in_chunks
from lookahead_jax.strategies.base import (AcquisitionContext, Selection, pad_rows,
                                           predict)
from lookahead_jax.strategies.options import Options
from lookahead_jax.strategies.registry import register_strategy

Array = jax.Array


def embeddings(ctx: AcquisitionContext, x, chunk_size: int = 1024) -> Array:
    """Penultimate features ``h(x)`` ``(n, D)`` of f_L (the model's ``embed``), on device."""
    return apply_in_chunks(Bound(ctx.model.embed, ctx.state), ctx.params, x, chunk_size)


def _pseudo_onehot(logits: Array) -> Array:
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=logits.dtype)


# ============================================================================ BADGE


def badge_output_gradients(logits: Array, loss: str) -> Array:
    """∂ℓ/∂f at the pseudo-label ŷ = argmax f(x): ``(n, C)``.

    ``"mse"`` (ℓ = ½‖onehot(ŷ) − f‖²): f − onehot(ŷ); ``"ce"``: softmax(f) − onehot(ŷ).
    """
    if loss not in train_lib.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known losses: {train_lib.LOSSES}")
    onehot = _pseudo_onehot(logits)
    pred = logits if loss == "mse" else jax.nn.softmax(logits, -1)
    return pred - onehot


def badge_embeddings(logits: Array, h: Array, loss: str, include_bias: bool = False) -> Array:
    """BADGE gradient embeddings ``(n, D·C)`` (``(n, (D+1)·C)`` with the bias).

    The gradient of the per-example training loss at the pseudo-label with respect to the
    readout kernel ``W (D, C)`` is ``h ⊗ g`` with ``g = ∂ℓ/∂f``; flattened row-major this
    equals ``jax.grad`` w.r.t. the kernel, ``.reshape(-1)``. With ``include_bias`` the
    bias gradient ``g`` is appended (h gains a constant 1). Materialises n·D·C floats:
    small problems and tests; the strategy works from (g, h) directly.
    """
    g = badge_output_gradients(logits, loss)
    if include_bias:
        h = jnp.concatenate([h, jnp.ones_like(h[:, :1])], axis=-1)
    return (h[:, :, None] * g[:, None, :]).reshape(h.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_pp_outer(g: Array, h: Array, key: Array, k: int) -> Array:
    """k-means++ seeding on outer-product embeddings e_i = h_i ⊗ g_i, ``(k,)`` int32.

    The first centre is the largest-norm embedding (as in the BADGE reference code);
    each further centre is drawn with probability ∝ D²(e) (squared distance to the
    nearest chosen centre), chosen points excluded. If every remaining D² is 0 the first
    unchosen point is taken. Distances use ⟨h_i⊗g_i, h_j⊗g_j⟩ = (h_i·h_j)(g_i·g_j), so
    e is never formed: O(k·U·(C + D)) time, O(U·(C + D)) memory.

    Args:
      g: ``(U, C)`` output gradients; h: ``(U, D)`` features; key: PRNG key; k ≤ U.
    """
    sq = jnp.sum(g * g, -1) * jnp.sum(h * h, -1)

    def d2_to(j):
        return jnp.maximum(sq + sq[j] - 2.0 * (g @ g[j]) * (h @ h[j]), 0.0)

    first = jnp.argmax(sq).astype(jnp.int32)     # int64 under jax_enable_x64
    taken = jnp.zeros(sq.shape, bool).at[first].set(True)
    chosen = jnp.zeros((k,), jnp.int32).at[0].set(first)

    def body(t, carry):
        d2, taken, chosen = carry
        d2m = jnp.where(taken, 0.0, d2)
        fallback = jnp.where(taken, -jnp.inf, -jnp.arange(sq.shape[0], dtype=d2.dtype))
        logits = jnp.where(jnp.sum(d2m) > 0, jnp.log(d2m), fallback)
        j = jnp.where(jnp.sum(d2m) > 0,
                      jax.random.categorical(jax.random.fold_in(key, t), logits),
                      jnp.argmax(fallback)).astype(jnp.int32)
        return jnp.minimum(d2, d2_to(j)), taken.at[j].set(True), chosen.at[t].set(j)

    _, _, chosen = jax.lax.fori_loop(1, k, body, (d2_to(first), taken, chosen))
    return chosen


@dataclasses.dataclass(frozen=True)
class BadgeOptions(Options):
    """Options of ``badge``.

    Attributes:
      include_bias: append the readout bias gradient to the embedding (the reference
        code excludes it).
    """

    include_bias: bool = False


@register_strategy("badge", options=BadgeOptions, needs=("embed",))
def badge_strategy(ctx: AcquisitionContext) -> Selection:
    """BADGE: k-means++ seeding on last-layer gradient embeddings (Ash et al., 2020).

    Embedding of candidate x: the gradient of the loss the network was trained with
    (``ctx.loss``) at the pseudo-label ŷ = argmax f_L(x), w.r.t. the readout kernel:
    squared loss ½‖onehot(ŷ) − f‖² gives (f − onehot(ŷ)) ⊗ h(x), cross-entropy gives
    (softmax f − onehot(ŷ)) ⊗ h(x). The first centre is the largest-norm embedding, then
    D² sampling with ``ctx.key``.

    ``scores``: the gradient-embedding norm ‖g‖‖h‖ (BADGE's uncertainty term).
    Cost: one forward pass over U, then O(query_size · U · (C + D)) time and
    O(U · (C + D)) memory (the U × D·C embedding matrix is never formed).
    """
    logits = predict(ctx, ctx.x_candidates)
    h = embeddings(ctx, ctx.x_candidates)
    g = badge_output_gradients(logits, ctx.loss)
    if ctx.options.include_bias:
        h = jnp.concatenate([h, jnp.ones_like(h[:, :1])], axis=-1)
    idx = kmeans_pp_outer(g, h, ctx.key, int(ctx.query_size))
    scores = jnp.linalg.norm(g, axis=-1) * jnp.linalg.norm(h, axis=-1)
    return Selection(indices=np.asarray(jax.device_get(idx), np.int64), scores=scores)


# ============================================================================ core-set


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def kcenter_greedy(feat_u: Array, feat_l: Array, k: int, chunk: int = 512,
                   num_labeled: Optional[Array] = None) -> tuple[Array, Array]:
    """k-center greedy (Sener & Savarese, 2018): ``(indices (k,), min distances (U,))``.

    Centres start as the labeled set; each step picks the candidate farthest from its
    nearest centre (ties: lowest index) and adds it to the centres. The returned
    distances are those to the labeled set before any pick. Distances to the labeled set
    use ‖u‖² + ‖l‖² − 2u·l in blocks of ``chunk`` labeled points; pick updates use exact
    differences. Time O(U·L·D + k·U·D), memory O(U·(D + chunk)).

    Args:
      feat_u: ``(U, D)`` candidate features; feat_l: ``(L, D)`` labeled features (L ≥ 0).
      num_labeled: ``()`` int, only the first rows of ``feat_l`` are real (a buffer
        padded to the labeled capacity, so a growing L never recompiles); default L.
    """
    U = feat_u.shape[0]
    nu = jnp.sum(feat_u * feat_u, -1)
    L = feat_l.shape[0]
    if L == 0:
        d2 = jnp.full((U,), jnp.inf, feat_u.dtype)
    else:
        m = min(chunk, L)
        nb = -(-L // m)
        pad = jnp.zeros((nb * m - L, feat_l.shape[1]), feat_l.dtype)
        blocks = jnp.concatenate([feat_l, pad]).reshape(nb, m, -1)
        n_real = L if num_labeled is None else num_labeled
        valid = (jnp.arange(nb * m) < n_real).reshape(nb, m)

        def block_min(args):
            fl, v = args
            d = nu[:, None] + jnp.sum(fl * fl, -1)[None, :] - 2.0 * feat_u @ fl.T
            return jnp.min(jnp.where(v[None, :], d, jnp.inf), axis=1)

        d2 = jnp.maximum(jnp.min(jax.lax.map(block_min, (blocks, valid)), axis=0), 0.0)
    taken = jnp.zeros((U,), bool)

    def body(t, carry):
        d2, taken, chosen = carry
        j = jnp.argmax(jnp.where(taken, -jnp.inf, d2)).astype(jnp.int32)
        new = jnp.sum((feat_u - feat_u[j][None, :]) ** 2, -1)
        return jnp.minimum(d2, new), taken.at[j].set(True), chosen.at[t].set(j)

    _, _, chosen = jax.lax.fori_loop(0, k, body, (d2, taken, jnp.zeros((k,), jnp.int32)))
    return chosen, jnp.sqrt(jnp.where(jnp.isfinite(d2), d2, 0.0))


@register_strategy("coreset", needs=("embed",))
def coreset_strategy(ctx: AcquisitionContext) -> Selection:
    """Core-set: k-center greedy on penultimate features (Sener & Savarese, 2018).

    Centres are initialised with the labeled set (padded to ``ctx.labeled_capacity``:
    one compilation per run); with no labeled point (L = 0) the first pick is the first
    candidate, as in :func:`kcenter_greedy`. ``scores``: each candidate's distance to the
    nearest labeled point (0 when L = 0). Cost: forward passes over L and U, then
    O(U·L·D + query_size·U·D) time, O(U·(D + 512)) memory.
    """
    h_u = embeddings(ctx, ctx.x_candidates)
    h_l = embeddings(ctx, ctx.x_labeled) if ctx.num_labeled else \
        jnp.zeros((0, h_u.shape[1]), h_u.dtype)
    h_l = pad_rows(h_l, ctx.capacity)
    idx, dist = kcenter_greedy(h_u, h_l, int(ctx.query_size),
                               num_labeled=jnp.int32(ctx.num_labeled))
    return Selection(indices=np.asarray(jax.device_get(idx), np.int64), scores=dist)
