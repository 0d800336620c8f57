"""Empirical neural tangent kernels of any ``f(params, x) -> (n, C)``, in pure JAX.

The look-ahead strategies (paper Eq. 11-13, ``docs/ALGEBRA.md``) need the empirical NTK
``Θ(x, x') = ∇_θ f(x) · ∇_θ f(x')`` of the current network between labeled and candidate
points. The paper uses the **single-logit** kernel ``Θ(x, x') = ∇_θ f^0(x)·∇_θ f^0(x')``
(Eq. 11; Wei, Hu & Steinhardt 2022 show that the C-output kernel is close to
``Θ_0 ⊗ I_C``), which is ``output="first_logit"`` here.

Outputs (``output=``), for ``x1`` of n1 and ``x2`` of n2 examples:

* ``"first_logit"``: ``(n1, n2)``, kernel of ``x -> f(x)[0]``.
* ``"sum_logits"``:  ``(n1, n2)``, kernel of ``x -> Σ_c f^c(x) / √C`` (what the paper
  authors' code computed).
* ``"trace"``:       ``(n1, n2)``, ``Σ_c ∇f^c(x)·∇f^c(x')`` (neural-tangents' default
  ``trace_axes=(-1,)`` is the MEAN, i.e. this divided by C).
* ``"full"``:        ``(n1, n2, C, C)``, ``[i, j, c, c'] = ∇f^c(x_i)·∇f^c'(x'_j)``.

Implementations (``implementation=``):

* ``"jacobian"``: per-example Jacobian rows of all P parameters, flattened over all
  leaves and contracted (one matmul). Rows of leaves that are Dense/Conv weights are
  assembled as ``Σ_s a_s ⊗ δ_s`` from the layer inputs and output cotangents (below),
  all others come from ``vmap(jacrev)``: XLA:CPU's vmapped weight-gradient convolutions
  are 5-50× slower than that batched outer product.
* ``"jvp_vjp"``: NTK-vector products (neural-tangents' implementation 2): a vjp on x2
  per column/logit, then a jvp on x1; no per-example Jacobian is ever stored.
* ``"structured"``: structured derivatives (Novak et al., ICML 2022, neural-tangents'
  implementation 3) on the traced jaxpr of ``f`` (:mod:`lookahead_jax.ntk.structured`):
  Dense weights give ``(A Aᵀ) ⊙ (Δ Δᵀ)``, Conv weights ``Σ_{p,q}(patch·patch')(δ·δ')``
  when that is cheaper than their Jacobian rows (``S²(D_in + D_out) ≤ D_in·D_out``,
  S = positions), otherwise their Jacobian rows ``Σ_s a_s ⊗ δ_s`` built from the same A
  and Δ. A bias added to such a layer's output (``h + b``) is folded into it:
  ``(A Aᵀ + 1) ⊙ (Δ Δᵀ)``, or the rows ``Σ_s δ_s`` next to the weight's. Every
  unrecognised leaf (BatchNorm, weights used twice, ...) contributes ordinary Jacobian
  rows. Never errors on a valid ``f``.
* ``"auto"``: ``"structured"`` (it falls back leaf by leaf, so it is never asymptotically
  worse than ``"jacobian"``), unless the per-example features of 8 examples do not fit
  the memory budget (huge P with nothing structured), then ``"jvp_vjp"``, whose memory
  is O(P) per tangent.

Assumptions: ``f`` treats examples independently (BatchNorm in evaluation mode, no
cross-example ops); only ``params`` is differentiated: anything else ``f`` closes over
(e.g. ``batch_stats``) is a constant. ``f`` may itself be a pytree (e.g. a
``flax.struct`` ``BoundModel``): its array leaves are then passed *through* ``jax.jit``,
so a new cycle's statistics reuse compiled code.

Memory: examples are processed ``chunk_size`` at a time (rows and columns). With
``chunk_size=None`` it is derived from a budget of min(1/8 of physical, 1/2 of free) memory
(``os.sysconf``) or 1/2 of an accelerator's ``memory_stats()['bytes_limit']``. When all
features of x1 and x2 fit in half the budget they are computed once and the kernel is
contracted tile by tile; otherwise features are recomputed per tile (peak
O(chunk·feature size + n1·n2)). Features are computed a few examples per call where one
example's largest intermediate (a conv's patch matrix, a layer's Jacobian rows) is
large, so that no intermediate exceeds ``_STEP_BYTES`` (XLA:CPU maps big buffers afresh
on every call, and first-touch page faults cost more than the arithmetic around them);
when both sides fit in one such step (MLPs), features and contraction run as a single
jitted program. Chunks are padded to a fixed size, and every piece is a module-level
``jax.jit``, so repeated calls with the same shapes never recompile.

Devices: with ``len(jax.devices()) > 1`` each chunk is laid out over a 1-D
``Mesh(jax.devices(), ("batch",))`` (``NamedSharding(mesh, P("batch"))`` on the example
axis, parameters and the column features replicated) and the jitted chunk kernels run
SPMD. Several processes (hosts): join them first with
:func:`lookahead_jax.distributed.initialize` (``jax.distributed.initialize``); then
``jax.devices()`` lists every process's devices and the same global mesh spans them. Every
process calls the same functions with the same host inputs (``x``, ``params``); each chunk
becomes a global array from them (``jax.make_array_from_callback``: a process places only
its own devices' rows), so the examples of a chunk are split over the processes. Results
(features, kernels) are then global ``jax.Array`` s, one value on every process:
:func:`lookahead_jax.distributed.gather` brings one back as NumPy (a collective); jitted
code accepts them as they are.

Cost: :func:`kernel_cost` counts, without computing anything, the FLOPs and feature
memory a call will take (the benchmarks' FLOP counts come from it). The memory planner
and the cost model live in :mod:`lookahead_jax.ntk.planner`, the mesh and padding
helpers in :mod:`lookahead_jax.ntk.batching`; both get what they need from here as
arguments and import nothing of this module.

Precision: float32 unless x64 is enabled (then float64 inputs stay float64). Every
contraction runs at an explicit ``jax.lax.Precision`` and the network's own passes under
``jax.default_matmul_precision``, both from :mod:`lookahead_jax.precision`:
``precision=None`` (the default) takes the library's policy now (``kernel`` and
``forward``), a ``jax.lax.Precision`` sets the contractions' (forward from the policy), a
:class:`~lookahead_jax.precision.PrecisionPolicy` or preset name both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from lookahead_jax import precision as _precision
from lookahead_jax.ntk import planner
from lookahead_jax.ntk import structured as st
from lookahead_jax.ntk.batching import mesh as _mesh
from lookahead_jax.ntk.batching import pad_rows as _pad_rows
from lookahead_jax.ntk.batching import pad_tree as _pad_feats
from lookahead_jax.ntk.batching import put as _put
from lookahead_jax.ntk.batching import round_chunk as _round_chunk
from lookahead_jax.ntk.planner import FUSED_MAX as _FUSED_MAX
from lookahead_jax.ntk.planner import MIN_CHUNK as _MIN_CHUNK
from lookahead_jax.ntk.planner import STEP_BYTES as _STEP_BYTES
from lookahead_jax.ntk.planner import Plan as _Plan
from lookahead_jax.ntk.planner import memory_budget_bytes

Array = jax.Array
PyTree = Any

OUTPUTS = ("first_logit", "sum_logits", "trace", "full")
IMPLEMENTATIONS = ("jacobian", "jvp_vjp", "structured", "auto")


# --------------------------------------------------------------------------- features
@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["rows", "acts", "cots"], meta_fields=["output", "bias"])
@dataclasses.dataclass(frozen=True)
class NTKFeatures:
    """Per-example derivative information of n examples (a pytree; slice with tree.map).

    Every array has the example axis first, so ``jax.tree.map(lambda a: a[s:e], feats)``
    (or :func:`slice_features`) selects examples ``s:e``. K is 1 for the scalar outputs
    (``first_logit``, ``sum_logits``) and C for ``trace``/``full``.

    Attributes:
      rows: ``(n, K, R)`` Jacobian rows of every leaf not handled structurally,
        flattened and concatenated (all P parameters for ``"jacobian"``).
      acts: per structured layer l, ``(n, S_l, D_in_l)``: layer inputs (dense) or
        input patches (conv), S_l positions per example.
      cots: per structured layer l, ``(n, K, S_l, D_out_l)``: output cotangents
        ``δ_l = ∂f/∂h_l``.
      output: the output mode (static).
      bias: per structured layer l, whether a bias ``h_l + b_l`` is folded into it
        (static): its kernel block is then ``Σ_{s,t} (a_s·a'_t + 1)(δ_s·δ'_t)``.
    """
    rows: Array
    acts: tuple
    cots: tuple
    output: str
    bias: tuple = ()

    @property
    def n(self) -> int:
        return self.rows.shape[0]


def slice_features(feats: NTKFeatures, start: int, stop: int) -> NTKFeatures:
    """Examples ``start:stop`` of ``feats`` (same as ``jax.tree.map(lambda a: a[start:stop], feats)``)."""
    return jax.tree.map(lambda a: a[start:stop], feats)


def _scalarise(out: Array, output: str) -> Array:
    if out.ndim != 2:
        raise ValueError(f"f(params, x) must return (n, C) logits, got shape {out.shape}")
    if output == "first_logit":
        return out[:, :1]
    if output == "sum_logits":
        return out.sum(-1, keepdims=True) / np.sqrt(out.shape[-1]).astype(out.dtype)
    return out


def _split_f(f):
    """(static part, array leaves) of ``f``; plain callables are entirely static."""
    leaves, treedef = jax.tree.flatten(f)
    # A pytree callable (e.g. models.BoundModel, possibly with no array leaves at all:
    # an MLP has no batch_stats) is split into its hashable treedef and its arrays; a
    # plain function is a single leaf and stays static as it is.
    if all(isinstance(l, (jax.Array, np.ndarray)) for l in leaves) \
            and not (len(leaves) == 1 and leaves[0] is f):
        return treedef, tuple(leaves)
    return f, ()


def _join_f(fstatic, fleaves):
    if isinstance(fstatic, jax.tree_util.PyTreeDef):
        return jax.tree.unflatten(fstatic, fleaves)
    return fstatic


def _is_diff(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _rows_of(jac_leaves, k):
    parts = [j.reshape(k, -1) for j in jac_leaves]
    if not parts:
        return None
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]


def _use_struct(layer) -> bool:
    """Structured block iff its pair cost S²(D_in + D_out [+ 1]) ≤ its rows' (D_in [+ 1])·D_out."""
    b = layer.bias is not None
    return layer.s * layer.s * (layer.d_in + layer.d_out + b) <= (layer.d_in + b) * layer.d_out


