"""Projected NTK features: φ(x) ∈ ℝᵏ with Θ(x, x′) ≈ φ(x)·φ(x′) (issue 21, TRAK / LoGra).

The empirical NTK Θ(x, x′) = g(x)·g(x′) is an inner product of per-example parameter
gradients g ∈ ℝᴾ. A random matrix R (P × k) with E[R Rᵀ] = I gives features
φ = Rᵀ g ∈ ℝᵏ with E[φ(x)·φ(x′)] = Θ(x, x′) (Johnson–Lindenstrauss; TRAK, Park et al.
2023). This module never forms g: it projects the pieces the structured engine
(:mod:`lookahead_jax.ntk.structured`) records, layer by layer (LoGra, Choe et al. 2024):

* **Dense / conv layer** l, per example: inputs (or input patches) A (S × D_in),
  output cotangents Δ (S × D_out, per output row k), weight gradient G = Σ_s a_s δ_sᵀ.
  A folded bias is a column of ones appended to A (its gradient Σ_s δ_s is then the last
  row of G). Two sketches (``sketch=``):

  ``"khatri_rao"`` (the default): P_in (D_in[+1] × k), P_out (D_out × k), entries
  N(0, 1), one rank-one direction p_in,r ⊗ p_out,r per feature r:

      φ_l = (1/√k) Σ_s (P_inᵀ a_s) ⊙ (P_outᵀ δ_s),   φ_l,r = p_in,rᵀ G p_out,r / √k,

  i.e. (P_in ⊙ P_out)ᵀ vec(G) / √k with the column-wise Khatri–Rao product (column r
  = p_in,r ⊗ p_out,r), k_l = k numbers at S·(D_in + D_out)·k multiply-adds per example.
  E[φ_l·φ_l′] = Θ_l = ⟨G, G′⟩ and (p, q independent standard Gaussians; Isserlis twice)

      E[(φ_l·φ_l′ − Θ_l)²] = (‖G‖²‖G′‖² + Θ_l² + 2‖G G′ᵀ‖² + 2‖Gᵀ G′‖²
                              + 2 tr((Gᵀ G′)²)) / k,

  each term ≤ ‖G‖²‖G′‖², so the relative error shrinks like 1/√k (a variance at most
  8 times a dense JL projection's of vec(G); near it when G, G′ have high rank). A layer with
  D_in·D_out ≤ k is kept exactly (P = I ⊗ I: no error).

  ``"kronecker"``: with P_in (D_in[+1] × k_in), P_out (D_out × k_out), entries N(0, 1/k_in),
  N(0, 1/k_out), the layer's features are

      φ_l = vec(P_inᵀ G P_out) = Σ_s (P_inᵀ a_s) ⊗ (P_outᵀ δ_s) = (P_in ⊗ P_out)ᵀ vec(G),

  k_l = k_in·k_out numbers at a cost of S·(D_in·k_in + D_out·k_out + k_in·k_out)
  multiply-adds per example, never the D_in·D_out row. E[(P_in ⊗ P_out)(P_in ⊗ P_out)ᵀ]
  = I, so E[φ_l·φ_l′] = Θ_l. A side whose width is ≤ its share is kept exactly
  (P = I: no error from that factor). Its error shrinks only like k^(−1/4) (below).
* **Every other leaf** (BatchNorm scale/offset, weights used twice, ...): its Jacobian
  rows r (R numbers) times a dense Gaussian R_r (R × k_r, entries N(0, 1/k_r)),
  generated in row blocks of :data:`ROW_BLOCK` so no R × k_r matrix is held when R is
  large; rows kept exactly when R ≤ k_r.

Every layer draws its matrices from ``fold_in(key, layer)``: the same key gives the same
projection in every chunk, so all blocks of one acquisition (labeled, candidates,
evaluation points) share it. The matrices are regenerated inside each jitted chunk
(cheap: D·k draws) rather than stored.

Error (Khatri–Rao: above): one dense Gaussian projection of dimension k has E[(φ·φ′ − Θ)²] =
(Θ(x,x)Θ(x′,x′) + Θ(x,x′)²)/k (relative error ~1/√k). A Kronecker factor is a product of
two independent JL estimates: for one position (S = 1) the layer's term is
(a·P_inP_inᵀa′)(δ·P_outP_outᵀδ′) with relative variance ≈ 1/k_in + 1/k_out, so with
k_in = k_out = √k_l the error of a layer shrinks like k_l^(−1/4), not k_l^(−1/2): the
price of never forming the row (tests/test_projected.py checks both formulas).

Outputs: the scalar kernels (``first_logit``, ``sum_logits``) give ``(n, k)``;
``trace`` = Σ_c g_c·g_c′ gives ``(n, C·k)`` (the C logits' features side by side);
``full`` gives ``(n, C, k)`` with Θ[c, c′] ≈ φ_c·φ_c′ (the feature-space look-ahead does
not take it).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax.ntk import empirical as emp
from lookahead_jax.ntk import structured as st

Array = jax.Array
PyTree = Any

PRECISION = jax.lax.Precision.HIGHEST
ROW_BLOCK = 1 << 16      # rows of a fallback projection generated at a time


class Block(NamedTuple):
    """Static layout of one projected block (hashable).

    Attributes:
      kind: ``"layer"`` (a dense/conv layer) or ``"rows"`` (dense projection).
      d_in, d_out: the layer's A width (with the bias column) and Δ width; for rows,
        d_in = R, d_out = 1.
      k_in, k_out: projected widths (Kronecker: k_in = d_in or k_out = d_out: that
        factor is exact; Khatri–Rao: k_in = k_out = k).
      sketch: ``"kronecker"`` (features k_in·k_out) or ``"khatri_rao"`` (k_in).
    """

    kind: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int
    sketch: str = "kronecker"

    @property
    def dim(self) -> int:
        return self.k_in if self.sketch == "khatri_rao" else self.k_in * self.k_out


class Layout(NamedTuple):
    """Static layout of a projection: blocks in the order of :func:`projected_features`."""

    blocks: tuple
    output: str

    @property
    def dim(self) -> int:
        """Features per output row (k)."""
        return sum(b.dim for b in self.blocks)


def _split(width_in: int, width_out: int, k: int) -> tuple[int, int]:
    """(k_in, k_out) with k_in·k_out ≤ k: a narrow side is kept exactly, else √k each."""
    if width_in * width_out <= k:
        return width_in, width_out
    if width_out <= math.isqrt(k):
        return max(1, min(width_in, k // width_out)), width_out
    if width_in <= math.isqrt(k):
        return width_in, max(1, min(width_out, k // width_in))
    r = math.isqrt(k)
    return r, max(1, k // r)


SKETCHES = ("khatri_rao", "kronecker")


def _check_sketch(sketch):
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {', '.join(map(repr, SKETCHES))}, "
                         f"got {sketch!r}")


def plan_layout(layers, fallback_width: int, output: str, dim: int,
                sketch: str = "khatri_rao") -> Layout:
    """Split ``dim`` features evenly over the structured layers and the fallback rows."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"projection_dim must be a positive integer, got {dim!r}")
    _check_sketch(sketch)
    n_blocks = len(layers) + (fallback_width > 0)
    share = max(1, int(dim) // max(n_blocks, 1))
    blocks = []
    for layer in layers:
        d_in = layer.d_in + (layer.bias is not None)
        if sketch == "khatri_rao" and d_in * layer.d_out > share:
            blocks.append(Block("layer", d_in, layer.d_out, share, share, "khatri_rao"))
            continue
        k_in, k_out = _split(d_in, layer.d_out, share)
        blocks.append(Block("layer", d_in, layer.d_out, k_in, k_out))
    if fallback_width:
        blocks.append(Block("rows", fallback_width, 1, min(fallback_width, share), 1))
    return Layout(tuple(blocks), output)


def _gaussian(key, rows: int, cols: int, dtype) -> Array:
    """``(rows, cols)`` N(0, 1/cols) entries (E[R Rᵀ] = I), or I when rows == cols."""
    if rows == cols:
        return jnp.eye(rows, dtype=dtype)
    return jax.random.normal(key, (rows, cols), dtype) / jnp.sqrt(jnp.asarray(cols, dtype))


def layer_matrices(key, block: Block, index: int, dtype):
    """(P_in, P_out) of block ``index`` (a "layer" block), from ``fold_in(key, index)``.

    Kronecker: entries N(0, 1/k_in), N(0, 1/k_out) (I for an exact side); Khatri–Rao:
    entries N(0, 1) (the 1/√k is applied to the features)."""
    k = jax.random.fold_in(key, index)
    k_in, k_out = jax.random.split(k)
    if block.sketch == "khatri_rao":
        return (jax.random.normal(k_in, (block.d_in, block.k_in), dtype),
                jax.random.normal(k_out, (block.d_out, block.k_out), dtype))
    return (_gaussian(k_in, block.d_in, block.k_in, dtype),
            _gaussian(k_out, block.d_out, block.k_out, dtype))


def _project_rows(key, block: Block, index: int, rows: Array, precision) -> Array:
    """``rows (m, R) @ R_r`` with R_r generated in row blocks of :data:`ROW_BLOCK`."""
    R, kr = block.d_in, block.k_in
    if R == kr:
        return rows
    k = jax.random.fold_in(key, index)
    scale = 1.0 / jnp.sqrt(jnp.asarray(kr, rows.dtype))
    out = jnp.zeros((rows.shape[0], kr), rows.dtype)
    for b, start in enumerate(range(0, R, ROW_BLOCK)):
        stop = min(start + ROW_BLOCK, R)
        p = jax.random.normal(jax.random.fold_in(k, b), (stop - start, kr), rows.dtype)
        out = out + jnp.matmul(rows[:, start:stop], p, precision=precision) * scale
    return out


def row_matrix(key, block: Block, index: int, dtype) -> Array:
    """The full R × k_r matrix of a "rows" block (tests and small R only)."""
    eye = jnp.eye(block.d_in, dtype=dtype)
    return _project_rows(key, block, index, eye, None)


def _per_example(prog, layers, fallback, leaves, layout: Layout, key, precision, dtype):
    """φ of one example: ``(K, k)``, K = 1 (scalar outputs) or C."""
    probe_ids = [l.out_id for l in layers]
    capture = [l.lhs[1] for l in layers]
    mats = [layer_matrices(key, b, i, dtype) for i, b in enumerate(layout.blocks)
            if b.kind == "layer"]

    def one(xi):
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
        parts = []
        for layer, lhs, dp, (p_in, p_out), blk in zip(layers, caps, d_probe, mats,
                                                      layout.blocks):
            a, d = st.layer_rows(prog, layer, lhs, dp)          # (S, D_in), (K, S, D_out)
            if layer.bias is not None:
                a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
            pa = jnp.matmul(a, p_in.astype(a.dtype), precision=precision)      # (S, k_in)
            pd = jnp.einsum("kse,eo->kso", d, p_out.astype(d.dtype), precision=precision)
            if blk.sketch == "khatri_rao":                          # Σ_s pa ⊙ pd / √k
                scale = 1.0 / math.sqrt(blk.k_in)
                parts.append(jnp.einsum("sr,ksr->kr", pa, pd, precision=precision) * scale)
                continue
            parts.append(jnp.einsum("si,kso->kio", pa, pd,
                                    precision=precision).reshape(d.shape[0], -1))
        if fallback:
            rows = [j.reshape(j.shape[0], -1) for j in d_fb]
            rows = jnp.concatenate(rows, axis=-1) if len(rows) > 1 else rows[0]
            parts.append(_project_rows(key, layout.blocks[-1], len(layout.blocks) - 1,
                                       rows, precision))
        if not parts:
            raise ValueError("the network has no differentiable parameters")
        return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    return one


def _plan(f, params, x_shape, x_dtype, output, dim, sketch):
    g, prog, layers, fallback, _ = emp._structured_plan(f, params, x_shape, x_dtype, output)
    leaves = jax.tree.leaves(params)
    width = sum(int(np.size(leaves[i])) for i in fallback)
    return g, prog, layers, fallback, plan_layout(layers, width, output, dim, sketch)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _projected_jit(fstatic, fleaves, params, x, output, dim, precision, sketch, key):
    f = emp._join_f(fstatic, fleaves)
    _, prog, layers, fallback, layout = _plan(f, params, (1, *x.shape[1:]), x.dtype,
                                              output, dim, sketch)
    leaves = jax.tree.leaves(params)
    phi = jax.vmap(_per_example(prog, layers, fallback, leaves, layout, key,
                                precision, x.dtype))(x)                        # (n, K, k)
    if output in ("first_logit", "sum_logits"):
        return phi[:, 0]
    if output == "trace":
        return phi.reshape(phi.shape[0], -1)
    return phi


def layout_of(f: Callable, params: PyTree, x_example_shape, x_dtype, *,
              output: str = "first_logit", projection_dim: int = 1024,
              sketch: str = "khatri_rao") -> Layout:
    """The :class:`Layout` :func:`projected_features` uses (blocks, actual k ≤ dim)."""
    _, _, _, _, layout = _plan(f, params, (1, *x_example_shape), x_dtype, output,
                               int(projection_dim), sketch)
    return layout


def projected_features(f: Callable, params: PyTree, x: Array, *, key: Array,
                       projection_dim: int = 1024, output: str = "first_logit",
                       chunk_size: int = 256, precision=PRECISION,
                       sketch: str = "khatri_rao") -> Array:
    """Projected NTK features of ``x`` (leading axis n), with Θ ≈ φ φᵀ.

    Args:
      f: ``f(params, x) -> (n, C)`` (as :func:`lookahead_jax.ntk.empirical_ntk_fn`).
      params: the parameters differentiated.
      x: ``(n, ...)`` inputs.
      key: the projection's PRNG key (the same key: the same projection).
      projection_dim: k, split over the structured layers and the fallback rows
        (:func:`plan_layout`; the actual width is :func:`layout_of` ``.dim`` ≤ k).
      output: ``"first_logit"``, ``"sum_logits"``, ``"trace"`` or ``"full"``.
      chunk_size: examples per jitted call (padded to a fixed size: one compile).
      precision: ``jax.lax.Precision`` of every contraction (default :data:`PRECISION`).
      sketch: the dense/conv layers' sketch, ``"khatri_rao"`` (default; error ~1/√k)
        or ``"kronecker"`` (error ~k^(−1/4)); see the module docstring.

    Returns:
      ``(n, k)`` (scalar outputs), ``(n, C·k)`` (``trace``) or ``(n, C, k)`` (``full``).
    """
    emp._validate(output, "structured")
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, (int, np.integer)) \
            or projection_dim < 1:
        raise ValueError(f"projection_dim must be a positive integer, got {projection_dim!r}")
    _check_sketch(sketch)
    fstatic, fleaves = emp._split_f(f)
    x = jnp.asarray(x)
    n = int(x.shape[0])
    chunk = max(1, min(int(chunk_size), n))
    chunk = -(-n // -(-n // chunk))                      # even chunks, least padding
    parts = []
    for s in range(0, n, chunk):
        xc = emp._pad_rows(x[s:s + chunk], chunk)
        phi = _projected_jit(fstatic, fleaves, params, xc, output, int(projection_dim),
                             precision, sketch, key)
        parts.append(phi[: min(chunk, n - s)])
    return jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def projected_kernel(phi1: Array, phi2: Array, precision=PRECISION) -> Array:
    """Θ ≈ φ₁ φ₂ᵀ: ``(n1, n2)`` from ``(n, k)`` features, ``(n1, n2, C, C)`` from
    ``(n, C, k)`` (``full``)."""
    if phi1.ndim == 3:
        return jnp.einsum("ick,jdk->ijcd", phi1, phi2, precision=precision)
    return jnp.matmul(phi1, phi2.T, precision=precision)
