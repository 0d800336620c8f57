"""The model interface the whole library speaks: :class:`Model`.

A :class:`Model` is a record of pure functions over explicit pytrees. Whatever library
the network was written in (Flax linen, Flax NNX, Equinox, plain ``jnp``), the training
loop, the NTK engine and every strategy see only these pieces:

==================  ======================================================  ============
piece               signature                                               used by
==================  ======================================================  ============
``apply``           ``(params, state, x) -> (n, C)`` logits, evaluation     everything
                    mode (dropout off, BatchNorm running statistics)
``init``            ``(key, x) -> Variables``; ``x`` one example batch       the loop
                    ``(1, ...)``
``train_apply``     ``(params, state, x, key) -> (logits, new_state, aux)``  training
                    training mode; ``aux`` a dict of extra outputs
                    (``"block_features"`` for LL4AL); default: ``apply``
``embed``           ``(params, state, x) -> (n, D)`` penultimate features    BADGE,
                                                                            core-set
``readout``         ``params -> (W (D, C), b (C,))``: the last Dense layer   BALD (head)
``mc_apply``        ``(params, state, x, key) -> (n, C)`` stochastic         BALD
                    forward (MC dropout)
``block_features``  ``(params, state, x) -> tuple of (n, d_l)``              LL4AL
==================  ======================================================  ============

``params`` is the pytree that is trained and differentiated (the NTK is taken with respect
to it and nothing else); ``state`` holds everything else the network needs (BatchNorm
statistics; ``{}`` when there is none). A strategy that needs a piece the model lacks
refuses with :func:`require`'s error naming the piece.

Models are compared by identity (they are jit static arguments): build one per network
and reuse it across cycles, so compiled code is reused.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any
Array = jax.Array

PIECES = {
    "init": "`init(key, x) -> Variables` (initialisation)",
    "train_apply": "`train_apply(params, state, x, key)` (a training-mode forward)",
    "embed": "`embed(params, state, x) -> (n, D)` (penultimate features)",
    "readout": "`readout(params) -> (W, b)` (the last Dense layer)",
    "mc_apply": "`mc_apply(params, state, x, key)` (a stochastic, MC-dropout forward)",
    "block_features": "`block_features(params, state, x)` (per-block features)",
}


class Variables(NamedTuple):
    """A network's variables: ``params`` (trained, differentiated) and ``state`` (the rest)."""

    params: PyTree
    state: PyTree


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """The pure pieces of a classifier (see the module docstring for each signature).

    Attributes:
      name: a short name (recorded in a run's config).
      apply: evaluation-mode logits ``(params, state, x) -> (n, C)``.
      init: ``(key, x) -> Variables``, ``x`` of shape ``(1, ...)``; ``None`` for a model
        that only comes with given variables (it can then not be re-initialised).
      train_apply: ``(params, state, x, key) -> (logits, new_state, aux)``; ``None``
        trains through ``apply`` (no state updates, no dropout).
      embed, readout, mc_apply, block_features: optional pieces for strategies.
      meta: facts strategies may use: ``dropout_rate`` (dropout before the readout only,
        for BALD's head path) and ``mlp_widths`` (a ReLU MLP's layer widths incl. the
        readout, for the infinite-width kernels).
    """

    name: str
    apply: Callable[[PyTree, PyTree, Array], Array]
    init: Optional[Callable[[Array, Array], Variables]] = None
    train_apply: Optional[Callable[..., tuple]] = None
    embed: Optional[Callable[[PyTree, PyTree, Array], Array]] = None
    readout: Optional[Callable[[PyTree], tuple]] = None
    mc_apply: Optional[Callable[[PyTree, PyTree, Array, Array], Array]] = None
    block_features: Optional[Callable[[PyTree, PyTree, Array], tuple]] = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def bind(self, state: PyTree) -> "Bound":
        """``f(params, x)`` in evaluation mode with ``state`` bound (what the NTK engine
        differentiates); a pytree, so a new cycle's state reuses compiled code."""
        return Bound(self.apply, state)

    def has(self, piece: str) -> bool:
        return getattr(self, piece) is not None

    def forward_train(self, params, state, x, key):
        """``train_apply``, or ``apply`` with the state unchanged when there is none."""
        if self.train_apply is not None:
            return self.train_apply(params, state, x, key)
        return self.apply(params, state, x), state, {}


def require(model: Model, piece: str, who: str) -> Callable:
    """``model.<piece>``, or a ``ValueError`` naming the missing piece and who needs it."""
    fn = getattr(model, piece, None)
    if fn is None:
        words = HINTS.get("piece_text", lambda m, p, d: d)(model, piece,
                                                          PIECES.get(piece, piece))
        how = HINTS.get("how_to_give", lambda m, p: f"give it a {piece}")(model, piece)
        raise ValueError(f"{who} needs the model's {words}; "
                         f"model {model.name!r} does not provide it ({how})")
    return fn


