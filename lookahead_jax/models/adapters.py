"""Adapters: a Flax linen module, a Flax NNX module, an Equinox model or a plain
``f(params, x)`` as a :class:`~lookahead_jax.models.base.Model`.

Each adapter returns a :class:`Model`; the NNX and Equinox adapters (whose modules carry
their weights) also return the initial :class:`Variables`. Optional pieces (``embed``,
``mc_apply``, ...) are wired only where the adapter is told how to compute them; a
strategy that needs a missing piece says so (:func:`~lookahead_jax.models.base.require`).

Examples::

    model = models.from_linen(MyLinenNet(10), embed="features")      # linen, any module
    model, variables = models.from_nnx(MyNNXNet(rngs=nnx.Rngs(0)), embed="embed")
    model = models.from_function(f, params=params)                  # f(params, x)
    model, variables = models.from_equinox(eqx_model)               # needs equinox
"""

from __future__ import annotations

import inspect
import re
import weakref
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
from flax import nnx

from lookahead_jax.models import base as base_lib
from lookahead_jax.models.base import Model, Variables

PyTree = Any
Array = jax.Array


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(name))]


def collect_sown(tree: Mapping) -> tuple:
    """Values sown into one collection, in natural key order, each ``(n, d)``.

    ``self.sow(collection, name, value)`` stores a tuple per name; the last value is used.
    Nested modules are walked depth-first in natural order (``block2`` before ``block10``).
    """
    out = []
    for k in sorted(tree, key=_natural_key):
        v = tree[k]
        if isinstance(v, Mapping):
            out.extend(collect_sown(v))
        else:
            val = v[-1] if isinstance(v, (tuple, list)) else v
            out.append(val.reshape(val.shape[0], -1))
    return tuple(out)


# ============================================================================ hints

_BUILT_BY: "weakref.WeakKeyDictionary[Model, str]" = weakref.WeakKeyDictionary()

# A piece's signature as each adapter takes it (the Model's own: base.PIECES).
_SIGNATURES = {
    "from_function": {
        "embed": "`embed(params, x) -> (n, D)` (penultimate features)",
        "mc_apply": "`mc_apply(params, x, key) -> (n, C)` (a stochastic, MC-dropout forward)",
        "block_features": "`block_features(params, x)` (per-block features)",
    },
}

# How to give a missing piece to the adapter that built the model.
_HOW = {
    "from_function": {
        "embed": "give it to the adapter: models.from_function(f, ..., embed=embed) with "
                 "embed(params, x) -> (n, D)",
        "readout": "give it to the adapter: models.from_function(f, ..., readout=readout) "
                   "with readout(params) -> (W (D, C), b (C,))",
        "mc_apply": "give it to the adapter: models.from_function(f, ..., mc_apply=mc_apply) "
                    "with mc_apply(params, x, key) -> (n, C)",
        "block_features": "give it to the adapter: models.from_function(f, ..., "
                          "block_features=fn) with fn(params, x) -> a tuple of (n, d_l)",
    },
    "from_nnx": {
        "embed": "give it to the adapter: models.from_nnx(module, embed='METHOD'), a method "
                 "of the module returning (n, D) features",
        "readout": "give it to the adapter: models.from_nnx(module, readout='ATTRIBUTE'), "
                   "the module's last nnx.Linear (or readout=fn, fn(params) -> (W, b))",
        "mc_apply": "models.from_nnx gives it to a module that holds nnx.Dropout layers: "
                    "add one (e.g. before the readout)",
        "block_features": "give it to the adapter: models.from_nnx(module, "
                          "block_features='METHOD'), a method returning a tuple of (n, d_l)",
        "init": "give the adapter factory=lambda rngs: YourModule(..., rngs=rngs)",
    },
    "from_linen": {
        "embed": "give it to the adapter: models.from_linen(module, embed='METHOD'), a "
                 "method returning (n, D) features (or embed(module, variables, x))",
        "readout": "give it to the adapter: models.from_linen(module, readout=('Dense_1',)), "
                   "the path of its last Dense layer in params (or readout(params) -> (W, b))",
        "mc_apply": "give it to the adapter: models.from_linen(module, mc_kwargs={...}), the "
                    "__call__ keywords that turn dropout on (e.g. {'mc_dropout': True})",
        "block_features": "give it to the adapter: models.from_linen(module, "
                          "features_collection='NAME'), the collection it sows per-block "
                          "features into",
    },
    "from_equinox": {
        "embed": "give it to the adapter: models.from_equinox(model, embed='METHOD'), a "
                 "method giving one example's (D,) features",
    },
}