def _structured_plan(f, params, x1_shape, x_dtype, output, forward=None):
    """Traced program, structured layers (with their S/D sizes) and fallback leaves.

    ``f`` is traced under ``jax.default_matmul_precision(forward)`` (default HIGHEST), so
    its dots and convolutions carry that precision when the program is evaluated.
    """
    leaves, treedef = jax.tree.flatten(params)

    def g(ls, xb):
        return _scalarise(f(jax.tree.unflatten(treedef, ls), xb), output)

    with _precision.matmul_context(forward):
        prog = st.trace_program(g, (leaves, jax.ShapeDtypeStruct(x1_shape, x_dtype)))
    layers, fallback = st.analyse(prog, len(leaves))
    use_struct = {l.leaf: _use_struct(l) for l in layers}
    fallback = [i for i in fallback if _is_diff(leaves[i])]
    return g, prog, layers, fallback, use_struct


def _features_impl(f, params, x, output, implementation, precision):
    """``precision``: ``(contractions, forward)`` pair of ``jax.lax.Precision``."""
    precision, forward = precision
    leaves = jax.tree.leaves(params)
    g, prog, layers, fallback, use_struct = _structured_plan(
        f, params, (1, *x.shape[1:]), x.dtype, output, forward)
    if implementation == "jacobian":
        use_struct = {leaf: False for leaf in use_struct}
    probe_ids = [l.out_id for l in layers]
    capture = [l.lhs[1] for l in layers]
    k = prog.avals[prog.out_refs[0][1]].shape[-1]

    def per_example(xi):
        def fn(probes, fb):
            ls = list(leaves)
            for i, v in zip(fallback, fb):
                ls[i] = v
            outs, caps = st.evaluate(prog, ls + [xi[None]], dict(zip(probe_ids, probes)),
                                     capture)
            return outs[0][0], caps

        probes0 = [jnp.zeros(prog.avals[i].shape, prog.avals[i].dtype) for i in probe_ids]
        (d_probe, d_fb), caps = jax.jacrev(fn, argnums=(0, 1), has_aux=True)(
            probes0, [leaves[i] for i in fallback])
        parts, acts, cots = list(d_fb), [], []
        for layer, lhs, dp in zip(layers, caps, d_probe):
            a, d = st.layer_rows(prog, layer, lhs, dp)
            if use_struct[layer.leaf]:
                acts.append(a)
                cots.append(d)
            else:
                parts.append(jnp.einsum("sd,kse->kde", a, d, precision=precision))
                if layer.bias is not None:                  # ∂z/∂b = Σ_s δ_s
                    parts.append(d.sum(axis=1))
        rows = _rows_of(parts, k)
        if rows is None:
            rows = jnp.zeros((k, 0), x.dtype)
        return rows, tuple(acts), tuple(cots)

    rows, acts, cots = jax.vmap(per_example)(x)
    bias = tuple(l.bias is not None for l in layers if use_struct[l.leaf])
    return NTKFeatures(rows, acts, cots, output, bias)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _features_jit(fstatic, fleaves, params, x, output, implementation, precision):
    return _features_impl(_join_f(fstatic, fleaves), params, x, output, implementation,
                          precision)


