"""Training f_L on the labeled set: SGD with momentum under a one-cycle schedule.

The paper trains with squared loss on one-hot targets (Section 3, Appendix F) and the
1cycle learning-rate policy (Appendix E); cross-entropy is available for comparison.

Shapes never depend on the labeled-set size: every step sees a ``(batch_size, ...)``
mini-batch plus a ``(batch_size,)`` weight mask (the last batch of an epoch is filled up
with other labeled examples whose loss weight is 0), and the learning rate is an
argument of the step, not a schedule baked into the optimizer. So a growing labeled set
never recompiles :func:`train_step`.

State is an immutable :class:`TrainState` pytree; :func:`train_step` returns a new one.
Any :class:`~lookahead_jax.models.Model` trains here: the step calls its training-mode
forward (``Model.forward_train``: logits, the new non-parameter state such as BatchNorm
statistics, and auxiliary outputs). Strategies that change training (LL4AL) add an
auxiliary loss through ``aux_loss`` instead of a loop of their own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lookahead_jax import rng
from lookahead_jax.models import Model, Variables, apply_in_chunks

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
      first_cycle_epochs: epochs of a cycle that trains from initialisation (the loop's
        first cycle, and every cycle when ``warm_start`` is false); ``None``: ``epochs``.
        With warm starts, later cycles continue from it, so one long first cycle plus
        short later ones is cheaper than long cycles throughout (:func:`cycle_config`).
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
    first_cycle_epochs: Optional[int] = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "first_cycle_epochs"):
            v = getattr(self, name)
            if v is None and name == "first_cycle_epochs":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {v!r}")
        for name in ("learning_rate", "momentum", "weight_decay", "pct_start"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(v):
                raise ValueError(f"train.{name} must be a finite number, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.pct_start < 1:
            raise ValueError(f"train.pct_start must be in (0, 1), got {self.pct_start}")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"train.warm_start must be true or false, got {self.warm_start!r}")


def cycle_config(config: TrainConfig, from_init: bool) -> TrainConfig:
    """The settings of one cycle: ``first_cycle_epochs`` when it trains from initialisation."""
    if from_init and config.first_cycle_epochs is not None:
        return dataclasses.replace(config, epochs=config.first_cycle_epochs)
    return config


class TrainState(struct.PyTreeNode):
    """Immutable training state.

    Attributes:
      step: ``()`` int32, steps taken this cycle.
      params: the trained (differentiated) parameters.
      model_state: the model's non-parameter state (BatchNorm statistics; ``{}`` if none).
      opt_state: SGD-momentum state.
      model: the :class:`~lookahead_jax.models.Model` (static).
      tx: the optax transformation (static).
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: optax.OptState
    model: Model = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> Variables:
        return Variables(self.params, self.model_state)


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


def create_train_state(model: Model, variables: Variables, config: TrainConfig) -> TrainState:
    """A fresh optimizer state around ``variables`` (:class:`~lookahead_jax.models.Variables`)."""
    tx = make_optimizer(config)
    params, state = variables
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=state,
                      opt_state=tx.init(params), model=model, tx=tx)


def one_cycle_lr(step: int, total_steps: int, config: TrainConfig) -> float:
    """The 1cycle policy (Smith & Topin): cosine warm-up to the peak, cosine annealing.

    Starts at ``peak / 25`` and ends at ``peak / 1e4`` (torch's OneCycleLR defaults):
    ``optax.cosine_onecycle_schedule`` with ``div_factor=25``, ``final_div_factor=400``.
    """
    return float(_schedule(int(total_steps), float(config.learning_rate),
                           float(config.pct_start))(int(step)))


@functools.lru_cache(maxsize=64)
def _schedule(total_steps: int, peak: float, pct_start: float):
    warm = max(1, int(pct_start * total_steps))       # at least one warm-up step
    total = max(total_steps, warm + 1)
    pct = warm / total
    if int(pct * total) != warm:                       # optax peaks at int(pct · total)
        pct = (warm + 0.5) / total
    return optax.cosine_onecycle_schedule(transition_steps=total, peak_value=peak,
                                          pct_start=pct, div_factor=25.0,
                                          final_div_factor=400.0)


