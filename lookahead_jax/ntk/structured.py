"""Structured derivatives on a traced computation (helpers for :mod:`lookahead_jax.ntk`).

The idea is neural-tangents' implementation 3 (Novak, Sohl-Dickstein & Schoenholz,
"Fast Finite Width Neural Tangent Kernel", ICML 2022), done on the jaxpr of an arbitrary
``f(params, x)`` rather than on a stax/ rule table:

1. ``jax.make_jaxpr`` traces ``f`` for ONE example; calls to ``jit``/``pjit``/
   ``closed_call`` are inlined into a flat list of :class:`Node` s (custom_jvp / custom_vjp
   calls and control flow stay opaque: they are re-bound as they are).
2. :func:`analyse` follows every parameter leaf through isometric "views"
   (``reshape``, ``transpose``, ``convert_element_type``, ``copy``, ``squeeze``,
   ``expand_dims``) to its single use. A leaf whose only use is the right operand of a
   ``dot_general`` (no batch dimensions, the example axis 0 of the left operand not
   contracted) is a **dense** weight; the right operand of a ``conv_general_dilated``
   (no feature/batch grouping, example axis 0 in lhs and out) is a **conv** weight.
   A leaf that is added once to a structured layer's output ``h`` (``h + b``, ``b``
   broadcast over the positions and mapped one-to-one onto the D_out output features, ``h``
   used nowhere else) is that layer's **bias**: ``∂z/∂b = Σ_s δ_s``, so its kernel block
   is folded into the layer's as ``(a·a' + 1)(δ·δ')``. Every other leaf (BatchNorm
   scale/offset, embeddings, weights used twice, anything reaching opaque calls) is a
   **fallback** leaf.
3. :func:`evaluate` runs the flat program with a zero *probe* added to the output
   ``h`` of each structured layer and records the layer input ``a``. The per-example
   Jacobian of the (K-vector) output with respect to the probes is ``δ = ∂z/∂h``; with
   respect to the fallback leaves it is their ordinary Jacobian rows.

For a dense layer ``h = a W`` (``a`` of shape ``(S, D_in)`` per example: S > 1 for
sequence-like inputs), ``∂z/∂W = Σ_s a_s ⊗ δ_s`` and the kernel block between two
examples is ``Σ_{s,t} (a_s·a'_t)(δ_s·δ'_t)``; for a convolution ``a`` is the matrix of
input patches (``lax.conv_general_dilated_patches`` with the layer's own geometry) and
``s`` runs over output positions (docs/ALGEBRA.md §7, A13-A14).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

_INLINE = ("pjit", "jit", "closed_call", "core_call")
_VIEWS = ("reshape", "transpose", "convert_element_type", "copy", "copy_p", "squeeze",
          "expand_dims")


@dataclasses.dataclass
class Node:
    """One primitive application of the flattened program."""
    prim: Any
    params: dict
    ins: list          # ("v", id) for a variable, ("c", value) for a literal/constant
    outs: list         # ids


@dataclasses.dataclass
class Program:
    nodes: list
    avals: list        # id -> abstract value
    in_ids: list       # flat inputs (param leaves, then x)
    out_refs: list


@dataclasses.dataclass(frozen=True)
class Layer:
    """A structured (dense or conv) weight: where its probe goes and how to read A, Δ."""
    kind: str          # "dense" | "conv"
    leaf: int          # index of the parameter leaf
    node: int          # index of the dot_general / conv node
    lhs: Any           # ("v", id) of the activation operand
    out_id: int        # id of the layer output (where the probe is added)
    s: int             # positions per example (S)
    d_in: int          # A row length (D_in, or the patch size)
    d_out: int         # Δ row length (D_out, or output channels)
    bias: int | None = None   # leaf index of a bias folded into this layer (h + b)


def trace_program(fun: Callable, args: Sequence[Any]) -> Program:
    """Flat :class:`Program` of ``fun(*args)`` (inputs flattened as jax.tree.leaves)."""
    closed = jax.make_jaxpr(fun)(*args)
    nodes, avals = [], []

    def new_id(aval):
        avals.append(aval)
        return len(avals) - 1

    def run(jaxpr, const_refs, in_refs):
        env = {}

        def read(a):
            if isinstance(a, jcore.Literal):
                return ("c", a.val)
            return env[a]

        for v, r in zip(jaxpr.constvars, const_refs):
            env[v] = r
        for v, r in zip(jaxpr.invars, in_refs):
            env[v] = r
        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            name = eqn.primitive.name
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if name in _INLINE and sub is not None:
                if isinstance(sub, jcore.ClosedJaxpr):
                    outs = run(sub.jaxpr, [("c", c) for c in sub.consts], ins)
                else:
                    outs = run(sub, [], ins)
            else:
                outs = [("v", new_id(v.aval)) for v in eqn.outvars]
                nodes.append(Node(eqn.primitive, eqn.params, ins, [o[1] for o in outs]))
            for v, r in zip(eqn.outvars, outs):
                env[v] = r
        return [read(v) for v in jaxpr.outvars]

    in_refs = [("v", new_id(v.aval)) for v in closed.jaxpr.invars]
    out_refs = run(closed.jaxpr, [("c", c) for c in closed.consts], in_refs)
    return Program(nodes, avals, [r[1] for r in in_refs], out_refs)


def analyse(prog: Program, n_leaves: int) -> tuple[list[Layer], list[int]]:
    """Structured layers and fallback leaf indices (see the module docstring)."""
    uses: dict[int, list[tuple[int, int]]] = {}
    for k, node in enumerate(prog.nodes):
        for pos, r in enumerate(node.ins):
            if r[0] == "v":
                uses.setdefault(r[1], []).append((k, pos))
    out_ids = {r[1] for r in prog.out_refs if r[0] == "v"}
    layers, fallback = [], []
    for leaf in range(n_leaves):
        layer = _match(prog, uses, out_ids, leaf)
        if layer is None:
            fallback.append(leaf)
        else:
            layers.append(layer)
    by_out = {l.out_id: i for i, l in enumerate(layers)}
    rest = []
    for leaf in fallback:
        i = _match_bias(prog, uses, out_ids, leaf, by_out, layers)
        if i is None:
            rest.append(leaf)
        else:
            layers[i] = dataclasses.replace(layers[i], bias=leaf)
            del by_out[layers[i].out_id]           # at most one bias per layer
    return layers, rest


def _match(prog, uses, out_ids, leaf):
    cur = prog.in_ids[leaf]
    if not jnp.issubdtype(prog.avals[cur].dtype, jnp.inexact):
        return None
    while True:
        u = uses.get(cur, [])
        if cur in out_ids or len(u) != 1:
            return None
        k, pos = u[0]
        node = prog.nodes[k]
        name = node.prim.name
        if name in _VIEWS and len(node.outs) == 1 and sum(r[0] == "v" for r in node.ins) == 1:
            cur = node.outs[0]
            continue
        if pos != 1 or node.ins[0][0] != "v":
            return None
        lhs_aval = prog.avals[node.ins[0][1]]
        out_aval = prog.avals[node.outs[0]]
        if name == "dot_general":
            (ca, cw), (ba, bw) = node.params["dimension_numbers"]
            if ba or bw or 0 in ca or lhs_aval.shape[0] != 1:
                return None
            d_in = math.prod(lhs_aval.shape[d] for d in ca)
            s = math.prod(lhs_aval.shape[d] for d in range(1, lhs_aval.ndim) if d not in ca)
            d_out = math.prod(out_aval.shape) // s
            return Layer("dense", leaf, k, node.ins[0], node.outs[0], s, d_in, d_out)
        if name == "conv_general_dilated":
            p = node.params
            lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
            if (p["feature_group_count"] != 1 or p["batch_group_count"] != 1
                    or lhs_spec[0] != 0 or out_spec[0] != 0 or lhs_aval.shape[0] != 1):
                return None
            rhs_shape = prog.avals[node.ins[1][1]].shape
            d_in = math.prod(rhs_shape[d] for d in rhs_spec[1:])
            d_out = out_aval.shape[out_spec[1]]
            s = math.prod(out_aval.shape[d] for d in out_spec[2:])
            return Layer("conv", leaf, k, node.ins[0], node.outs[0], s, d_in, d_out)
        return None


def _match_bias(prog, uses, out_ids, leaf, by_out, layers):
    """Index of the layer whose output ``h`` this leaf is added to as a bias, or None.

    The leaf must reach an ``add`` with ``h`` through single-use views and
    ``broadcast_in_dim`` only; ``h`` must have no other use. The broadcast is then checked
    on concrete values: feeding ``b = 0, 1, 2, ...`` through the chain must give, in the
    layer's ``(S, D_out)`` layout of ``h``, the same permutation of ``0..D_out-1`` at every
    position.
    """
    cur = prog.in_ids[leaf]
    aval = prog.avals[cur]
    if not jnp.issubdtype(aval.dtype, jnp.inexact):
        return None
    chain = []
    while True:
        u = uses.get(cur, [])
        if cur in out_ids or len(u) != 1:
            return None
        k, pos = u[0]
        node = prog.nodes[k]
        name = node.prim.name
        if sum(r[0] == "v" for r in node.ins) == 1 and len(node.outs) == 1 and (
                name in _VIEWS or name == "broadcast_in_dim"):
            chain.append(node)
            cur = node.outs[0]
            continue
        if name != "add" or len(node.ins) != 2 or node.ins[1 - pos][0] != "v":
            return None
        h_id = node.ins[1 - pos][1]
        i = by_out.get(h_id)
        if i is None or len(uses.get(h_id, [])) != 1 or h_id in out_ids:
            return None
        return i if _is_bias_layout(prog, layers[i], chain, aval, h_id) else None


def _is_bias_layout(prog, layer, chain, aval, h_id):
    size = math.prod(aval.shape)
    if size != layer.d_out:
        return False
    with jax.ensure_compile_time_eval():     # concrete values, also inside a jit trace
        return _check_bias_layout(prog, layer, chain, aval, h_id, size)


def _check_bias_layout(prog, layer, chain, aval, h_id, size):
    val = jnp.arange(size, dtype=jnp.float32).reshape(aval.shape)
    for node in chain:
        bind_params = node.prim.get_bind_params(node.params)
        subfuns = []
        if isinstance(bind_params, tuple):          # jax < 0.7: (subfuns, params)
            subfuns, bind_params = bind_params
        ins = [val if r[0] == "v" else r[1] for r in node.ins]
        val = node.prim.bind(*subfuns, *ins, **bind_params)
    h_shape = prog.avals[h_id].shape
    try:
        full = jnp.broadcast_to(jnp.asarray(val, jnp.float32), h_shape)
    except ValueError:
        return False
    rows = np.asarray(_delta_layout(prog, layer, full[None]))[0]      # (S, D_out)
    first = rows[0]
    return bool((rows == first).all()
                and np.array_equal(np.sort(first), np.arange(size, dtype=np.float32)))


def evaluate(prog: Program, inputs: Sequence[Any], probes: dict[int, Any],
             capture: Sequence[int]):
    """Runs the program; adds ``probes[id]`` to variable ``id``; returns (outs, captured)."""
    env = dict(zip(prog.in_ids, inputs))

    def read(r):
        return env[r[1]] if r[0] == "v" else r[1]

    for node in prog.nodes:
        bind_params = node.prim.get_bind_params(node.params)
        subfuns = []
        if isinstance(bind_params, tuple):          # jax < 0.7: (subfuns, params)
            subfuns, bind_params = bind_params
        outs = node.prim.bind(*subfuns, *[read(r) for r in node.ins], **bind_params)
        if not node.prim.multiple_results:
            outs = [outs]
        for i, v in zip(node.outs, outs):
            env[i] = v + probes[i] if i in probes else v
    return [read(r) for r in prog.out_refs], [env[i] for i in capture]


def layer_rows(prog: Program, layer: Layer, lhs, delta):
    """Per-example A ``(S, D_in)`` and Δ ``(K, S, D_out)`` of a structured layer.

    ``lhs`` is the captured activation operand (leading example axis of size 1) and
    ``delta`` the probe cotangent ``(K, *h.shape)``.
    """
    node = prog.nodes[layer.node]
    if layer.kind == "dense":
        (ca, _), _ = node.params["dimension_numbers"]
        free = [d for d in range(lhs.ndim) if d not in ca]
        a = jnp.transpose(lhs, free + list(ca)).reshape(layer.s, layer.d_in)
        return a, _delta_layout(prog, layer, delta)
    p = node.params
    _, rhs_spec, _ = p["dimension_numbers"]
    rhs_shape = prog.avals[node.ins[1][1]].shape
    a = _patches(lhs, [rhs_shape[d] for d in rhs_spec[2:]], p).reshape(layer.s, layer.d_in)
    return a, _delta_layout(prog, layer, delta)


def _delta_layout(prog, layer, delta):
    """``(K, *h.shape)`` cotangents (or values) of a layer's output as ``(K, S, D_out)``."""
    k = delta.shape[0]
    if layer.kind == "conv":
        out_spec = prog.nodes[layer.node].params["dimension_numbers"][2]
        delta = jnp.transpose(delta, (0, 1, *(1 + d for d in out_spec[2:]), 1 + out_spec[1]))
    return delta.reshape(k, layer.s, layer.d_out)