# -------------------------------------------------------------------------- contraction
def _contract(f1: NTKFeatures, f2: NTKFeatures, precision=None) -> Array:
    output = f1.output
    full = output == "full"
    n1, n2 = f1.n, f2.n
    r1, r2 = f1.rows, f2.rows
    if full:
        out = jnp.einsum("ikr,jlr->ijkl", r1, r2, precision=precision)
    else:
        out = jnp.matmul(r1.reshape(n1, -1), r2.reshape(n2, -1).T, precision=precision)
    bias = f1.bias or (False,) * len(f1.acts)
    for a1, d1, a2, d2, b in zip(f1.acts, f1.cots, f2.acts, f2.cots, bias):
        if a1.shape[1] == 1:
            ga = jnp.matmul(a1[:, 0], a2[:, 0].T, precision=precision)
            if b:
                ga = ga + 1
            if full:
                gd = jnp.einsum("ike,jle->ijkl", d1[:, :, 0], d2[:, :, 0], precision=precision)
                out = out + ga[:, :, None, None] * gd
            else:
                gd = jnp.matmul(d1.reshape(n1, -1), d2.reshape(n2, -1).T, precision=precision)
                out = out + ga * gd
        else:
            ga = jnp.einsum("isd,jtd->ijst", a1, a2, precision=precision)
            if b:
                ga = ga + 1
            if full:
                gd = jnp.einsum("ikse,jlte->ijklst", d1, d2, precision=precision)
                out = out + jnp.einsum("ijst,ijklst->ijkl", ga, gd, precision=precision)
            else:
                gd = jnp.einsum("ikse,jkte->ijst", d1, d2, precision=precision)
                out = out + jnp.sum(ga * gd, axis=(2, 3))
    return out