def _made_by(model: Model, adapter: str) -> Model:
    _BUILT_BY[model] = adapter
    return model


def piece_text(model: Model, piece: str, default: str) -> str:
    """The signature of ``piece`` as the adapter that built ``model`` takes it."""
    return _SIGNATURES.get(_BUILT_BY.get(model, ""), {}).get(piece, default)


def how_to_give(model: Model, piece: str) -> str:
    """What the user does to give ``model`` the missing ``piece``, in the words of the
    adapter that built it (a hand-built Model: the Model field)."""
    adapter = _BUILT_BY.get(model)
    how = _HOW.get(adapter or "", {}).get(piece)
    if how is not None:
        return how
    if adapter is not None:
        return (f"models.{adapter} cannot give it; build the Model with it: "
                f"models.Model(name, apply, ..., {piece}=...)")
    return f"give it to the Model: models.Model(name, apply, ..., {piece}=...)"


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# ============================================================================ Flax linen


def from_linen(module, *, name: Optional[str] = None, train_kwarg: Optional[str] = "train",
               embed: Union[str, Callable, None] = None,
               mc_kwargs: Optional[Mapping[str, Any]] = None,
               readout: Union[Sequence[str], Callable, None] = None,
               features_collection: Optional[str] = None,
               meta: Optional[Mapping[str, Any]] = None) -> Model:
    """A Flax linen module as a :class:`Model` (BatchNorm and dropout supported).

    Args:
      module: a ``flax.linen.Module`` returning logits ``(n, C)``.
      name: the model's name (default: the module's class name).
      train_kwarg: the keyword of ``__call__`` that switches training mode (``train=True``
        updates mutable collections such as ``batch_stats`` and enables dropout); ``None``
        for modules without one.
      embed: penultimate features: a method name (``module.apply(v, x, method=embed)``,
        given ``train_kwarg=False`` if it accepts it) or ``embed(module, variables, x)``.
      mc_kwargs: keyword arguments of ``__call__`` that turn dropout on in evaluation mode
        (e.g. ``{"mc_dropout": True}``); enables ``mc_apply`` (a ``dropout`` PRNG stream).
      readout: the last Dense layer: a path of names into ``params`` (its ``kernel`` and
        ``bias``) or ``readout(params) -> (W, b)``.
      features_collection: a collection the module sows per-block features into (LL4AL).
      meta: see :class:`Model`.

    Every non-``params`` collection returned by ``module.init`` (except
    ``features_collection``) is the model's ``state``; in training mode all of them are
    mutable.
    """
    name = name or type(module).__name__
    eval_kw = {} if train_kwarg is None else {train_kwarg: False}
    train_kw = {} if train_kwarg is None else {train_kwarg: True}

    def variables_of(params, state):
        return {"params": params, **state}

    def init(key, x):
        k_params, k_dropout = jax.random.split(key)
        v = dict(module.init({"params": k_params, "dropout": k_dropout}, x, **eval_kw))
        state = {k: c for k, c in v.items() if k not in ("params", features_collection)}
        return Variables(v["params"], state)

    def apply(params, state, x):
        return module.apply(variables_of(params, state), x, **eval_kw)

    def train_apply(params, state, x, key):
        mutable = list(state) + ([features_collection] if features_collection else [])
        out = module.apply(variables_of(params, state), x, rngs={"dropout": key},
                           mutable=mutable, **train_kw)
        logits, upd = out if mutable else (out, {})
        aux = {}
        if features_collection:
            aux["block_features"] = collect_sown(upd.get(features_collection, {}))
        return logits, {k: upd[k] for k in state}, aux

    pieces = {}
    if isinstance(embed, str):
        method = getattr(module, embed)
        kw = eval_kw if train_kwarg and _accepts(method, train_kwarg) else {}

        def embed_method(params, state, x):
            return module.apply(variables_of(params, state), x, method=embed, **kw)
        pieces["embed"] = embed_method
    elif embed is not None:
        def embed_call(params, state, x):
            return embed(module, variables_of(params, state), x)
        pieces["embed"] = embed_call

    if mc_kwargs:
        def mc_apply(params, state, x, key):
            return module.apply(variables_of(params, state), x, rngs={"dropout": key},
                                **eval_kw, **dict(mc_kwargs))
        pieces["mc_apply"] = mc_apply

    if callable(readout):
        pieces["readout"] = readout
    elif readout is not None:
        path = tuple(readout)

        def readout_at(params):
            node = params
            for k in path:
                node = node[k]
            return node["kernel"], node["bias"]
        pieces["readout"] = readout_at

    if features_collection:
        def block_features(params, state, x):
            _, upd = module.apply(variables_of(params, state), x,
                                  mutable=[features_collection], **eval_kw)
            return collect_sown(upd[features_collection])
        pieces["block_features"] = block_features

    return _made_by(Model(name=name, apply=apply, init=init, train_apply=train_apply,
                          meta=dict(meta or {}), **pieces), "from_linen")


