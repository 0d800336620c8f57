"""Training f_L on the labeled set: SGD with momentum under a one-cycle schedule.

The paper trains with squared loss on one-hot targets (Section 3, Appendix F) and the
1cycle learning-rate policy (Appendix E); cross-entropy is available for comparison.

Shapes never depend on the labeled-set size: every step sees a ``(batch_size, ...)``
mini-batch plus a ``(batch_size,)`` weight mask (the last batch of an epoch is filled up
with other labeled examples whose loss weight is 0), and the learning rate is an
argument of the step, not a schedule baked into the optimizer. So a growing labeled set
never recompiles :func:`train_step`.

State is an immutable :class:`TrainState` pytree; :func:`train_step` returns a new one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lookahead_jax import models

PyTree = Any
LOSSES = ("mse", "ce")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How f_L is trained each cycle (hashable; safe as a jit static).

    Attributes:
      epochs: passes over the labeled set per cycle.
      batch_size: mini-batch size B (fixed; the last batch is padded and masked).
      learning_rate: peak learning rate of the one-cycle schedule.
      momentum: SGD (heavy-ball) momentum.
      weight_decay: L2 coefficient added to the gradient (coupled, as in torch SGD).
      loss: ``"mse"`` (½‖onehot(y) − f(x)‖², the paper) or ``"ce"`` (softmax CE).
      warm_start: continue from the previous cycle's network (Algorithm 1) instead of
        re-initialising (cold start).
      pct_start: fraction of the steps spent warming up in the one-cycle schedule.
      eval_batch_size: batch size for evaluation / prediction.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    loss: str = "mse"
    warm_start: bool = True
    pct_start: float = 0.3
    eval_batch_size: int = 1000

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known losses: {', '.join(LOSSES)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be positive, got {self.learning_rate}")


class TrainState(struct.PyTreeNode):
    """Immutable training state.

    Attributes:
      step: ``()`` int32, steps taken this cycle.
      params: the ``params`` collection (differentiated).
      batch_stats: BatchNorm running statistics (``{}`` for models without BN).
      opt_state: SGD-momentum state.
      model: the Flax module (static).
      tx: the optax transformation (static).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Coupled weight decay + heavy-ball momentum with unit step size.

    The learning rate is applied in :func:`train_step` (``params += lr · update``) so it
    can change every step without entering the optimizer's static structure. The same
    transformation object is returned for equal settings, so a new cycle's state hits
    the compiled :func:`train_step`.
    """
    return _sgd_momentum(float(config.weight_decay), float(config.momentum))


@functools.lru_cache(maxsize=None)
def _sgd_momentum(weight_decay: float, momentum: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.trace(decay=momentum, nesterov=False))


def create_train_state(model: nn.Module, variables: dict, config: TrainConfig) -> TrainState:
    """A fresh optimizer state around ``variables`` (``{"params", ["batch_stats"]}``)."""
    tx = make_optimizer(config)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), model=model, tx=tx)


def one_cycle_lr(step: int, total_steps: int, config: TrainConfig) -> float:
    """The 1cycle policy (Smith & Topin): cosine warm-up to the peak, cosine annealing.

    Starts at ``peak / 25`` and ends at ``peak / 1e4`` (torch's OneCycleLR defaults).
    """
    peak = config.learning_rate
    warm = max(1, int(config.pct_start * total_steps))
    if step < warm:
        t = step / warm
        lo, hi = peak / 25.0, peak
    else:
        t = (step - warm) / max(1, total_steps - warm)
        lo, hi = peak, peak / 1e4
    return float(hi + (lo - hi) * 0.5 * (1.0 + np.cos(np.pi * t)))


def loss_fn(logits: jax.Array, labels: jax.Array, weights: jax.Array, loss: str) -> jax.Array:
    """Weighted mean loss over a batch.

    Args:
      logits: ``(B, C)`` network outputs.
      labels: ``(B,)`` int32.
      weights: ``(B,)`` 1 for real examples, 0 for padding.
      loss: ``"mse"``: ½‖onehot(y) − f(x)‖₂² per example; ``"ce"``: softmax CE.
    """
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if loss == "mse":
        per_example = 0.5 * jnp.sum((onehot - logits) ** 2, axis=-1)
    else:
        per_example = optax.softmax_cross_entropy(logits, onehot)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.partial(jax.jit, static_argnames=("loss",))
def train_step(state: TrainState, x: jax.Array, y: jax.Array, w: jax.Array,
               lr: jax.Array, key: jax.Array, *, loss: str) -> tuple[TrainState, jax.Array]:
    """One SGD step on a fixed-shape batch.

    Args:
      state: current state.
      x: ``(B, H, W, C)`` inputs; y: ``(B,)`` labels; w: ``(B,)`` loss weights.
      lr: ``()`` learning rate for this step.
      key: PRNG key of this step (dropout masks, for models with ``dropout_rate > 0``).
      loss: ``"mse"`` or ``"ce"`` (static).

    Returns:
      ``(new_state, batch_loss)``.
    """
    has_bn = bool(state.batch_stats)
    rngs = {"dropout": key}

    def objective(params):
        variables = {"params": params}
        if has_bn:
            variables["batch_stats"] = state.batch_stats
            logits, updates = state.model.apply(variables, x, train=True, rngs=rngs,
                                                mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            logits = state.model.apply(variables, x, train=True, rngs=rngs)
            new_stats = state.batch_stats
        return loss_fn(logits, y, w, loss), new_stats

    (value, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                         opt_state=opt_state), value


def _epoch_batches(rng: np.random.Generator, n: int, batch_size: int):
    """Shuffled index batches covering ``n`` examples; the last one is padded.

    Yields ``(indices (B,), weights (B,))``; padding repeats other examples with weight 0.
    """
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        w = np.ones(batch_size, np.float32)
        if idx.size < batch_size:
            fill = rng.choice(n, batch_size - idx.size, replace=n < batch_size - idx.size)
            w[idx.size:] = 0.0
            idx = np.concatenate([idx, fill])
        yield idx, w


def fit(state: TrainState, x: np.ndarray, y: np.ndarray, config: TrainConfig, *,
        seed: int, progress: Optional[Callable[[int, float], None]] = None
        ) -> tuple[TrainState, float]:
    """Trains for ``config.epochs`` epochs on ``(x, y)`` with the one-cycle schedule.

    Args:
      state: starting state (its optimizer state is used as given).
      x: ``(n, H, W, C)`` float32 labeled inputs; y: ``(n,)`` int32 labels.
      config: the training settings.
      seed: seeds the shuffling (host-side NumPy generator) and the dropout masks.
      progress: optional ``progress(epoch, mean_loss)`` callback.

    Returns:
      ``(state, mean loss of the last epoch)``.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty labeled set")
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-n // config.batch_size)
    total = steps_per_epoch * config.epochs
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    dropout_key = jax.random.key(seed)
    step, last = 0, float("nan")
    for epoch in range(config.epochs):
        losses = []
        for idx, w in _epoch_batches(rng, n, config.batch_size):
            lr = jnp.float32(one_cycle_lr(step, total, config))
            state, value = train_step(state, x_dev[idx], y_dev[idx], jnp.asarray(w), lr,
                                      jax.random.fold_in(dropout_key, step), loss=config.loss)
            losses.append(value)
            step += 1
        last = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(last):
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: loss {last}; lower train.learning_rate "
                f"(now {config.learning_rate})")
        if progress is not None:
            progress(epoch, last)
    return state, last


def predict(model: nn.Module, variables: dict, x: np.ndarray, batch_size: int = 1000
            ) -> np.ndarray:
    """Evaluation-mode logits ``(n, C)`` in fixed-size (padded) batches."""
    from lookahead_jax.acquisition import predict_in_chunks  # avoid an import cycle

    f = models.bind_eval(model, variables)
    return np.asarray(predict_in_chunks(f, variables["params"], jnp.asarray(x), batch_size))


def accuracy(model: nn.Module, variables: dict, x: np.ndarray, y: np.ndarray,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy of the evaluation-mode network on ``(x, y)``."""
    logits = predict(model, variables, x, batch_size)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(y)))