_contract_jit = jax.jit(_contract, static_argnums=(2,))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _kernel_fused_jit(fstatic, fleaves, params, x1, x2, output, implementation, precision):
    """Features of x1 and x2 (x2=None: x1) and their contraction, as ONE program.

    For kernels whose features are computed in one step per side: XLA sees the whole
    computation (independent ops of the two sides can run concurrently, no feature
    buffers go back to Python) and a call is a single dispatch.
    """
    f = _join_f(fstatic, fleaves)
    f1 = _features_impl(f, params, x1, output, implementation, precision)
    f2 = f1 if x2 is None else _features_impl(f, params, x2, output, implementation,
                                              precision)
    return _contract(f1, f2, precision[0])


# ----------------------------------------------------------------------- NTK-vector
def _jvp_vjp_impl(f, params, x1, x2, output, forward=None):
    def g(p, x):
        with _precision.matmul_context(forward):
            return _scalarise(f(p, x), output)

    out2, vjp2 = jax.vjp(lambda p: g(p, x2), params)
    n2, k = out2.shape

    def column(ct):
        (tangent,) = vjp2(ct)
        return jax.jvp(lambda p: g(p, x1), (params,), (tangent,))[1]

    cts = jnp.eye(n2 * k, dtype=out2.dtype).reshape(n2 * k, n2, k)
    cols = jax.vmap(column)(cts)                                  # (n2·K, n1, K)
    full = cols.reshape(n2, k, x1.shape[0], k).transpose(2, 0, 3, 1)
    if output == "full":
        return full
    if output == "trace":
        return jnp.einsum("ijkk->ij", full)
    return full[:, :, 0, 0]


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _jvp_vjp_jit(fstatic, fleaves, params, x1, x2, output, forward=None):
    return _jvp_vjp_impl(_join_f(fstatic, fleaves), params, x1, x2, output, forward)


