"""LL4AL: learning loss for active learning (Yoo & Kweon, CVPR 2019).

A small loss-prediction module reads the network's per-block features and is trained
jointly with the network to rank the per-example losses (margin ranking loss); the
strategy queries the candidates with the highest predicted loss.

It plugs into the library through the registry's two hooks, not a training loop of
its own: ``wrap_model`` (:func:`wrap_model`) adds the module's parameters to the
network's (``params = {"net": ..., "loss_module": ...}``; the wrapped ``apply`` is the
base network's), and ``aux_loss`` (:func:`make_aux_loss`) adds λ · ranking loss to the
training objective of :func:`lookahead_jax.train.fit`. The model must provide
``block_features`` (and the same features under ``aux["block_features"]`` of its
training forward): every built-in network does (sown block outputs).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lookahead_jax.models import Model, Variables
from lookahead_jax.strategies.base import AcquisitionContext, Selection, select_top
from lookahead_jax.strategies.options import Options, positive
from lookahead_jax.strategies.registry import register_strategy
from lookahead_jax.train import per_example_loss

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LL4ALOptions(Options):
    """Options of ``ll4al``.

    Attributes:
      hidden: units of the module's Dense layer per feature.
      margin: ξ of the ranking loss.
      weight: λ, the ranking loss's weight in the joint objective.
      detach_fraction: from this fraction of each cycle's epochs on, the ranking loss no
        longer back-propagates into the network's features (Yoo & Kweon: 120 of 200).
      head_steps: full-batch steps of the post-hoc module (a network trained without it).
    """

    hidden: int = 128
    margin: float = 1.0
    weight: float = 1.0
    detach_fraction: float = 0.6
    head_steps: int = 200

    def check(self):
        positive(self, "hidden", "head_steps", "margin")


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


def wrap_model(model: Model, options: LL4ALOptions) -> Model:
    """``model`` with a loss-prediction module: the ``wrap_model`` hook of ``ll4al``.

    Params become ``{"net": base params, "loss_module": module params}``; every piece of
    the base model is kept (it reads ``params["net"]``), ``meta["ll4al_hidden"]`` records
    the module's width.
    """
    if model.block_features is None:
        raise ValueError(f"strategy 'll4al' needs the model's per-block features "
                         f"(block_features); model {model.name!r} does not provide them")
    module = LossPredictionModule(options.hidden)

    def init(key, x):
        k_net, k_mod = jax.random.split(key)
        base = model.init(k_net, x)
        feats = model.block_features(base.params, base.state, x)
        return Variables({"net": base.params,
                          "loss_module": module.init(k_mod, [jnp.zeros_like(f) for f in feats])},
                         base.state)

    def lift(fn):
        return None if fn is None else (lambda p, *a: fn(p["net"], *a))

    def train_apply(params, state, x, key):
        return model.forward_train(params["net"], state, x, key)

    return Model(name=model.name, apply=lift(model.apply), init=init,
                 train_apply=train_apply, embed=lift(model.embed),
                 readout=None if model.readout is None else (lambda p: model.readout(p["net"])),
                 mc_apply=lift(model.mc_apply), block_features=lift(model.block_features),
                 meta={**model.meta, "ll4al_hidden": options.hidden})


@functools.lru_cache(maxsize=None)
def make_aux_loss(options: LL4ALOptions):
    """The ``aux_loss`` hook: λ · ranking loss of the module's predictions.

    Features come from the training forward (``aux["block_features"]``); from
    ``detach_fraction`` of the epochs on they are detached. The ranking term pairs all B
    batch entries (the fill-up entries of a padded batch are real labeled examples, so
    their losses are genuine). One function per options value, so training compiles once.
    """
    module = LossPredictionModule(options.hidden)

    def aux_loss(params, aux, per_example, weights, progress):
        del weights
        feats = [jnp.where(progress >= options.detach_fraction, jax.lax.stop_gradient(f), f)
                 for f in aux["block_features"]]
        pred = module.apply(params["loss_module"], feats)
        return options.weight * ranking_loss(pred, per_example, options.margin)

    return aux_loss


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


@register_strategy("ll4al", options=LL4ALOptions, needs=("block_features",),
                   wrap_model=wrap_model, aux_loss=make_aux_loss)
def ll4al_strategy(ctx: AcquisitionContext) -> Selection:
    """LL4AL: query the highest loss predicted by a jointly trained module (Yoo & Kweon).

    In the loop the network is wrapped by :func:`wrap_model` and trained with
    :func:`make_aux_loss` (margin ξ, λ, features detached after ``detach_fraction`` of
    the epochs). If the model was not wrapped (a context built by hand), a post-hoc
    module is fitted on the frozen labeled features and their true losses
    (``head_steps`` full-batch ranking steps; ``info["posthoc"] = 1``). Cost: one forward
    pass over U (post-hoc: plus one over L and head_steps·L·hidden).
    """
    opts = ctx.options
    model = ctx.model
    feats_u = model.block_features(ctx.params, ctx.state, ctx.x_candidates)
    if "ll4al_hidden" in model.meta:
        module = LossPredictionModule(int(model.meta["ll4al_hidden"]))
        return select_top(ctx, module.apply(ctx.params["loss_module"], feats_u),
                          {"posthoc": 0.0})
    logits_l = ctx.apply_fn(ctx.params, ctx.x_labeled)
    loss_l = per_example_loss(logits_l, jnp.asarray(ctx.y_labeled, jnp.int32), ctx.loss)
    feats_l = model.block_features(ctx.params, ctx.state, ctx.x_labeled)
    scores = _posthoc_loss_head(list(feats_l), loss_l, list(feats_u), ctx.key,
                                steps=opts.head_steps, hidden=opts.hidden,
                                margin=opts.margin)
    return select_top(ctx, scores, {"posthoc": 1.0})