# ============================================================================ Flax NNX


def from_nnx(module, *, name: Optional[str] = None, embed: Optional[str] = None,
             factory: Optional[Callable[[Any], Any]] = None,
             readout: Union[str, Sequence[str], Callable, None] = None,
             block_features: Optional[str] = None,
             meta: Optional[Mapping[str, Any]] = None) -> tuple[Model, Variables]:
    """A Flax NNX module as a :class:`Model`, with its current weights as the variables.

    The module is taken apart once with ``nnx.split(module, nnx.Param, nnx.RngState, ...)``:
    ``params`` are its ``nnx.Param`` s, ``state`` every other variable except RNG streams
    (BatchNorm statistics, ...). Each call merges a fresh copy (``nnx.merge``), switches
    it to ``.eval()`` or ``.train()`` and reads the new state back with ``nnx.split``, so
    the module you passed is never mutated. Dropout in training mode draws from the
    explicit key (``nnx.reseed``); ``mc_apply`` (MC dropout with every other layer in
    evaluation mode) exists when the module holds ``nnx.Dropout`` layers.

    Args:
      module: an ``nnx.Module`` whose ``__call__(x)`` returns logits ``(n, C)``.
      name: the model's name (default: the class name).
      embed: the name of a method returning penultimate features ``(n, D)`` (run in
        evaluation mode).
      factory: ``factory(nnx.Rngs(key)) -> module`` to draw fresh weights in ``init``
        (cold starts); without it ``init`` returns the module's own weights for any key.
      readout: the last linear layer (BALD): the attribute holding it (``"head"``, or a
        path such as ``("blocks", "out")``), whose ``kernel`` ``(D, C)`` and ``bias``
        ``(C,)`` are read from ``params``; or ``readout(params) -> (W, b)``.
      block_features: the name of a method returning a tuple of per-block features
        ``(n, d_l)`` (LL4AL); in training it runs on a training-mode copy of the module
        (its state updates are dropped), so ``aux["block_features"]`` has them too.
      meta: see :class:`Model`.

    Returns:
      ``(model, variables)``.
    """
    graphdef, params0, rngs0, state0 = nnx.split(module, nnx.Param, nnx.RngState, ...)
    streams = sorted({v.tag for _, v in nnx.to_flat_state(rngs0) if isinstance(v, nnx.RngKey)})
    has_dropout = any(isinstance(node, nnx.Dropout) for _, node in nnx.iter_graph(module))
    name = name or type(module).__name__

    def fresh(tree):
        # rebuilds the NNX variable objects in the current trace: NNX refuses to update a
        # variable created in another one (e.g. state from outside a jax.grad)
        return jax.tree.map(lambda a: a, tree)

    def merged(params, state):
        return nnx.merge(graphdef, fresh(params), fresh(rngs0), fresh(state))

    def split_state(m):
        return nnx.split(m, nnx.Param, nnx.RngState, ...)[3]

    def apply(params, state, x):
        m = merged(params, state)
        m.eval()
        return m(x)

    def train_apply(params, state, x, key):
        m = merged(params, state)
        m.train()
        if streams:
            keys = jax.random.split(key, len(streams))
            nnx.reseed(m, **dict(zip(streams, keys)))
        logits = m(x)
        aux = {}
        if block_features is not None:
            f = merged(params, state)
            f.train()
            if streams:
                nnx.reseed(f, **dict(zip(streams, keys)))
            aux["block_features"] = _flat_features(getattr(f, block_features)(x))
        return logits, split_state(m), aux

    def init(key, x):
        del x
        if factory is None:
            return Variables(params0, state0)
        fresh = factory(nnx.Rngs(key))
        _, p, _, s = nnx.split(fresh, nnx.Param, nnx.RngState, ...)
        return Variables(p, s)

    pieces = {}
    if embed is not None:
        if not callable(getattr(module, embed, None)):
            raise ValueError(f"NNX module {name} has no method {embed!r} for embed")

        def embed_method(params, state, x):
            m = merged(params, state)
            m.eval()
            return getattr(m, embed)(x)
        pieces["embed"] = embed_method

    for piece, method in (("embed", embed), ("block_features", block_features)):
        if method is not None and not callable(getattr(module, method, None)):
            raise ValueError(f"NNX module {name} has no method {method!r} for {piece}")
    if block_features is not None:
        def block_features_method(params, state, x):
            m = merged(params, state)
            m.eval()
            return _flat_features(getattr(m, block_features)(x))
        pieces["block_features"] = block_features_method

    if callable(readout):
        pieces["readout"] = readout
    elif readout is not None:
        path = (readout,) if isinstance(readout, str) else tuple(readout)
        node = params0
        for k in path:
            if k not in node:
                raise ValueError(f"NNX module {name} has no parameters at {'.'.join(path)!r} "
                                 f"for readout; its top-level parameters: "
                                 f"{', '.join(map(str, node))}")
            node = node[k]
        if "kernel" not in node or "bias" not in node:
            raise ValueError(f"readout {'.'.join(path)!r} of NNX module {name} has no kernel "
                             "and bias: give the attribute of its last nnx.Linear")

        def readout_at(params):
            node = params
            for k in path:
                node = node[k]
            return _value(node["kernel"]), _value(node["bias"])
        pieces["readout"] = readout_at

    if has_dropout:
        def mc_apply(params, state, x, key):
            m = merged(params, state)
            m.eval()
            for _, node in nnx.iter_graph(m):
                if isinstance(node, nnx.Dropout):
                    node.deterministic = False
            if streams:
                keys = jax.random.split(key, len(streams))
                nnx.reseed(m, **dict(zip(streams, keys)))
            return m(x)
        pieces["mc_apply"] = mc_apply

    model = _made_by(Model(name=name, apply=apply, init=init, train_apply=train_apply,
                           meta=dict(meta or {}), **pieces), "from_nnx")
    return model, Variables(params0, state0)