def _levels(precision) -> tuple:
    """``(contractions, forward)`` ``jax.lax.Precision`` of a ``precision`` argument."""
    return (_precision.resolve(precision, "kernel"),
            _precision.parse(None if isinstance(precision, jax.lax.Precision)
                             else precision).of("forward"))



# ------------------------------------------------------------------------ planning
# The planner (lookahead_jax.ntk.planner) gets the trace, the budget and the step size
# from here; the names are read at call time (tests patch them on this module).
_PLANS: dict = {}


def _make_plan(fstatic, fleaves, params, x, output, implementation, precision=None) -> _Plan:
    """Cached by static structure and shapes (tracing costs ~10-100 ms per call).

    ``precision`` does not change a plan; it is accepted so that every driver passes
    the same arguments.
    """
    del precision
    sig = lambda t: tuple((tuple(np.shape(a)), str(jnp.result_type(a)))  # noqa: E731
                          for a in jax.tree.leaves(t))
    key = (fstatic, sig(fleaves), jax.tree.structure(params), sig(params),
           tuple(x.shape[1:]), str(x.dtype), output, implementation)

    def build():
        _, prog, layers, fallback, use_struct = _structured_plan(
            _join_f(fstatic, fleaves), params, (1, *x.shape[1:]), x.dtype, output)
        return planner.plan_uncached(prog, layers, fallback, use_struct,
                                     jax.tree.leaves(params), x.dtype, implementation,
                                     budget=memory_budget_bytes(), step_bytes=_STEP_BYTES)

    return planner.cached(_PLANS, key, build)


def _feature_step(plan: _Plan, chunk: int, n: int, mesh) -> int:
    """Examples per feature call: ≤ ``chunk`` and ≤ the plan's working-set step."""
    return _round_chunk(min(chunk, plan.step), n, mesh)


def _auto_chunk(plan: _Plan, n: int) -> int:
    return planner.auto_chunk(plan, n, memory_budget_bytes())


def kernel_cost(f: Callable, params: PyTree, x1, x2=None, *, output: str = "first_logit",
                implementation: str = "auto") -> dict:
    """The work :func:`empirical_ntk_fn` does for ``Θ(x1, x2)``, counted without doing it.

    Traces ``f`` on one example, as the engine does to plan; nothing is computed on the
    data. FLOPs are 2 × multiply-adds. K is 1 for the scalar outputs (``first_logit``,
    ``sum_logits``) and C for ``trace`` / ``full``; a dense layer is a conv layer with
    S = 1 position, D_in inputs and D_out outputs (a conv layer: D_in = kernel taps ×
    input channels, S = output positions).

    Args:
      f, params, output, implementation: as for :func:`empirical_ntk_fn` and its
        ``ntk(params, x1, x2)``.
      x1: ``(N1, ...)`` examples; only the shape and dtype are read (a
        ``jax.ShapeDtypeStruct`` will do).
      x2: ``(N2, ...)`` examples, or ``None`` for ``Θ(x1, x1)`` (N2 = N1, features of x1
        only).

    Returns:
      a dict of plain Python values (JSON-ready):

      * ``implementation``: the path taken (``"auto"`` resolved: ``"structured"``, or
        ``"jvp_vjp"`` when one example's features and working set, times 8, exceed
        :func:`memory_budget_bytes`).
      * ``n1``, ``n2``: N1 and N2.
      * ``fwd_flops_per_example``: the ``dot_general`` and convolution FLOPs of one
        example's forward pass (dense: ``2·D_in·D_out`` per layer).
      * ``bwd_flops_per_example``: those of the backward pass that carries the K output
        cotangents: K × the forward FLOPs of every such op whose activation input depends
        on a parameter (not the first layer, whose input is x).
      * ``pair_flops``: one kernel entry (a K×K block) from two examples' features:
        ``2·S²·(D_in + K²·D_out + K²)`` per layer contracted structurally (Gram of inputs,
        Gram of cotangents, Hadamard product and sum; a folded bias costs nothing more),
        plus ``2·K²·R`` for the R parameters kept as Jacobian rows (all P parameters with
        ``implementation="jacobian"``).
      * ``contraction_flops``: ``pair_flops · N1 · N2``.
      * ``row_flops``: assembling the Jacobian rows ``Σ_s a_s ⊗ δ_s`` of the dense and conv
        layers not contracted structurally, ``2·K·S·D_in·D_out`` per layer and example,
        for N1 + N2 examples (N1 when ``x2`` is ``None``).
      * ``feature_bytes_per_example``: one example's features (``NTKFeatures``).
      * ``step``: examples per call of the feature computation.

      The ``"jvp_vjp"`` path keeps no features: its ``pair_flops``, ``contraction_flops``
      and ``row_flops`` are 0 (not counted).
    """
    _validate(output, implementation)
    fstatic, fleaves = _split_f(f)
    x1 = _shape_dtype(x1)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else _shape_dtype(x2).shape[0]
    plan = _make_plan(fstatic, fleaves, params, x1, output, implementation, None)
    _, prog, _, _, _ = _structured_plan(_join_f(fstatic, fleaves), params,
                                        (1, *x1.shape[1:]), x1.dtype, output)
    return planner.cost(plan, prog, n1, n2, x2 is not None)


