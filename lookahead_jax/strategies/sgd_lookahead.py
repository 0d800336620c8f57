"""Look-ahead baselines that retrain with SGD (paper Fig. 1): naive and one-step.

Both score MLMOC (Eq. 13), Σ_{x∈U} ‖f_L(x) − f_{L+}(x)‖₂, with f_{L+} obtained by real
gradient steps from f_L instead of the NTK approximation:

* ``naive_lookahead``: ``epochs`` epochs of plain SGD on L ∪ {(x', ŷ')} per candidate.
* ``onestep_lookahead`` (Käding et al., 2016): one SGD step on the candidate alone.

Candidates are retrained as ``chunk_size`` vmapped parameter copies; the network is the
evaluation-mode ``f(params, x)`` (BatchNorm statistics frozen, as in the NTK).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import train as train_lib
from lookahead_jax.rng import numpy_rng as rng_numpy
from lookahead_jax.models import as_pytree_fn
from lookahead_jax.strategies.base import (AcquisitionContext, Selection, pad_rows,
                                           predict, select_top)
from lookahead_jax.strategies.options import Options, positive
from lookahead_jax.strategies.registry import register_strategy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OneStepOptions(Options):
    """Options of ``onestep_lookahead``.

    Attributes:
      lr: SGD step size.
      chunk_size: candidates retrained at once (vmapped parameter copies).
    """

    lr: float = 0.05
    chunk_size: int = 64

    def check(self):
        positive(self, "lr", "chunk_size")


@dataclasses.dataclass(frozen=True)
class NaiveOptions(OneStepOptions):
    """Options of ``naive_lookahead``.

    Attributes:
      epochs: passes over L ∪ {(x', ŷ')} per candidate (the paper's Naive: 15).
      batch_size: SGD batch size (fixed shape; the last batch is padded with weight 0).
      lr, chunk_size: see :class:`OneStepOptions` (``chunk_size`` defaults to 16 here).
    """

    chunk_size: int = 16
    epochs: int = 15
    batch_size: int = 64

    def check(self):
        super().check()
        positive(self, "epochs", "batch_size")


def sgd_schedule(n: int, batch_size: int, epochs: int, gen: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-shape batches for ``epochs`` passes over n examples: ``(S, B)`` idx, weights.

    The same :func:`train.epoch_batches` as ``train.fit`` (last batch padded, weight 0).
    """
    idx, w = [], []
    for _ in range(epochs):
        for i, wb in train_lib.epoch_batches(gen, n, batch_size):
            idx.append(i)
            w.append(wb)
    return np.stack(idx).astype(np.int32), np.stack(w).astype(np.float32)


def retrain_one(f, params, x_l, y_l, x_c, y_c, idx, w, lr, n_steps):
    """Plain SGD on ½‖onehot(y) − f(x)‖² over L ∪ {(x_c, y_c)}, one candidate.

    Index ``x_l.shape[0]`` in ``idx`` ``(S, B)`` means the candidate (``x_l`` may be
    padded: padding rows are never indexed); steps are ``p ← p − lr ∇`` of the weighted
    batch mean (:func:`train.loss_fn`). Only the first ``n_steps`` (a traced scalar) rows
    of ``idx`` are run, so a padded schedule keeps one compiled shape.
    Returns the retrained params.
    """
    L = x_l.shape[0]

    def step(p, batch):
        i, wb = batch
        is_c = (i == L)
        xb = jnp.where(is_c.reshape((-1,) + (1,) * (x_l.ndim - 1)), x_c[None],
                       x_l[jnp.minimum(i, L - 1)])
        yb = jnp.where(is_c, y_c, y_l[jnp.minimum(i, L - 1)])
        g = jax.grad(lambda q: train_lib.loss_fn(f(q, xb), yb, wb, "mse"))(p)
        return jax.tree.map(lambda a, b: a - lr * b, p, g), None

    return jax.lax.fori_loop(0, n_steps, lambda s, p: step(p, (idx[s], w[s]))[0], params)


@jax.jit
def _sgd_lookahead_chunk(f, params, x_l, y_l, x_c, y_c, idx, w, n_steps, lr, x_e, f_e):
    """MLMOC Σ_i ‖f_L(x_i) − f_{L+}(x_i)‖ of a chunk of candidates (vmapped), ``(k,)``."""
    def one(xc, yc):
        p = retrain_one(f, params, x_l, y_l, xc, yc, idx, w, lr, n_steps)
        return jnp.sum(jnp.linalg.norm(f(p, x_e) - f_e, axis=-1))

    # in_axes: candidate input and pseudo-label per copy; everything else shared
    return jax.vmap(one)(x_c, y_c)


def sgd_lookahead_scores(ctx: AcquisitionContext, idx: np.ndarray, w: np.ndarray,
                         lr: float, chunk: int, max_steps: Optional[int] = None) -> Array:
    """MLMOC of every candidate after the SGD steps ``(idx, w)``; E = U. ``(U,)`` on device.

    ``idx`` indexes L ∪ {candidate} (index L = the candidate, as :func:`sgd_schedule`
    over L + 1 examples). Fixed shapes across cycles: the labeled set is padded to
    ``ctx.labeled_capacity`` and the schedule to ``max_steps`` rows (run for its real
    length by a traced loop bound), so a growing L does not recompile.
    """
    f = as_pytree_fn(ctx.apply_fn)
    x_u = jnp.asarray(ctx.x_candidates)
    f_u = predict(ctx, x_u)
    y_u = jnp.argmax(f_u, -1).astype(jnp.int32)
    U = x_u.shape[0]
    k = max(1, min(int(chunk), U))
    L, N = ctx.num_labeled, ctx.capacity
    x_l = pad_rows(ctx.x_labeled, N)
    y_l = pad_rows(jnp.asarray(ctx.y_labeled, jnp.int32), N)
    S = int(idx.shape[0])
    max_steps = max(int(max_steps or 0), S)
    idx_p = np.zeros((max_steps, idx.shape[1]), np.int32)
    w_p = np.zeros((max_steps, w.shape[1]), np.float32)
    idx_p[:S] = np.where(idx == L, N, idx)      # the candidate's index moves to N
    w_p[:S] = w
    idx_p, w_p = jnp.asarray(idx_p), jnp.asarray(w_p)
    out = []
    for s in range(0, U, k):
        xc, yc = x_u[s:s + k], y_u[s:s + k]
        m = xc.shape[0]
        xc, yc = pad_rows(xc, k), pad_rows(yc, k)        # one compiled shape
        out.append(_sgd_lookahead_chunk(f, ctx.params, x_l, y_l, xc, yc, idx_p, w_p,
                                        jnp.int32(S), jnp.float32(lr), x_u, f_u)[:m])
    return jnp.concatenate(out)


@register_strategy("naive_lookahead", options=NaiveOptions)
def naive_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC with real SGD retraining from f_L on L ∪ {(x', ŷ')} per candidate (paper Fig. 1a).

    For every candidate x' with pseudo-label ŷ' = argmax f_L(x'): ``epochs`` epochs of
    plain SGD (constant ``lr``, no momentum, squared loss, evaluation-mode network: BN
    statistics frozen as in the NTK) from f_L over L ∪ {(x', ŷ')} in fixed-shape batches
    (one shuffle shared by all candidates, drawn from ``ctx.key``), then MLMOC
    Σ_{x∈U} ‖f_L(x) − f_{L+}(x)‖₂ (Eq. 13).

    Cost: U·epochs·⌈(L+1)/B⌉ SGD steps of B examples (O(L·U·P·epochs) multiply-adds, the
    paper's O(LUPE)) plus U forward passes over U (O(U²P)); memory chunk·(P + U·width).
    """
    opts = ctx.options
    n = ctx.num_labeled + 1
    idx, w = sgd_schedule(n, opts.batch_size, opts.epochs, rng_numpy(ctx.key))
    scores = sgd_lookahead_scores(ctx, idx, w, opts.lr, opts.chunk_size,
                                  max_steps=opts.epochs * -(-(ctx.capacity + 1) //
                                                            opts.batch_size))
    return select_top(ctx, scores, {"sgd_steps": float(idx.shape[0])})


@register_strategy("onestep_lookahead", options=OneStepOptions)
def onestep_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC after ONE SGD step on the candidate alone (Käding et al., 2016).

    θ⁺ = θ − lr ∇_θ ½‖onehot(ŷ') − f(x')‖², ŷ' = argmax f_L(x'); score
    Σ_{x∈U} ‖f_L(x) − f_{θ⁺}(x)‖₂. Cost: U gradient evaluations + U forward passes over U
    (O(U²P)); memory chunk·(P + U·width).
    """
    opts = ctx.options
    idx = np.full((1, 1), ctx.num_labeled, np.int32)
    w = np.ones((1, 1), np.float32)
    return select_top(ctx, sgd_lookahead_scores(ctx, idx, w, opts.lr, opts.chunk_size))