def _value(v):
    """An NNX variable's array (``Param.value``), or the array itself."""
    return v[...] if isinstance(v, nnx.Variable) else v


def _flat_features(feats) -> tuple:
    """Per-block features as a tuple of ``(n, d_l)``."""
    return tuple(f.reshape(f.shape[0], -1) for f in feats)


# ============================================================================ plain function


def from_function(f: Callable[[PyTree, Array], Array], *, params: PyTree = None,
                  init: Optional[Callable[[Array, Array], PyTree]] = None,
                  embed: Optional[Callable[[PyTree, Array], Array]] = None,
                  readout: Optional[Callable[[PyTree], tuple]] = None,
                  mc_apply: Optional[Callable[[PyTree, Array, Array], Array]] = None,
                  block_features: Optional[Callable[[PyTree, Array], tuple]] = None,
                  name: str = "function",
                  meta: Optional[Mapping[str, Any]] = None) -> Model:
    """A plain ``f(params, x) -> (n, C)`` as a :class:`Model` (no state, no dropout).

    Args:
      f: logits of a batch; ``params`` any pytree of float arrays.
      params: the weights ``init`` returns for every key (when ``init`` is not given).
      init: ``init(key, x) -> params`` drawing fresh weights (optional).
      embed: ``embed(params, x) -> (n, D)`` penultimate features (optional).
      readout: ``readout(params) -> (W (D, C), b (C,))``, the last linear layer (BALD).
      mc_apply: ``mc_apply(params, x, key) -> (n, C)``, a stochastic forward (BALD).
      block_features: ``block_features(params, x) -> tuple of (n, d_l)`` (LL4AL).
      name: the model's name.
    """
    if init is None and params is None:
        raise ValueError("from_function needs params= (the weights) or init= (a function "
                         "drawing them)")

    def init_fn(key, x):
        return Variables(params if init is None else init(key, x), {})

    def stateless(fn):
        return None if fn is None else (lambda p, s, *a: fn(p, *a))

    return _made_by(Model(name=name, apply=lambda p, s, x: f(p, x), init=init_fn,
                          embed=stateless(embed), readout=readout,
                          mc_apply=stateless(mc_apply), block_features=stateless(block_features),
                          meta=dict(meta or {})), "from_function")