def per_example_loss(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """Loss of each example, ``(B, C), (B,) -> (B,)``.

    ``"mse"``: ½‖onehot(y) − f(x)‖₂² (the paper's squared loss); ``"ce"``: softmax
    cross-entropy.
    """
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if loss == "mse":
        return 0.5 * jnp.sum((onehot - logits) ** 2, axis=-1)
    return optax.softmax_cross_entropy(logits, onehot)


def loss_fn(logits: jax.Array, labels: jax.Array, weights: jax.Array, loss: str) -> jax.Array:
    """Weighted mean of :func:`per_example_loss` over a batch.

    Args:
      logits: ``(B, C)`` network outputs; labels: ``(B,)`` int32.
      weights: ``(B,)`` 1 for real examples, 0 for padding.
      loss: ``"mse"`` or ``"ce"``.
    """
    per_example = per_example_loss(logits, labels, loss)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


AuxLoss = Callable[..., jax.Array]
"""``aux_loss(params, aux, per_example_loss, weights, progress) -> ()``: an extra training
term (LL4AL's ranking loss). ``aux`` is the dict the model's training forward returned,
``progress`` the fraction of this cycle's epochs already done (a traced scalar)."""


@functools.partial(jax.jit, static_argnames=("loss", "aux_loss"))
def train_step(state: TrainState, x: jax.Array, y: jax.Array, w: jax.Array,
               lr: jax.Array, key: jax.Array, progress: jax.Array = 0.0, *, loss: str,
               aux_loss: Optional[AuxLoss] = None) -> tuple[TrainState, jax.Array]:
    """One SGD step on a fixed-shape batch.

    Args:
      state: current state.
      x: ``(B, ...)`` inputs; y: ``(B,)`` labels; w: ``(B,)`` loss weights.
      lr: ``()`` learning rate for this step.
      key: PRNG key of this step (dropout masks).
      progress: ``()`` fraction of the cycle's epochs done (for ``aux_loss``).
      loss: ``"mse"`` or ``"ce"`` (static).
      aux_loss: optional extra term (static; see :data:`AuxLoss`).

    Returns:
      ``(new_state, (target loss, total loss))``: the weighted mean loss on the labels
      and the objective that was minimised.
    """

    def objective(params):
        logits, new_state, aux = state.model.forward_train(params, state.model_state, x, key)
        per_example = per_example_loss(logits, y, loss)
        target = jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)
        total = target
        if aux_loss is not None:
            total = total + aux_loss(params, aux, per_example, w, progress)
        return total, (new_state, target)

    (total, (new_state, target)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    return state.replace(step=state.step + 1, params=params, model_state=new_state,
                         opt_state=opt_state), (target, total)


def epoch_batches(gen: np.random.Generator, n: int, batch_size: int):
    """Shuffled index batches covering ``n`` examples; the last one is padded.

    Yields ``(indices (B,), weights (B,))``; padding repeats other examples with weight 0.
    """
    order = gen.permutation(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        w = np.ones(batch_size, np.float32)
        if idx.size < batch_size:
            fill = gen.choice(n, batch_size - idx.size, replace=n < batch_size - idx.size)
            w[idx.size:] = 0.0
            idx = np.concatenate([idx, fill])
        yield idx, w


def fit(state: TrainState, x: np.ndarray, y: np.ndarray, config: TrainConfig, *,
        key: jax.Array, aux_loss: Optional[AuxLoss] = None,
        progress: Optional[Callable[[int, float], None]] = None
        ) -> tuple[TrainState, float]:
    """Trains for ``config.epochs`` epochs on ``(x, y)`` with the one-cycle schedule.

    Args:
      state: starting state (its optimizer state is used as given).
      x: ``(n, ...)`` float32 labeled inputs; y: ``(n,)`` int labels in ``[0, C)``.
      config: the training settings.
      key: this training's PRNG key: the batch shuffles use a NumPy generator seeded from
        it (:func:`lookahead_jax.rng.numpy_rng`), dropout masks ``fold_in(key, step)``.
      aux_loss: an extra objective term (strategy hook, e.g. LL4AL).
      progress: optional ``progress(epoch, mean_loss)`` callback.

    Returns:
      ``(state, mean target loss of the last epoch)``.

    Raises:
      FloatingPointError: the objective became non-finite: saying what is NaN (the
        inputs, the model's outputs before any step, the starting parameters) when the
        learning rate is not the cause, else that training diverged.
    """
    start = state
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("cannot train on an empty labeled set")
    gen = rng.numpy_rng(key)
    steps_per_epoch = -(-n // config.batch_size)
    total = steps_per_epoch * config.epochs
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    dropout_key = jax.random.fold_in(key, 1)
    step, last = 0, float("nan")
    for epoch in range(config.epochs):
        targets, totals = [], []
        frac = jnp.float32(epoch / config.epochs)
        for idx, w in epoch_batches(gen, n, config.batch_size):
            lr = jnp.float32(one_cycle_lr(step, total, config))
            state, (target, objective) = train_step(
                state, x_dev[idx], y_dev[idx], jnp.asarray(w), lr,
                jax.random.fold_in(dropout_key, step), frac, loss=config.loss,
                aux_loss=aux_loss)
            targets.append(target)
            totals.append(objective)
            step += 1
        last = float(jnp.mean(jnp.stack(targets)))
        objective = float(jnp.mean(jnp.stack(totals)))
        if not (np.isfinite(last) and np.isfinite(objective)):
            cause = nan_cause(start, x_dev)
            if cause is not None:
                raise FloatingPointError(f"training stopped at epoch {epoch} (loss {last}): "
                                         f"{cause}")
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: loss {last}"
                + (f", objective {objective}" if aux_loss is not None else "")
                + f"; lower train.learning_rate (now {config.learning_rate})")
        if progress is not None:
            progress(epoch, last)
    return state, last


def nan_cause(state: TrainState, x) -> Optional[str]:
    """Why training's loss is NaN when the learning rate is not to blame, or ``None``.

    Looks (only once a loss is non-finite) at what the first step started from: the
    inputs ``x`` ``(n, ...)``, the starting parameters, and the model's outputs on ``x``
    at those parameters.
    """
    n = int(x.shape[0])
    bad_x = np.asarray(jax.device_get(~jnp.isfinite(x).reshape(n, -1).all(-1)))
    if bad_x.any():
        return (f"the labeled inputs hold NaN or inf ({int(bad_x.sum())} of {n} examples, "
                f"first: labeled example {int(np.argmax(bad_x))}); fix the data, not the "
                "learning rate")
    leaves = jax.tree.leaves(state.params)
    if any(not bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves
           if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)):
        return ("the starting parameters hold NaN or inf (a warm start from a diverged "
                "network, or the model's init); the learning rate is not the cause")
    out = predict(state.model, state.variables, x)
    bad = np.asarray(jax.device_get(~jnp.isfinite(out).reshape(n, -1).all(-1)))
    if bad.any():
        return (f"the model's outputs are NaN or inf before any training step, for "
                f"{int(bad.sum())} of {n} labeled inputs (first: labeled example "
                f"{int(np.argmax(bad))}) whose values are finite: the model (its init or "
                "apply) makes them, not the learning rate; check it")
    return None


def predict(model: Model, variables: Variables, x, batch_size: int = 1000) -> jax.Array:
    """Evaluation-mode logits ``(n, C)`` in fixed-size (padded) batches, on device."""
    return apply_in_chunks(model.bind(variables.state), variables.params, x, batch_size)


def accuracy(model: Model, variables: Variables, x, y, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the evaluation-mode network on ``(x, y)``."""
    logits = predict(model, Variables(*variables), x, batch_size)
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))