def _shape_dtype(x) -> jax.ShapeDtypeStruct:
    """``x``'s shape and (canonical) dtype, without moving it to a device."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    return jax.ShapeDtypeStruct(shape, jax.dtypes.canonicalize_dtype(
        x.dtype if hasattr(x, "dtype") else np.result_type(x)))


# ---------------------------------------------------------------------------- drivers
def _features_chunked(fstatic, fleaves, params, x, output, impl, precision, chunk, mesh):
    n = x.shape[0]
    params = _put(params, mesh, PartitionSpec())
    parts = []
    for s in range(0, n, chunk):
        xc = _put(_pad_rows(x[s:s + chunk], chunk), mesh, PartitionSpec("batch"))
        feats = _features_jit(fstatic, fleaves, params, xc, output, impl, precision)
        m = min(chunk, n - s)
        parts.append(feats if m == chunk else slice_features(feats, 0, m))
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *parts)


def kernel_from_features(feats1: NTKFeatures, feats2: NTKFeatures, *, chunk_size=None,
                         precision=None) -> Array:
    """Θ between the examples of two feature sets (from :func:`ntk_features`).

    Args:
      feats1: features of n1 examples; feats2: of n2 examples (same ``f``, ``params`` and
        output mode). Slice them with :func:`slice_features` (or ``jax.tree.map``) to get
        column blocks on demand, e.g. ``Θ(X_U, X_U[j0:j1])``.
      chunk_size: tile size (examples); None for tiles of ≤ 4096 examples (≤ 1024 when
        ``feats1 is feats2`` and n > 2048: only tiles on or above the diagonal are
        computed, the rest are their transposes).
      precision: the contractions' ``jax.lax.Precision`` (``None``: the policy's
        ``kernel``; a policy or preset name: its ``kernel``).

    Returns:
      ``(n1, n2)``, or ``(n1, n2, C, C)`` for ``output="full"``.
    """
    if feats1.output != feats2.output:
        raise ValueError(f"output modes differ: {feats1.output!r} vs {feats2.output!r}")
    precision = _precision.resolve(precision, "kernel")
    mesh = _mesh()
    n1, n2 = feats1.n, feats2.n
    symmetric = feats1 is feats2
    default = 1024 if symmetric and n1 > 2048 else 4096   # symmetric: ~5/8 of the tiles
    c1 = _round_chunk(chunk_size or default, n1, mesh)
    c2 = c1 if symmetric else _round_chunk(chunk_size or default, n2, mesh)
    feats2 = _put(feats2, mesh, PartitionSpec())

    def block(i0, i1, j0, j1):
        a = _put(_pad_feats(slice_features(feats1, i0, i1), c1), mesh, PartitionSpec("batch"))
        b = _pad_feats(slice_features(feats2, j0, j1), c2)
        return _contract_jit(a, b, precision)[: i1 - i0, : j1 - j0]

    tiles = {}
    for i in range(0, n1, c1):
        for j in range(0, n2, c2):
            if symmetric and j < i:   # Θ(x_j, x_i) = Θ(x_i, x_j)ᵀ (logit axes swapped too)
                t = tiles[(j, i)]
                tiles[(i, j)] = t.T if t.ndim == 2 else t.transpose(1, 0, 3, 2)
            else:
                tiles[(i, j)] = block(i, min(i + c1, n1), j, min(j + c2, n2))
    rows = [jnp.concatenate([tiles[(i, j)] for j in range(0, n2, c2)], axis=1)
            for i in range(0, n1, c1)]
    return jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]


def _validate(output, implementation):
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; known: {OUTPUTS}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; known: {IMPLEMENTATIONS}")


def ntk_features(f: Callable, params: PyTree, x: Array, *, output: str = "first_logit",
                 implementation: str = "auto", chunk_size: int | None = None,
                 precision=None) -> NTKFeatures:
    """Per-example derivative information of ``x`` (leading axis n): an :class:`NTKFeatures`.

    ``"jacobian"`` gives flattened Jacobian rows only; ``"structured"``/``"auto"`` give
    per-layer activations A_l, cotangents Δ_l and rows for fallback leaves;
    ``"jvp_vjp"`` has no per-example features and uses ``"jacobian"``'s.
    """
    _validate(output, implementation)
    precision = _levels(precision)
    fstatic, fleaves = _split_f(f)
    impl = "jacobian" if implementation in ("jacobian", "jvp_vjp") else "structured"
    mesh = _mesh()
    plan = _make_plan(fstatic, fleaves, params, x, output, impl, precision)
    if chunk_size is None:
        chunk_size = _auto_chunk(plan, x.shape[0])
    return _features_chunked(fstatic, fleaves, params, x, output, impl, precision,
                             _feature_step(plan, chunk_size, x.shape[0], mesh), mesh)


class KernelSet(NamedTuple):
    """The three kernel blocks one look-ahead cycle needs (docs/ALGEBRA.md §3).

    Shapes are for scalar outputs; ``output="full"`` appends ``(C, C)``.
    """
    ll: Array   # Θ(X_L, X_L)  (L, L)
    ul: Array   # Θ(X_U, X_L)  (U, L)
    uu: Array   # Θ(X_U, X_U)  (U, U)


def kernel_set(f: Callable, params: PyTree, x_labeled: Array, x_candidates: Array, *,
               output: str = "first_logit", implementation: str = "auto",
               chunk_size: int | None = None, precision=None) -> KernelSet:
    """Θ_LL, Θ_UL, Θ_UU from features of X_L and X_U computed once each.

    Args:
      x_labeled: ``(L, ...)`` inputs X_L; x_candidates: ``(U, ...)`` inputs X_U.
      output, implementation, chunk_size, precision: as :func:`empirical_ntk_fn`.

    Returns:
      a :class:`KernelSet` of ``(L, L)``, ``(U, L)``, ``(U, U)`` (``output="full"``:
      each with ``(C, C)`` appended). In a multi-process run (module docstring) these
      are global arrays, the same value on every process.

    With ``implementation="jvp_vjp"`` the blocks are three kernel calls instead.
    """
    if implementation == "jvp_vjp":
        fn = empirical_ntk_fn(f, output=output, implementation=implementation,
                              chunk_size=chunk_size, precision=precision)
        return KernelSet(fn(params, x_labeled), fn(params, x_candidates, x_labeled),
                         fn(params, x_candidates))
    kw = dict(output=output, implementation=implementation, chunk_size=chunk_size,
              precision=precision)
    fl = ntk_features(f, params, x_labeled, **kw)
    fu = ntk_features(f, params, x_candidates, **kw)
    kf = functools.partial(kernel_from_features, chunk_size=chunk_size, precision=precision)
    return KernelSet(kf(fl, fl), kf(fu, fl), kf(fu, fu))


def empirical_ntk_fn(f: Callable, *, output: str = "first_logit",
                     implementation: str = "auto", chunk_size: int | None = None,
                     precision=None) -> Callable[..., Array]:
    """Returns ``ntk(params, x1, x2=None)``, the empirical NTK of ``f``.

    Args:
      f: ``f(params, x) -> (n, C)`` for any pytree ``params`` (a Flax ``apply`` with
        ``batch_stats`` bound and ``train=False``, or plain jnp). Only ``params`` is
        differentiated.
      output: one of :data:`OUTPUTS` (module docstring). ``"first_logit"`` is the paper's
        single-logit kernel (Eq. 11; Wei et al. 2022).
      implementation: one of :data:`IMPLEMENTATIONS` (module docstring, incl. the
        ``"auto"`` cost model).
      chunk_size: examples per chunk (rows and columns); None derives it from memory.
      precision: ``None`` (the policy of :mod:`lookahead_jax.precision`), a
        ``jax.lax.Precision`` for the contractions, or a policy / preset name (module
        docstring, "Precision").

    Returns:
      ``ntk(params, x1, x2=None)``: ``(n1, n2)`` for ``first_logit``/``sum_logits``/
      ``trace`` and ``(n1, n2, C, C)`` for ``full``; ``x2=None`` means ``x2 = x1``.
    """
    _validate(output, implementation)
    fstatic, fleaves = _split_f(f)

    def ntk(params: PyTree, x1: Array, x2: Array | None = None) -> Array:
        prec = _levels(precision)
        x1 = jnp.asarray(x1)
        same = x2 is None
        x2 = x1 if same else jnp.asarray(x2)
        n1, n2 = x1.shape[0], x2.shape[0]
        mesh = _mesh()
        plan = _make_plan(fstatic, fleaves, params, x1, output, implementation, precision)
        chunk = chunk_size or _auto_chunk(plan, n1 + (0 if same else n2))
        c1, c2 = _round_chunk(chunk, n1, mesh), _round_chunk(chunk, n2, mesh)
        if plan.implementation == "jvp_vjp":
            p = _put(params, mesh, PartitionSpec())
            xs2 = _put(x2, mesh, PartitionSpec())

            def block(i0, i1, j0, j1):
                a = _put(_pad_rows(x1[i0:i1], c1), mesh, PartitionSpec("batch"))
                b = _pad_rows(xs2[j0:j1], c2)
                return _jvp_vjp_jit(fstatic, fleaves, p, a, b, output,
                                    prec[1])[: i1 - i0, : j1 - j0]

            rows = [jnp.concatenate([block(i, min(i + c1, n1), j, min(j + c2, n2))
                                     for j in range(0, n2, c2)], axis=1)
                    for i in range(0, n1, c1)]
            return jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
        impl = plan.implementation
        feat_total = plan.feat_bytes * (n1 + (0 if same else n2))
        if (mesh is None and max(n1, n2) <= min(plan.step, chunk, _FUSED_MAX)
                and feat_total <= memory_budget_bytes() // 2):
            return _kernel_fused_jit(fstatic, fleaves, params, x1, None if same else x2,
                                     output, impl, prec)
        if feat_total <= memory_budget_bytes() // 2:
            f1 = _features_chunked(fstatic, fleaves, params, x1, output, impl, prec,
                                   _feature_step(plan, c1, n1, mesh), mesh)
            f2 = f1 if same else _features_chunked(
                fstatic, fleaves, params, x2, output, impl, prec,
                _feature_step(plan, c2, n2, mesh), mesh)
            return kernel_from_features(f1, f2, chunk_size=chunk_size, precision=prec[0])
        # Features do not fit: recompute the column features for every row chunk.
        rows = []
        for i in range(0, n1, c1):
            f1 = _features_chunked(fstatic, fleaves, params, x1[i:i + c1], output, impl,
                                   prec, _feature_step(plan, c1, c1, mesh), mesh)
            cols = []
            for j in range(0, n2, c2):
                f2 = _features_chunked(fstatic, fleaves, params, x2[j:j + c2], output,
                                       impl, prec, _feature_step(plan, c2, c2, mesh),
                                       mesh)
                cols.append(kernel_from_features(f1, f2, chunk_size=chunk,
                                                 precision=prec[0]))
            rows.append(jnp.concatenate(cols, axis=1))
        return jnp.concatenate(rows, axis=0)

    return ntk