# The words of the adapter that built a model, for require's message: filled in by
# lookahead_jax.models.adapters when it is imported (base never imports the adapters, so
# the two modules form no import circle).
HINTS: dict[str, Callable] = {}


class Bound(struct.PyTreeNode):
    """``f(params, x) = fn(params, state, x)``: a model's evaluation view with its state bound.

    ``state`` is a pytree leaf set (an input of jitted code, never differentiated),
    ``fn`` is static, so a ``Bound`` passes *through* ``jax.jit`` as an argument.
    """

    fn: Callable = struct.field(pytree_node=False)
    state: PyTree = struct.field(default_factory=dict)

    def __call__(self, params: PyTree, x: Array) -> Array:
        return self.fn(params, self.state, x)


class Fn(struct.PyTreeNode):
    """A plain callable as a leafless pytree, so it can go through ``jax.jit`` as an argument."""

    fn: Callable = struct.field(pytree_node=False)

    def __call__(self, *args):
        return self.fn(*args)


def as_pytree_fn(fn: Callable) -> struct.PyTreeNode:
    """``fn`` itself if it is a pytree callable (e.g. :class:`Bound`), else :class:`Fn`."""
    return fn if isinstance(fn, struct.PyTreeNode) else Fn(fn)


@jax.jit
def _call(fn, params, x):
    return fn(params, x)


def apply_in_chunks(fn: Callable, params: PyTree, x: Array, chunk_size: int = 1024) -> Array:
    """``fn(params, x)`` on fixed-size chunks of ``x`` (the last one zero-padded), ``(n, C)``.

    One compiled shape for any number of inputs: ``fn`` goes through one shared
    ``jax.jit`` as a pytree argument (:func:`as_pytree_fn`). The result stays on device.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("apply_in_chunks needs at least one input")
    chunk = min(int(chunk_size), n)
    f = as_pytree_fn(fn)
    outs = []
    for start in range(0, n, chunk):
        xb = jnp.asarray(x[start:start + chunk])
        m = int(xb.shape[0])
        if m < chunk:
            xb = jnp.concatenate([xb, jnp.zeros((chunk - m,) + xb.shape[1:], xb.dtype)])
        outs.append(_call(f, params, xb)[:m])
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(model: Model, params, state, x):
    return model.apply(params, state, x)


def check_outputs(model: Model, num_classes: int, x, variables: Optional[Variables] = None,
                  *, who: Optional[str] = None) -> None:
    """Refuses a model whose evaluation outputs are not ``(n, C)`` logits, before any work.

    Traced, never run (``jax.eval_shape``: no FLOPs, the trace is cached per model and
    shape): ``apply`` on ``n = min(2, len(x))`` inputs must give a float ``(n,
    num_classes)`` array: not ``(n,)``, not ``C − 1`` columns, not one row for any batch.
    Without ``variables`` the model's ``init`` is traced too.

    Args:
      model: the model; num_classes: C of the data.
      x: ``(N, ...)`` inputs of the data (only the shape of the first two is used).
      variables: the parameters and state to trace with (default: ``init``'s).
      who: who asks, for the message (``"strategy 'entropy'"``), if not the loop.

    Raises:
      ValueError: one line naming the model, the shape it returns and the one it must.
    """
    n = min(2, int(x.shape[0]))
    if n == 0:
        return
    xb = jax.ShapeDtypeStruct((n,) + tuple(x.shape[1:]), x.dtype)
    if variables is None:
        init = require(model, "init", who or "the active-learning loop")
        variables = Variables(*jax.eval_shape(
            init, jax.random.key(0), jax.ShapeDtypeStruct((1,) + xb.shape[1:], x.dtype)))
    out = jax.eval_shape(functools.partial(_evaluate, model), variables.params,
                         variables.state, xb)
    want = (n, int(num_classes))
    head = (f"{who}: " if who else "") + f"model {model.name!r}: apply"
    if not hasattr(out, "shape"):
        raise ValueError(f"{head} returns {type(out).__name__} for {n} inputs; it must "
                         f"return one {want} array of logits (one row per input, one column "
                         "per class)")
    shape = tuple(out.shape)
    if shape == want and jnp.issubdtype(out.dtype, jnp.floating):
        return
    if shape == want:
        raise ValueError(f"{head} returns {out.dtype} logits; they must be floats")
    if len(shape) != 2:
        fix = "one row per input, one column per class"
    elif shape[0] != n:
        fix = (f"one row per input: it returns {shape[0]} row{'s' if shape[0] != 1 else ''} "
               "(does it reduce over the batch?)")
    else:
        fix = (f"one column per class: the data have {num_classes} classes, it gives "
               f"{shape[1]} (build it with num_classes={num_classes})")
    raise ValueError(f"{head} returns shape {shape} for {n} inputs; it must return {want}: "
                     f"{fix}")
