"""Baseline acquisition strategies the paper compares against (Sections 4-5, Appendix E).

Every strategy is registered with :func:`lookahead_jax.acquisition.register_strategy` and
follows its calling convention ``select(ctx) -> Selection``. Shapes: U candidates, L
labeled points, C classes, D penultimate features, P parameters, T MC samples.

Diversity / uncertainty baselines
  * ``badge`` (Ash et al., ICLR 2020): k-means++ seeding on last-layer gradient
    embeddings of the training loss at the pseudo-label.
  * ``coreset`` (Sener & Savarese, ICLR 2018): k-center greedy on penultimate features.
  * ``bald`` (Houlsby et al. 2011; Gal et al., ICML 2017): MC-dropout mutual information.
  * ``ll4al`` (Yoo & Kweon, CVPR 2019): a loss-prediction module trained jointly with
    the network (``wrap_model`` + ``fit`` hooks); queries the highest predicted loss.

Look-ahead baselines (MLMOC, Eq. 13, with other models of the retrained network)
  * ``naive_lookahead``: real SGD retraining from f_L on L ∪ {(x', ŷ')} per candidate.
  * ``onestep_lookahead`` (Käding et al., 2016): one SGD step on the candidate alone.
  * ``infinite_ntk_lookahead`` (Borsos et al., 2021): Eq. 7 with the analytic
    infinite-width NTK and f_0 at initialisation (ReLU MLPs only).
  * ``gp_lookahead`` (Käding et al., BMVC 2018, for classification): exact EMOC of a GP
    regression on one-hot targets with the infinite-width NTK as covariance.

Set-based strategies (``badge``, ``coreset``) choose a set, not a ranking: their
``Selection.indices`` is the chosen set in pick order and ``scores`` is a per-candidate
quantity worth logging (documented per strategy), not what decided the picks.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lookahead_jax import models
from lookahead_jax import train as train_lib
from lookahead_jax.acquisition import (AcquisitionContext, Selection, predict_in_chunks,
                                       register_strategy, top_k)

Array = jax.Array
PyTree = Any


# ============================================================================ helpers


class _Fn(struct.PyTreeNode):
    """A plain function as a leafless pytree, so it can go through ``jax.jit``."""

    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, *args):
        return self.fn(*args)


def _as_pytree_fn(fn) -> struct.PyTreeNode:
    return fn if isinstance(fn, struct.PyTreeNode) else _Fn(fn)


class _LogitsAndEmbedding(struct.PyTreeNode):
    """``(params, x) -> concat(logits (n, C), embedding (n, D))`` in evaluation mode."""

    model: nn.Module = struct.field(pytree_node=False)
    state: dict = struct.field(default_factory=dict)

    def __call__(self, params, x):
        logits, h = self.model.apply({"params": params, **self.state}, x, train=False,
                                     return_embedding=True)
        return jnp.concatenate([logits, h], axis=-1)


def base_module(model: nn.Module) -> nn.Module:
    """The classifier inside an :class:`LL4ALModel` wrapper (else ``model`` itself)."""
    return model.base if isinstance(model, LL4ALModel) else model


def _require_model(ctx: AcquisitionContext, name: str) -> nn.Module:
    if ctx.model is None or ctx.variables is None:
        raise ValueError(f"strategy {name!r} needs ctx.model and ctx.variables (a Flax model "
                         "from lookahead_jax.models), not a bare apply_fn")
    return ctx.model


def logits_and_embeddings(ctx: AcquisitionContext, x: Array, chunk_size: int = 1024
                          ) -> tuple[Array, Array]:
    """``f_L(x)`` ``(n, C)`` and penultimate features ``h(x)`` ``(n, D)``, one pass."""
    model = _require_model(ctx, "embedding")
    state = {k: v for k, v in ctx.variables.items() if k != "params"}
    out = predict_in_chunks(_LogitsAndEmbedding(model, state), ctx.params, x, chunk_size)
    return out[:, :ctx.num_classes], out[:, ctx.num_classes:]


def readout_params(params: PyTree) -> dict:
    """The readout ``{"kernel": (D, C), "bias": (C,)}`` (``…/_Head_0/readout``).

    Found by name anywhere in the tree, so wrapped models (LL4AL) work too.
    """
    found = []

    def walk(tree):
        if isinstance(tree, dict) or hasattr(tree, "items"):
            for k, v in tree.items():
                if k == "readout" and "kernel" in v:
                    found.append(v)
                else:
                    walk(v)

    walk(params)
    if len(found) != 1:
        raise ValueError(f"expected exactly one 'readout' Dense layer in the params, "
                         f"found {len(found)}")
    return found[0]


def _pad_rows(a: Array, rows: int) -> np.ndarray:
    a = np.asarray(a)
    out = np.zeros((rows,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    return out


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

    first = jnp.argmax(sq)
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


@register_strategy("badge")
def badge_strategy(ctx: AcquisitionContext) -> Selection:
    """BADGE: k-means++ seeding on last-layer gradient embeddings (Ash et al., 2020).

    Embedding of candidate x: the gradient of the loss the network was trained with
    (``ctx.loss``) at the pseudo-label ŷ = argmax f_L(x), w.r.t. the readout kernel:
    squared loss ½‖onehot(ŷ) − f‖² gives (f − onehot(ŷ)) ⊗ h(x), cross-entropy gives
    (softmax f − onehot(ŷ)) ⊗ h(x). The readout bias is excluded by default, like the
    reference code (``options["include_bias"]=True`` appends it). The first centre is
    the largest-norm embedding, then D² sampling with ``ctx.key``.

    ``scores``: the gradient-embedding norm ‖g‖‖h‖ (BADGE's uncertainty term).
    Cost: one forward pass over U, then O(query_size · U · (C + D)) time and
    O(U · (C + D)) memory (the U × D·C embedding matrix is never formed).
    """
    logits, h = logits_and_embeddings(ctx, ctx.x_candidates)
    g = badge_output_gradients(logits, ctx.loss)
    if ctx.option("include_bias", False):
        h = jnp.concatenate([h, jnp.ones_like(h[:, :1])], axis=-1)
    idx = kmeans_pp_outer(g, h, ctx.key, int(ctx.query_size))
    scores = np.asarray(jnp.linalg.norm(g, axis=-1) * jnp.linalg.norm(h, axis=-1), np.float64)
    return Selection(indices=np.asarray(idx, np.int64), scores=scores)


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
        new = jnp.sum((feat_u - feat_u[j]) ** 2, -1)
        return jnp.minimum(d2, new), taken.at[j].set(True), chosen.at[t].set(j)

    _, _, chosen = jax.lax.fori_loop(0, k, body, (d2, taken, jnp.zeros((k,), jnp.int32)))
    return chosen, jnp.sqrt(jnp.where(jnp.isfinite(d2), d2, 0.0))


@register_strategy("coreset")
def coreset_strategy(ctx: AcquisitionContext) -> Selection:
    """Core-set: k-center greedy on penultimate features (Sener & Savarese, 2018).

    Centres are initialised with the labeled set (padded to ``ctx.labeled_capacity``:
    one compilation per run). ``scores``: each candidate's distance to the nearest
    labeled point. Cost: forward passes over L and U, then
    O(U·L·D + query_size·U·D) time, O(U·(D + 512)) memory.
    """
    _, h_u = logits_and_embeddings(ctx, ctx.x_candidates)
    _, h_l = logits_and_embeddings(ctx, ctx.x_labeled)
    L = int(h_l.shape[0])
    h_l = jnp.asarray(_pad_rows(h_l, max(int(ctx.labeled_capacity or 0), L)))
    idx, dist = kcenter_greedy(h_u, h_l, int(ctx.query_size), num_labeled=jnp.int32(L))
    return Selection(indices=np.asarray(idx, np.int64), scores=np.asarray(dist, np.float64))


# ============================================================================ BALD


def bald_scores(probs: Array) -> Array:
    """Mutual information I(y; θ | x) = H(mean_t p_t) − mean_t H(p_t), ``(T, U, C) -> (U,)``."""
    ent = lambda p: -jnp.sum(p * jnp.log(jnp.clip(p, 1e-30)), axis=-1)  # noqa: E731
    return jnp.maximum(ent(jnp.mean(probs, 0)) - jnp.mean(ent(probs), 0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def mc_head_probabilities(h: Array, kernel: Array, bias: Array, rate: Array, key: Array,
                          num_samples: int) -> Array:
    """softmax of the readout on dropped-out features, ``(T, U, C)``.

    Sample t uses the inverted-dropout mask ``bernoulli(fold_in(key, t), 1 − rate)`` on
    ``h`` ``(U, D)`` (as ``flax.linen.Dropout``), then ``h̃ W + b``.
    """
    def one(t):
        keep = jax.random.bernoulli(jax.random.fold_in(key, t), 1.0 - rate, h.shape)
        hd = jnp.where(keep, h / (1.0 - rate), 0.0)
        return jax.nn.softmax(hd @ kernel + bias, -1)

    return jax.lax.map(one, jnp.arange(num_samples))


class _MCForward(struct.PyTreeNode):
    """``(params, x, key) -> logits`` with MC dropout through the whole model."""

    model: nn.Module = struct.field(pytree_node=False)
    state: dict = struct.field(default_factory=dict)

    def __call__(self, params, x, key):
        return self.model.apply({"params": params, **self.state}, x, train=False,
                                mc_dropout=True, rngs={"dropout": key})


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _mc_model_probs(fwd, params, x, key, num_samples):
    return jax.lax.map(lambda t: jax.nn.softmax(fwd(params, x, jax.random.fold_in(key, t)), -1),
                       jnp.arange(num_samples))


@register_strategy("bald")
def bald_strategy(ctx: AcquisitionContext) -> Selection:
    """BALD: MC-dropout mutual information between label and weights (Gal et al., 2017).

    Dropout sits only before the readout in every model of ``models.py``, so the T
    stochastic passes share one deterministic trunk pass: features h(x) are computed
    once and T inverted-dropout masks are applied to h before the readout, by hand
    (``options["mc_forward"]="head"``, default). This is the same distribution as
    ``model.apply(..., mc_dropout=True)``; ``"model"`` runs that T times instead (for
    modules with dropout elsewhere). Probabilities are softmax(f), as everywhere.

    Dropout rate: the model's ``dropout_rate`` when > 0. A model trained without
    dropout (``dropout_rate == 0``) raises ``ValueError`` if ``options["strict"]``;
    otherwise readout-only MC dropout at ``options["dropout_rate"]`` (default 0.5) is
    applied to the trained network at acquisition time only, and ``info["fallback"]=1``.

    Squared loss: a network trained on one-hot targets has outputs on the [0, 1] scale, so
    softmax(f) is nearly uniform and the MI is a poor uncertainty. On MNIST (MLP, 3 seeds)
    BALD trailed random by 11 points at 280 labels with squared loss but led it by 3.5 with
    cross-entropy; prefer ``loss="ce"`` for BALD.

    Options: ``mc_samples`` T (20), ``strict`` (False), ``dropout_rate`` (0.5),
    ``mc_forward`` ("head"). Cost: one forward pass over U plus T·U·D·C ("head"), or
    T forward passes ("model"); memory T·U·C.
    """
    model = _require_model(ctx, "bald")
    T = int(ctx.option("mc_samples", 20))
    rate = float(getattr(base_module(model), "dropout_rate", 0.0) or 0.0)
    fallback = rate <= 0.0
    if fallback:
        if ctx.option("strict", False):
            raise ValueError("BALD needs a model trained with dropout: set model_kwargs "
                             "dropout_rate>0 (e.g. 0.5), or drop options['strict'] to use "
                             "readout-only MC dropout on the deterministic network")
        rate = float(ctx.option("dropout_rate", 0.5))
    if not 0.0 < rate < 1.0:
        raise ValueError(f"BALD dropout rate must be in (0, 1), got {rate}")
    mode = ctx.option("mc_forward", "head")
    if mode == "head":
        _, h = logits_and_embeddings(ctx, ctx.x_candidates)
        ro = readout_params(ctx.params)
        probs = mc_head_probabilities(h, ro["kernel"], ro["bias"], jnp.float32(rate),
                                      ctx.key, T)
    elif mode == "model":
        if fallback:
            raise ValueError("options['mc_forward']='model' needs a model with dropout_rate>0")
        state = {k: v for k, v in ctx.variables.items() if k != "params"}
        fwd = _MCForward(model, state)
        chunk = int(ctx.option("chunk_size", 1024))
        parts = []
        for i, s in enumerate(range(0, ctx.num_candidates, chunk)):
            parts.append(_mc_model_probs(fwd, ctx.params, ctx.x_candidates[s:s + chunk],
                                         jax.random.fold_in(ctx.key, i), T))
        probs = jnp.concatenate(parts, axis=1)
    else:
        raise ValueError(f"unknown mc_forward {mode!r}; known: ('head', 'model')")
    scores = np.asarray(bald_scores(probs), np.float64)
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores,
                     info={"dropout_rate": rate, "fallback": float(fallback)})


# ============================================================================ LL4AL


def _block_key(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def collect_features(intermediates: dict) -> list[Array]:
    """Sown block features in block order (``block0, block1, …``), each ``(n, d_l)``.

    Accepts the ``intermediates`` collection of a base model or of an LL4AL wrapper.
    """
    tree = intermediates
    while "base" in tree and not any(k.startswith("block") for k in tree):
        tree = tree["base"]
    names = sorted((k for k in tree if k.startswith("block")), key=_block_key)
    if not names:
        raise ValueError("the model sows no 'block*' features into 'intermediates'")
    return [tree[k][-1].reshape(tree[k][-1].shape[0], -1) for k in names]


class LossPredictionModule(nn.Module):
    """Yoo & Kweon's loss-prediction module on pooled block features.

    One ``Dense(hidden) + ReLU`` per feature (features already globally pooled by the
    models), concatenated, ``Dense(1)``. Returns ``(n,)`` predicted losses.
    """

    hidden: int = 128

    @nn.compact
    def __call__(self, feats: Sequence[Array]) -> Array:
        hs = [nn.relu(nn.Dense(self.hidden, name=f"fc{i}")(f)) for i, f in enumerate(feats)]
        return nn.Dense(1, name="out")(jnp.concatenate(hs, axis=-1))[:, 0]


class LL4ALModel(nn.Module):
    """A classifier plus a loss-prediction module (``wrap_model`` of ``ll4al``).

    ``__call__(x, train=False, **kw)`` is exactly the base model (its params live under
    ``params["base"]``); the module's params are ``params["loss_module"]``.
    """

    base: nn.Module
    hidden: int = 128

    def setup(self):
        self.loss_module = LossPredictionModule(self.hidden)

    def __call__(self, x, train: bool = False, **kwargs):
        out = self.base(x, train, **kwargs)
        if self.is_initializing():   # create the module's params with the right fan-ins
            shapes = jax.eval_shape(self._eval_features, dict(self.base.variables), x)
            self.loss_module([jnp.zeros(s.shape, s.dtype) for s in shapes])
        return out

    def _eval_features(self, base_variables, x):
        unbound = self.base.clone(parent=None)
        _, st = unbound.apply(base_variables, x, train=False, mutable=["intermediates"])
        return collect_features(st["intermediates"])

    def loss_from_features(self, feats: Sequence[Array]) -> Array:
        """Predicted losses ``(n,)`` from :func:`collect_features` output."""
        return self.loss_module(feats)

    def predict_loss(self, x) -> Array:
        """Predicted loss of every input in evaluation mode, ``(n,)``.

        Usable as ``model.apply(variables, x, method=LL4ALModel.predict_loss)`` without
        making ``intermediates`` mutable.
        """
        variables = {k: v for k, v in self.base.variables.items() if k != "intermediates"}
        return self.loss_module(self._eval_features(variables, x))


def ll4al_wrap_model(model: nn.Module) -> LL4ALModel:
    """The ``wrap_model`` hook of ``ll4al``."""
    return model if isinstance(model, LL4ALModel) else LL4ALModel(base=model)


def ranking_loss(pred: Array, target: Array, margin: float = 1.0,
                 weights: Optional[Array] = None) -> Array:
    """Yoo & Kweon's margin ranking loss over the pairs (i, B−1−i), i < B // 2.

    For a pair, with Δp = p_i − p_j and Δl = l_i − l_j (targets detached):
    ``max(0, −sign(Δl)·Δp + ξ)`` where sign(Δl) = +1 if Δl > 0 else −1 (their code).
    Averaged over pairs (weighted by ``weights_i · weights_j`` when given).

    Args:
      pred: ``(B,)`` predicted losses; target: ``(B,)`` true per-example losses.
    """
    B = pred.shape[0]
    h = B // 2
    target = jax.lax.stop_gradient(target)
    dp = (pred - pred[::-1])[:h]
    dl = (target - target[::-1])[:h]
    sign = jnp.where(dl > 0, 1.0, -1.0).astype(pred.dtype)
    per_pair = jnp.maximum(margin - sign * dp, 0.0)
    if weights is None:
        return jnp.mean(per_pair)
    pw = (weights * weights[::-1])[:h]
    return jnp.sum(per_pair * pw) / jnp.maximum(jnp.sum(pw), 1.0)


def per_example_loss(logits: Array, labels: Array, loss: str) -> Array:
    """:func:`train.loss_fn` of each example on its own, ``(B,)``."""
    def one(lg, y):
        return train_lib.loss_fn(lg[None], y[None], jnp.ones((1,), lg.dtype), loss)

    return jax.vmap(one)(logits, labels)


def ll4al_objective(params, state: train_lib.TrainState, x, y, w, rng, *, loss: str,
                    detach: bool, margin: float, weight: float):
    """Joint objective ``target_loss + λ · ranking_loss`` and its aux.

    The ranking term pairs all B batch entries (the fill-up entries of a padded batch are
    real labeled examples, so their losses are genuine; the target loss keeps the 0
    weights of :func:`train._epoch_batches`). ``detach`` stops the ranking gradient at
    the features (Yoo & Kweon's schedule after epoch 120 of 200).
    """
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    logits, upd = state.model.apply(variables, x, train=True,
                                    mutable=["batch_stats", "intermediates"],
                                    rngs={"dropout": rng})
    feats = collect_features(upd["intermediates"])
    if detach:
        feats = [jax.lax.stop_gradient(f) for f in feats]
    pred = state.model.apply({"params": params}, feats,
                             method=LL4ALModel.loss_from_features)
    per_ex = per_example_loss(logits, y, loss)
    target = jnp.sum(per_ex * w) / jnp.maximum(jnp.sum(w), 1.0)
    rank = ranking_loss(pred, per_ex, margin)
    new_stats = upd.get("batch_stats", state.batch_stats)
    return target + weight * rank, (new_stats, target, rank)


@functools.partial(jax.jit, static_argnames=("loss", "detach", "margin", "weight"))
def ll4al_train_step(state: train_lib.TrainState, x, y, w, lr, rng, *, loss: str,
                     detach: bool, margin: float = 1.0, weight: float = 1.0):
    """One joint SGD step (as :func:`train.train_step`): ``(state, (target, rank))``."""
    obj = functools.partial(ll4al_objective, state=state, x=x, y=y, w=w, rng=rng, loss=loss,
                            detach=detach, margin=margin, weight=weight)
    (_, (stats, target, rank)), grads = jax.value_and_grad(obj, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=stats,
                         opt_state=opt_state), (target, rank)


def make_ll4al_fit(margin: float = 1.0, weight: float = 1.0, detach_fraction: float = 0.6):
    """A ``fit`` hook (signature of :func:`train.fit`) training network + loss module.

    Same fixed-shape batches (:func:`train._epoch_batches`) and one-cycle schedule
    (:func:`train.one_cycle_lr`) as ``train.fit``; one optimizer for both parts (the
    paper's Appendix E setting: one 1cycle policy for every method). From epoch
    ``round(detach_fraction · epochs)`` on the features are detached (Yoo & Kweon: 120 of
    200). Returns ``(state, mean target loss of the last epoch)``; the ranking loss of the
    last epoch is stored in ``fit.last_ranking_loss``.
    """
    def fit(state, x, y, config, *, seed, progress=None):
        n = int(x.shape[0])
        if n == 0:
            raise ValueError("cannot train on an empty labeled set")
        rng = np.random.default_rng(seed)
        key = jax.random.key(seed)
        total = -(-n // config.batch_size) * config.epochs
        switch = int(round(detach_fraction * config.epochs))
        x_dev, y_dev = jnp.asarray(x), jnp.asarray(y, jnp.int32)
        step, last = 0, float("nan")
        for epoch in range(config.epochs):
            targets, ranks = [], []
            for idx, w in train_lib._epoch_batches(rng, n, config.batch_size):
                lr = jnp.float32(train_lib.one_cycle_lr(step, total, config))
                state, (t, r) = ll4al_train_step(
                    state, x_dev[idx], y_dev[idx], jnp.asarray(w), lr,
                    jax.random.fold_in(key, step), loss=config.loss,
                    detach=epoch >= switch, margin=float(margin), weight=float(weight))
                targets.append(t)
                ranks.append(r)
                step += 1
            last = float(jnp.mean(jnp.stack(targets)))
            fit.last_ranking_loss = float(jnp.mean(jnp.stack(ranks)))
            if not (np.isfinite(last) and np.isfinite(fit.last_ranking_loss)):
                raise FloatingPointError(
                    f"LL4AL training diverged at epoch {epoch}: loss {last}, ranking loss "
                    f"{fit.last_ranking_loss}; lower train.learning_rate (now "
                    f"{config.learning_rate}; the paper's Appendix E reports LL4AL unstable)")
            if progress is not None:
                progress(epoch, last)
        return state, last

    fit.last_ranking_loss = float("nan")
    return fit


ll4al_fit = make_ll4al_fit()


class _PredictLoss(struct.PyTreeNode):
    model: nn.Module = struct.field(pytree_node=False)
    state: dict = struct.field(default_factory=dict)

    def __call__(self, params, x):
        return self.model.apply({"params": params, **self.state}, x,
                                method=LL4ALModel.predict_loss)


@functools.partial(jax.jit, static_argnames=("steps", "hidden"))
def _posthoc_loss_head(feats_l, loss_l, feats_u, key, *, steps: int, hidden: int,
                       lr: float = 0.01, margin: float = 1.0):
    """Fallback: fit a loss module on frozen labeled features, predict on candidates."""
    head = LossPredictionModule(hidden)
    params = head.init(key, feats_l)
    tx = optax.sgd(lr, momentum=0.9)
    L = loss_l.shape[0]

    def step(carry, t):
        p, opt = carry
        perm = jax.random.permutation(jax.random.fold_in(key, t), L)
        obj = lambda q: ranking_loss(head.apply(q, [f[perm] for f in feats_l]),  # noqa: E731
                                     loss_l[perm], margin)
        g = jax.grad(obj)(p)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    return head.apply(params, feats_u)


@register_strategy("ll4al", wrap_model=ll4al_wrap_model, fit=ll4al_fit)
def ll4al_strategy(ctx: AcquisitionContext) -> Selection:
    """LL4AL: query the highest loss predicted by a jointly trained module (Yoo & Kweon).

    In the loop the network is an :class:`LL4ALModel` trained by :data:`ll4al_fit`
    (margin ξ = 1, λ = 1, features detached after 60% of the epochs). If ``ctx.model``
    is a plain classifier (no module was trained, e.g. a context built by hand), a
    post-hoc module is fitted on the frozen labeled features and their true losses
    (``options["head_steps"]`` full-batch ranking steps, default 200, ``options["hidden"]``
    units, default 128; ``info["posthoc"] = 1``). Cost: one forward pass over U
    (post-hoc: plus one over L and head_steps·L·hidden).
    """
    model = _require_model(ctx, "ll4al")
    state = {k: v for k, v in ctx.variables.items() if k != "params"}
    if isinstance(model, LL4ALModel):
        scores = predict_in_chunks(_PredictLoss(model, state), ctx.params, ctx.x_candidates)
        posthoc = 0.0
    else:
        f = lambda p, x: model.apply({"params": p, **state}, x, train=False,  # noqa: E731
                                     mutable=["intermediates"])
        logits_l, st_l = f(ctx.params, ctx.x_labeled)
        _, st_u = f(ctx.params, ctx.x_candidates)
        loss_l = per_example_loss(logits_l, jnp.asarray(ctx.y_labeled, jnp.int32), ctx.loss)
        scores = _posthoc_loss_head(collect_features(st_l["intermediates"]), loss_l,
                                    collect_features(st_u["intermediates"]), ctx.key,
                                    steps=int(ctx.option("head_steps", 200)),
                                    hidden=int(ctx.option("hidden", 128)))
        posthoc = 1.0
    scores = np.asarray(scores, np.float64)
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores,
                     info={"posthoc": posthoc})


# ============================================================================ SGD look-ahead


def sgd_schedule(n: int, batch_size: int, epochs: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-shape batches for ``epochs`` passes over n examples: ``(S, B)`` idx, weights.

    The same :func:`train._epoch_batches` as ``train.fit`` (last batch padded, weight 0).
    """
    rng = np.random.default_rng(seed)
    idx, w = [], []
    for _ in range(epochs):
        for i, wb in train_lib._epoch_batches(rng, n, batch_size):
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
                         lr: float, chunk: int, max_steps: Optional[int] = None
                         ) -> np.ndarray:
    """MLMOC of every candidate after the SGD steps ``(idx, w)``; E = U. ``(U,)``.

    ``idx`` indexes L ∪ {candidate} (index L = the candidate, as :func:`sgd_schedule`
    over L + 1 examples). Fixed shapes across cycles: the labeled set is padded to
    ``ctx.labeled_capacity`` and the schedule to ``max_steps`` rows (run for its real
    length by a traced loop bound), so a growing L does not recompile.
    """
    f = _as_pytree_fn(ctx.apply_fn)
    x_u = jnp.asarray(ctx.x_candidates)
    f_u = predict_in_chunks(ctx.apply_fn, ctx.params, x_u)
    y_u = jnp.argmax(f_u, -1).astype(jnp.int32)
    U = x_u.shape[0]
    k = max(1, min(int(chunk), U))
    L = int(ctx.x_labeled.shape[0])
    N = max(int(ctx.labeled_capacity or 0), L)
    x_l = jnp.asarray(_pad_rows(np.asarray(ctx.x_labeled), N))
    y_l = jnp.asarray(_pad_rows(np.asarray(ctx.y_labeled, np.int32), N))
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
        if m < k:   # pad the last chunk: one compiled shape
            xc = jnp.concatenate([xc, jnp.zeros((k - m,) + xc.shape[1:], xc.dtype)])
            yc = jnp.concatenate([yc, jnp.zeros((k - m,), yc.dtype)])
        out.append(np.asarray(_sgd_lookahead_chunk(f, ctx.params, x_l, y_l, xc, yc, idx_p,
                                                   w_p, jnp.int32(S), jnp.float32(lr),
                                                   x_u, f_u))[:m])
    return np.concatenate(out).astype(np.float64)


@register_strategy("naive_lookahead")
def naive_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC with real SGD retraining from f_L on L ∪ {(x', ŷ')} per candidate (paper Fig. 1a).

    For every candidate x' with pseudo-label ŷ' = argmax f_L(x'): ``epochs`` epochs of
    plain SGD (constant ``lr``, no momentum, squared loss, evaluation-mode network: BN
    statistics frozen as in the NTK) from f_L over L ∪ {(x', ŷ')} in fixed-shape batches
    (one shuffle shared by all candidates, seeded from ``ctx.key``), then MLMOC
    Σ_{x∈U} ‖f_L(x) − f_{L+}(x)‖₂ (Eq. 13). Candidates are retrained as ``chunk``
    vmapped parameter copies.

    Options: ``epochs`` (15, the paper's Naive), ``lr`` (0.05), ``batch_size`` (64),
    ``chunk`` (16). Cost: U·epochs·⌈(L+1)/B⌉ SGD steps of B examples (O(L·U·P·epochs)
    multiply-adds, the paper's O(LUPE)) plus U forward passes over U (O(U²P)); memory
    chunk·(P + U·width).
    """
    n = int(ctx.x_labeled.shape[0]) + 1
    seed = int(jax.random.randint(ctx.key, (), 0, 2 ** 31 - 1))
    batch, epochs = int(ctx.option("batch_size", 64)), int(ctx.option("epochs", 15))
    idx, w = sgd_schedule(n, batch, epochs, seed)
    capacity = max(int(ctx.labeled_capacity or 0), n - 1)
    scores = sgd_lookahead_scores(ctx, idx, w, float(ctx.option("lr", 0.05)),
                                  int(ctx.option("chunk", 16)),
                                  max_steps=epochs * -(-(capacity + 1) // batch))
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores,
                     info={"sgd_steps": float(idx.shape[0])})


@register_strategy("onestep_lookahead")
def onestep_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC after ONE SGD step on the candidate alone (Käding et al., 2016).

    θ⁺ = θ − lr ∇_θ ½‖onehot(ŷ') − f(x')‖², ŷ' = argmax f_L(x'); score
    Σ_{x∈U} ‖f_L(x) − f_{θ⁺}(x)‖₂. Options: ``lr`` (0.05), ``chunk`` (64).
    Cost: U gradient evaluations + U forward passes over U (O(U²P)); memory chunk·(P + U·width).
    """
    L = int(ctx.x_labeled.shape[0])
    idx = np.full((1, 1), L, np.int32)
    w = np.ones((1, 1), np.float32)
    scores = sgd_lookahead_scores(ctx, idx, w, float(ctx.option("lr", 0.05)),
                                  int(ctx.option("chunk", 64)))
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores)


# ============================================================================ kernel look-ahead


def _mlp_widths(ctx: AcquisitionContext, name: str) -> tuple[int, ...]:
    base = base_module(_require_model(ctx, name))
    if not isinstance(base, models.MLP):
        raise ValueError(f"strategy {name!r} uses the analytic infinite-width NTK of a ReLU "
                         f"MLP (lookahead_jax.ntk.infinite); model {type(base).__name__} is not "
                         "supported: use model 'mlp' or the empirical-NTK strategy 'mlmoc'")
    return tuple(int(w) for w in base.widths) + (int(ctx.num_classes),)


def infinite_kernel_blocks(ctx: AcquisitionContext, widths: Sequence[int], which: str = "ntk"
                           ) -> tuple[Array, Array, Array]:
    """K(X, X) ``(L, L)``, K(U, X) ``(U, L)``, K(U, U) ``(U, U)`` of the infinite-width MLP.

    ``which``: ``"ntk"`` or ``"nngp"``. Standard parametrisation with the Flax default
    initialisation of :class:`models.MLP` (LeCun normal weights, variance 1/fan_in:
    ``w_std = 1``; zero biases: ``b_std = 0``), overridable by ``options["w_std"]`` /
    ``options["b_std"]``. Cost O((L + U)²·(d_0 + depth)), memory O((L + U)²).
    """
    from lookahead_jax.ntk import infinite

    if which not in ("ntk", "nngp"):
        raise ValueError(f"unknown infinite-width kernel {which!r}; known: ('ntk', 'nngp')")
    x = jnp.concatenate([jnp.asarray(ctx.x_labeled), jnp.asarray(ctx.x_candidates)])
    nngp, ntk = infinite.infinite_mlp_kernels(
        x, widths=tuple(widths), w_std=float(ctx.option("w_std", 1.0)),
        b_std=float(ctx.option("b_std", 0.0)), parameterization="standard")
    k = ntk if which == "ntk" else nngp
    L = int(ctx.x_labeled.shape[0])
    return k[:L, :L], k[L:, :L], k[L:, L:]


@register_strategy("infinite_ntk_lookahead")
def infinite_ntk_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC with the analytic infinite-width NTK and f_0 at initialisation (Borsos et al.).

    Eq. 7: f^∞_{L+}(x) = f_0(x) + K(x, X⁺) K(X⁺, X⁺)⁻¹ (Y⁺ − f_0(X⁺)), with K the
    infinite-width NTK of the same ReLU MLP (:mod:`lookahead_jax.ntk.infinite`, MLPs only:
    other models raise ``ValueError``) and f_0 a freshly initialised network (key
    ``fold_in(ctx.key, 0)``). Scored by the scoring functions of
    :mod:`lookahead_jax.lookahead` (Eq. 12 block updates) with the pseudo-label and
    reference chosen by ``options["reference"]``:

    * ``"network"`` (default): Eq. 13 literally, Σ_{x∈U} ‖f_L(x) − f^∞_{L+}(x)‖ with
      ŷ' = argmax f_L(x') of the trained network (Algorithm 1);
    * ``"kernel"``: the infinite-width model throughout: reference f^∞_L (Eq. 6) and
      ŷ' = argmax f^∞_L(x'), i.e. Σ_x ‖f^∞_L(x) − f^∞_{L+}(x)‖.

    Options: ``reference``, ``jitter`` (relative ridge, 1e-5), ``u_floor`` (1e-6),
    ``chunk_size`` (256), ``w_std`` / ``b_std``. Cost: kernels O((L+U)²·d_0), Cholesky
    O(L³), scores O(U²·L + U²·C) (as ``mlmoc``); memory O(U² + U·L).
    """
    from lookahead_jax import lookahead as la

    widths = _mlp_widths(ctx, "infinite_ntk_lookahead")
    reference = ctx.option("reference", "network")
    if reference not in ("network", "kernel"):
        raise ValueError(f"unknown reference {reference!r}; known: ('network', 'kernel')")
    v0 = models.init_variables(ctx.model, jax.random.fold_in(ctx.key, 0),
                               tuple(ctx.x_candidates.shape[1:]))
    f0 = models.bind_eval(ctx.model, v0)
    f0_l = predict_in_chunks(f0, v0["params"], ctx.x_labeled)
    f0_u = predict_in_chunks(f0, v0["params"], ctx.x_candidates)
    k_ll, k_ul, k_uu = infinite_kernel_blocks(ctx, widths, "ntk")
    L, q = int(ctx.x_labeled.shape[0]), ctx.query_size
    state, spec, info = la.build_system(
        k_ll, k_ul, ctx.y_labeled, f0_l, f0_u, num_classes=ctx.num_classes, k_uu=k_uu,
        capacity=max(int(ctx.labeled_capacity or 0), L),
        jitter=float(ctx.option("jitter", 1e-5)), u_floor=float(ctx.option("u_floor", 1e-6)),
        chunk_size=int(ctx.option("chunk_size", 256)))
    if reference == "network":
        f_u = predict_in_chunks(ctx.apply_fn, ctx.params, ctx.x_candidates)
        ref = jnp.asarray(_pad_rows(f_u, state.ref_u.shape[0]), state.ref_u.dtype)
    else:
        ref = state.lin_u
    state = state._replace(ref_u=ref)
    scores, clamped = la.score_candidates("mlmoc", spec, state)
    scores = np.asarray(scores, np.float64)[:ctx.num_candidates]
    return Selection(indices=top_k(scores, q), scores=scores,
                     info={"clamped": int(clamped), "lambda": info["lambda"]})


@register_strategy("gp_lookahead")
def gp_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """Exact EMOC of a GP with the infinite-width NTK as kernel (Käding et al., 2018).

    One-vs-rest GP regression on one-hot targets, zero prior mean, observation noise
    σ² = ``noise`` · mean diag K(X, X) (relative, so it does not depend on the kernel's
    scale, which grows with the widths; default 0.01). Posterior mean
    μ_L(x) = K(x, X)(K(X, X) + σ²I)⁻¹ Y; adding (x', y) changes it by
    k̃(x, x')(e_y − μ_L(x')) / (k̃(x', x') + σ²) with k̃ the posterior covariance, and

        EMOC(x') = Σ_y p(y | x') Σ_{x∈U} ‖μ_{L+(x',y)}(x) − μ_L(x)‖₂,
        p(· | x') = softmax(μ_L(x')),

    computed exactly by :mod:`lookahead_jax.lookahead`'s ``emoc`` score (its ridge λ is
    the GP noise: every augmented solve is the exact GP posterior). ReLU MLPs only.

    Options: ``noise`` (0.01), ``kernel`` ("ntk" or "nngp"), ``chunk_size`` (256),
    ``w_std`` / ``b_std``. Cost: kernels O((L+U)²·d_0), Cholesky O(L³), scores
    O(U²·L + U²·C²) (C labels × C outputs); memory O(U² + U·L).
    """
    from lookahead_jax import lookahead as la

    widths = _mlp_widths(ctx, "gp_lookahead")
    k_ll, k_ul, k_uu = infinite_kernel_blocks(ctx, widths, ctx.option("kernel", "ntk"))
    L, U, C = int(ctx.x_labeled.shape[0]), ctx.num_candidates, ctx.num_classes
    state, spec, info = la.build_system(
        k_ll, k_ul, ctx.y_labeled, np.zeros((L, C), np.float32), np.zeros((U, C), np.float32),
        num_classes=C, k_uu=k_uu, capacity=max(int(ctx.labeled_capacity or 0), L),
        jitter=float(ctx.option("noise", 0.01)), u_floor=float(ctx.option("u_floor", 1e-6)),
        chunk_size=int(ctx.option("chunk_size", 256)))
    state = state._replace(ref_u=state.lin_u)     # reference and p(y|x'): the GP mean μ_L
    scores, clamped = la.score_candidates("emoc", spec, state)
    scores = np.asarray(scores, np.float64)[:U]
    return Selection(indices=top_k(scores, ctx.query_size), scores=scores,
                     info={"clamped": int(clamped), "noise_variance": info["lambda"]})