# ============================================================================ Equinox


def from_equinox(model, *, name: Optional[str] = None, embed: Optional[str] = None,
                 batched: bool = False,
                 meta: Optional[Mapping[str, Any]] = None) -> tuple[Model, Variables]:
    """An Equinox model as a :class:`Model`, with its current weights as the variables.

    ``params, static = eqx.partition(model, eqx.is_inexact_array)``; evaluation runs
    ``eqx.nn.inference_mode`` of the recombined model, training mode passes a fresh key
    per example (``key=`` keyword) when ``__call__`` accepts one (dropout). Models with
    ``eqx.nn.State`` (stateful BatchNorm) are not supported.

    Args:
      model: an ``equinox.Module``; ``model(x)`` on ONE example returns ``(C,)`` logits
        (``batched=True``: on a batch, ``(n, C)``).
      embed: the name of a method giving penultimate features of one example ``(D,)``
        (of a batch with ``batched=True``).
      name: the model's name (default: the class name).

    Returns:
      ``(model, variables)``.
    """
    try:
        import equinox as eqx
    except ImportError:
        raise ImportError("from_equinox needs equinox: pip install equinox") from None
    params0, static = eqx.partition(model, eqx.is_inexact_array)
    takes_key = _accepts(type(model).__call__, "key")
    name = name or type(model).__name__

    def batch(fn, x, keys=None):
        if batched:
            return fn(x) if keys is None else fn(x, key=keys[0])
        if keys is None:
            return jax.vmap(fn)(x)
        return jax.vmap(lambda xi, ki: fn(xi, key=ki))(x, keys)

    def apply(params, state, x):
        m = eqx.nn.inference_mode(eqx.combine(params, static))
        return batch(m, x)

    def train_apply(params, state, x, key):
        m = eqx.nn.inference_mode(eqx.combine(params, static), value=False)
        keys = jax.random.split(key, x.shape[0]) if takes_key else None
        return batch(m, x, keys), state, {}

    def init(key, x):
        del key, x
        return Variables(params0, {})

    pieces = {}
    if embed is not None:
        def embed_method(params, state, x):
            m = eqx.nn.inference_mode(eqx.combine(params, static))
            return batch(getattr(m, embed), x)
        pieces["embed"] = embed_method

    return (_made_by(Model(name=name, apply=apply, init=init, train_apply=train_apply,
                           meta=dict(meta or {}), **pieces), "from_equinox"),
            Variables(params0, {}))


base_lib.HINTS.update(piece_text=piece_text, how_to_give=how_to_give)