def _patches(lhs, filt, p):
    """Input patches ``(1, *out_spatial, C_in·prod(filt))`` of a convolution.

    Strided slices of the padded input (pure data movement); a transposed convolution
    (lhs dilation) uses ``lax.conv_general_dilated_patches``, an identity-filter
    convolution that costs ``prod(filt)·C_in`` times more multiply-adds.
    """
    dn = p["dimension_numbers"]
    lhs_spec, _, out_spec = dn
    if any(d != 1 for d in p["lhs_dilation"]):
        patches = lax.conv_general_dilated_patches(
            lhs, filt, p["window_strides"], p["padding"], lhs_dilation=p["lhs_dilation"],
            rhs_dilation=p["rhs_dilation"], dimension_numbers=dn,
            precision=lax.Precision.HIGHEST)
        return jnp.transpose(patches, (0, *out_spec[2:], out_spec[1]))
    x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
    x = lax.pad(x, jnp.zeros((), x.dtype),
                [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in p["padding"]] + [(0, 0, 0)])
    strides, rdil = p["window_strides"], p["rhs_dilation"]
    nsp = len(filt)
    out_sp = [(x.shape[1 + i] - (filt[i] - 1) * rdil[i] - 1) // strides[i] + 1
              for i in range(nsp)]
    cols = []
    for offs in itertools.product(*[range(k) for k in filt]):
        start = [0] + [o * rdil[i] for i, o in enumerate(offs)] + [0]
        limit = ([x.shape[0]] + [start[1 + i] + (out_sp[i] - 1) * strides[i] + 1
                                 for i in range(nsp)] + [x.shape[-1]])
        cols.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
