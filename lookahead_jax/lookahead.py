"""The look-ahead algebra (paper Section 3, Eq. 10-13): block form, scores, rank-one updates.

Pure functions over a :class:`LookaheadState` pytree, in the style of an optax
transformation: :func:`build_system` (the init: pad, factor), :func:`score_candidates`
(MLMOC, EMOC, EER, label-flip for every candidate at once), :func:`add_labeled` (the
sequential rank-one update). Everything runs on the device; this module knows nothing of
models, strategies or the loop (the strategies in
:mod:`lookahead_jax.strategies.ntk_lookahead` call it with kernels from the NTK engine).
Nothing here reads a device array back to the host, and host numbers (L, the jitter, a
candidate index, a label) go to the device with an explicit ``jax.device_put``
(:func:`to_device`), never an implicit one: the module runs under
``jax.transfer_guard("disallow")`` (tests/test_device_resident.py).

One cycle, from the trained network f_L (docs/ALGEBRA.md §3, "All candidates at once"):

1. Kernels, once: Θ(X, X) (n × n), Θ(U, X) (U × n), Θ(U, U) (U × U) from the NTK engine;
   optionally a separate evaluation set E with Θ(E, X), Θ(E, U). By default E = U, as in
   the paper.
2. Cholesky factor Lc of K = Θ(X, X) + λI, λ = ``jitter`` · mean diag Θ(X, X) (ridge
   jitter; the candidate's own diagonal gets the same λ, so every look-ahead is the exact
   kernel-ridge solution of the augmented system). No explicit inverse is formed.
3. W_U = Lc⁻¹ Θ(X, U), W_E = Lc⁻¹ Θ(X, E) (one triangular solve each), so that
   Θ(E, X) K⁻¹ Θ(X, U) = W_Eᵀ W_U, the linearised predictions (Eq. 11 with S = X)
   f^lin_L = f_L + W_·ᵀ (Lc⁻¹ r) with residuals r = Y − f_L(X) (r ≠ 0 when the network does
   not interpolate its training set), and the Schur complements
   u_j = Θ(x'_j, x'_j) + λ − ‖W_U[:, j]‖² (Eq. 12's u, guarded: u ≥ ``u_floor`` · κ_j).
4. For each candidate (``jax.vmap`` over a chunk, ``lax.map`` over chunks), with the
   column a_j = (W_Eᵀ W_U − Θ(E, U))[:, j] (Eq. 12's Θ(x, X) v − Θ(x, x'); computed and
   stored candidate-major, as rows of Aᵀ = W_Uᵀ W_E − Θ(U, E), so that a candidate's
   reduction over E reads contiguous memory) and
   c_j = u_j⁻¹ (f^lin_L(x'_j) − y'_j) (Eq. 12's (vᵀ r − r') / u):

       f^lin_{L+}(x_i) = f^lin_L(x_i) + a_ij c_j                         (Eq. 11/12)

   and the scores
     * ``mlmoc``: Σ_i ‖f_L(x_i) − f^lin_{L+}(x_i)‖₂ with y' = onehot(argmax f_L(x'))
       (Eq. 13); for scalar kernels evaluated as Σ_i √(‖b_i‖² + 2 a_ij b_i·c_j +
       a_ij² ‖c_j‖²), b = f^lin_L − f_L, so no E × C tensor per candidate is formed;
     * ``emoc``: E_{y ~ softmax(f_L(x'))} of the same sum (Eq. 3);
     * ``eer``: −E_y Σ_i H(softmax(f^lin_{L+}(x_i))) (Eq. 2);
     * ``label_flip``: the fraction of evaluation points whose argmax changes under the
       pseudo-label y'. This is what the authors' released code actually scored (it
       counted prediction flips instead of summing output distances as Eq. 13 states);
       its scores are ties-heavy integers / |E|, so ``top_k``'s lower-index tie-break
       decides many picks.

Kernel modes (the strategies' ``kernel`` option): ``"first_logit"`` (default, the paper's
single-logit kernel, used as Θ ⊗ I_C), ``"sum_logits"``, ``"trace"`` (scalar kernels, block size B = 1,
targets are n × C) and ``"full"`` ((n, n, C, C), treated as one (n·C) × (n·C) kernel:
B = C, targets n·C × 1, every Schur complement is a C × C block, clamped by eigenvalue).
Internally every kernel is stored flattened as (n·B) × (m·B) with row index i·B + b.

Sequential mode (the paper's "sequential query strategy", docs/ALGEBRA.md §5): the
top candidate s is picked, its true label revealed, and the system grows by one point
with no new kernel evaluations (all of Θ among L ∪ U is already there):
  * Lc gains a row: l = Lc⁻¹ Θ(X, s), d = chol(κ_s + λ − lᵀl), O(n²B²);
  * the stored matrix A = Θ(E, X) K⁻¹ Θ(X, U) − Θ(E, U) (M − Θ in docs/ALGEBRA.md A10;
    Θ is constant, so A changes exactly as M does) gains the rank-B term
    A ← A + w_E S⁻¹ w_Uᵀ with w = Θ(·, s) − Θ(·, X) K⁻¹ Θ(X, s) = −A[:, s] and
    S = u_s = d² (B = 1: w wᵀ / d²): O(E·U·B²);
  * the linearised predictions on U and E update by the same rank-one form with the true
    label (f^lin ← f^lin − w c_s);
  * every remaining candidate is re-scored: O(E·U·C) (O(E·U) for MLMOC, below).
  The U × U update runs in place (the state is donated to a second jitted call, after
  the step's vectors are read in a first one). Measured on 2 shared CPU cores
  (benchmarks/lookahead_bench.py): one step at L = 1000, U = 4000 ≈ 13 ms, ≈ 45×
  faster than refactorising and re-scoring from scratch.
  Predictions between steps are the linearised model's. Scores at step 0 use the
  network f_L as the reference (exactly the batch scores, Eq. 13 with the r-term); from
  step 1 on the reference "current model" is the linearised f^lin_{L ∪ S}, so the MLMOC
  score is Σ_i ‖a_ij c_j‖ = ‖c_j‖ Σ_i |a_ij| (B = 1). Picked candidates leave the
  evaluation sum when E = U (U_{t+1} = U_t \\ {x*}).

Fixed shapes: L-dependent buffers are padded to a capacity N (the run's labeled capacity,
at least L + query_size in sequential mode) with the real L a traced scalar: padded
kernel rows/columns 0, padded diagonal 1, padded residual 0, which leaves every solution
unchanged. The padding happens inside the jitted :func:`build_system`, so kernels never
make a device → host → device round trip. U is padded to a
multiple of the chunk size (padded candidates: kernel 0, κ = 1, never available, never
evaluated). Every jitted function sees the same shapes in every cycle, so it compiles
once per run.

Cost per cycle (beyond the kernels): Cholesky (NB)³/3, W: (NB)²(U + E)B, scores:
E·U·N·B² (the W_Eᵀ W_U products, chunk by chunk) + E·U·C (MLMOC), ×C for EMOC/EER.
Sequential step: O(n²B² + E·U·B² + E·U·C).

Peak memory (float32 words, batch mode): the kernels Θ(U, U) U²B² (+ Θ(E, U) E·U·B²
when E ≠ U), Θ(U, X) and W_U: 2·U·N·B² each, plus one chunk's E·k·B² column block of
A and E·k·C look-ahead outputs (E·k·C per label, looped, for EMOC/EER), k = chunk size.
No U × U × C (or E × U × C) tensor is ever formed. Sequential mode adds Aᵀ (E·U·B²; and
A_UU when E ≠ U). :func:`streaming_scores` never stores Θ(E, U): it asks for one
k × E row block of Θ(U, E) at a time (the 60k-pool path), peak O(E·k·(B² + C) + (U+E)·N·B²).

Loss: Eq. 11-12 are the squared-loss (kernel regression) solution; for a network trained
with cross-entropy the same formulas are an approximation on one-hot targets.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jax.scipy.linalg import solve_triangular

from lookahead_jax import precision as _precision
from lookahead_jax.numerics import entropy

Array = jax.Array
PyTree = Any

KINDS = ("mlmoc", "emoc", "eer", "label_flip")
KERNELS = ("first_logit", "sum_logits", "trace", "full")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static layout of one look-ahead system (hashable: a jit static argument).

    Attributes:
      block: B, kernel block size (1 for scalar kernels, C for ``"full"``).
      q: Q = C / B, target columns per block row.
      num_classes: C.
      chunk: candidates scored per vmapped chunk (U is padded to a multiple of it).
      eval_is_cand: E = U (the paper's default).
      u_floor: Schur complements are clamped below at ``u_floor`` · κ (relative).
      precision: ``jax.lax.Precision`` of every matmul of the algebra
        (:mod:`lookahead_jax.precision`, the policy's ``algebra``).
    """

    block: int
    q: int
    num_classes: int
    chunk: int
    eval_is_cand: bool
    u_floor: float
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST


class LookaheadState(NamedTuple):
    """Padded kernel system of one cycle (a pytree; every field has a fixed shape).

    N: labeled capacity, U: padded candidate count, E: evaluation points (E = U and the
    ``*_e`` fields ``None`` when ``spec.eval_is_cand``), B: block size, Q = C / B. Kernel
    matrices are flattened (rows i·B + b). A is stored candidate-major (Aᵀ: one row block
    per candidate), so a candidate's score reduces a contiguous row.
    """

    chol: Array            # (N·B, N·B) lower Cholesky factor of Θ(X,X) + λI (padding: I)
    k_ll: Array            # (N·B, N·B) Θ(X, X) without jitter (padding: I)
    k_ul: Array            # (U·B, N·B) Θ(U, X) (padded columns 0)
    resid: Array           # (N·B, Q) r = Y − f_L(X) (padding 0)
    n: Array               # () int32, number of labeled points in the buffers
    f_u: Array             # (U·B, Q) network outputs f_L(x') on candidates
    lin_u: Array           # (U·B, Q) linearised predictions f^lin on candidates
    ref_u: Array           # (U·B, Q) reference predictions (pseudo-labels, probabilities)
    kappa: Array           # (U, B, B) Θ(x', x') (padding: I)
    schur: Array           # (U, B, B) u = κ + λ − Θ(x',X) K⁻¹ Θ(X,x') (unclamped)
    available: Array       # (U,) bool, may still be picked
    mask_e: Array          # (E,) float, evaluation weights (0 for padding / picked)
    lam: Array             # () ridge jitter λ (absolute)
    w_u: Optional[Array]   # (N·B, U·B) Lc⁻¹ Θ(X, U)        [batch mode]
    k_uu: Optional[Array]  # (U·B, U·B) Θ(U, U) (symmetric)  [None when streaming]
    a_uu: Optional[Array]  # (U·B, U·B) Θ(U,X)K⁻¹Θ(X,U) − Θ(U,U) (symmetric) [sequential]
    lin_e: Optional[Array] = None   # (E·B, Q)
    ref_e: Optional[Array] = None   # (E·B, Q)
    w_e: Optional[Array] = None     # (N·B, E·B)  [batch mode]
    k_ue: Optional[Array] = None    # (U·B, E·B) Θ(U, E)
    a_ue: Optional[Array] = None    # (U·B, E·B) Aᵀ = Θ(U,X)K⁻¹Θ(X,E) − Θ(U,E) [sequential]


# ----------------------------------------------------------------------------- layout


def _mm(a: Array, b: Array, precision) -> Array:
    """``a @ b`` at the policy's ``precision`` (every matmul of the algebra goes here)."""
    return jnp.matmul(a, b, precision=precision)


def _block_size(k) -> int:
    return 1 if k.ndim == 2 else int(k.shape[-1])


def flatten_kernel(k):
    """``(n1, n2)`` or ``(n1, n2, B, B)`` → ``(n1·B, n2·B)`` (row index i·B + b).

    Works on NumPy and JAX arrays alike (no host round trip for device arrays).
    """
    if k.ndim == 2:
        return k
    n1, n2, b, b2 = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n1 * b, n2 * b2)


def _diag_blocks(k: Array, b: int) -> Array:
    """Diagonal B × B blocks of a flattened square kernel: ``(n, B, B)``."""
    n = k.shape[0] // b
    idx = jnp.arange(n)
    return k.reshape(n, b, n, b)[idx, :, idx, :]


def _pad2(a: Array, rows: int, cols: int) -> Array:
    """``a`` zero-padded to ``(rows, cols)`` (no-op when it already has that shape)."""
    if a.shape == (rows, cols):
        return a
    return jnp.zeros((rows, cols), a.dtype).at[:a.shape[0], :a.shape[1]].set(a)


def to_device(x, dtype) -> Array:
    """``x`` as a device array of ``dtype``, with no implicit transfer.

    A JAX array (or tracer) is cast on the device; a host value (Python or NumPy number,
    NumPy array) is sent with one explicit ``jax.device_put``, which
    ``jax.transfer_guard("disallow")`` allows (an implicit ``jnp.asarray`` of it is not).
    """
    if isinstance(x, jax.Array):
        return x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype))


# ----------------------------------------------------------------------------- build


def chunk_layout(num_candidates: int, chunk_size: int) -> tuple[int, int]:
    """``(chunk, U_pad)``: the fewest chunks of at most ``chunk_size``, as even as possible.

    U_pad − U < #chunks (U = 4000, chunk_size 256 → 16 chunks of 250: no padding).
    """
    n_chunks = -(-int(num_candidates) // int(chunk_size))
    chunk = -(-int(num_candidates) // n_chunks)
    return chunk, n_chunks * chunk


def build_system(k_ll, k_ul, y_l, f_l, f_u, *, num_classes: int, k_uu=None,
                 kappa=None, k_el=None, k_eu=None, f_e=None, num_labeled=None,
                 capacity: Optional[int] = None, jitter: float = 1e-5,
                 u_floor: float = 1e-6, chunk_size: int = 256,
                 sequential: bool = False, precision=None
                 ) -> tuple[LookaheadState, Spec, dict]:
    """Pads the kernels of one cycle and factors Θ(X, X) (batch or sequential mode).

    Everything runs in one jitted device computation (padding included); nothing comes
    back to the host. Labeled-side inputs may already be padded to the capacity N with
    ``num_labeled`` the real count L (rows ≥ L are then ignored, whatever they hold):
    that is how the strategies call it, so a growing labeled set keeps one compiled
    shape. Unpadded inputs (L = their length) are padded here, compiling once per L.

    Args:
      k_ll: Θ(X, X), ``(L, L)`` or ``(L, L, C, C)`` (``"full"``).
      k_ul: Θ(U, X), ``(U, L[, C, C])``.
      y_l: ``(L,)`` int labels of X.
      f_l: ``(L, C)`` network outputs f_L(X); f_u: ``(U, C)`` on the candidates.
      num_classes: C.
      k_uu: Θ(U, U), ``(U, U[, C, C])``; ``None`` for :func:`streaming_scores` (then
        ``kappa`` = its diagonal, ``(U,)`` or ``(U, C, C)``, is required).
      k_el, k_eu, f_e: Θ(E, X), Θ(E, U) and f_L(E) for a separate evaluation set
        (all ``None``: E = U). ``k_eu`` may be ``None`` when streaming.
      num_labeled: the real L when the labeled side is padded (``()`` int, may be traced);
        default: all rows are real.
      capacity: labeled capacity N (≥ the labeled side's length; ≥ L + queries in
        sequential mode).
      jitter: relative ridge λ / mean diag Θ(X, X) (0 allowed).
      u_floor: Schur complements are clamped at ``u_floor`` · κ.
      chunk_size: candidates per chunk; U is padded to a multiple.
      sequential: also form A = W_Eᵀ W_U − Θ(E, U) (needed by :func:`add_labeled`).
      precision: the matmul precision of every later call on this system (kept in
        ``spec``): a ``jax.lax.Precision``, a :class:`~lookahead_jax.precision.PrecisionPolicy`
        or preset name (its ``algebra``), or ``None`` for the library's policy now.

    Returns:
      ``(state, spec, info)``; info holds ``jitter`` (relative), ``capacity``, ``block``,
      ``u_floor`` (host values); the absolute ridge λ is ``state.lam`` (on device).
    """
    b = _block_size(k_ll)
    c = int(num_classes)
    if c % b:
        raise ValueError(f"block size {b} does not divide num_classes {c}")
    rows = int(k_ll.shape[0])
    U = int(k_ul.shape[0])
    N = max(int(capacity or 0), rows)
    chunk, Up = chunk_layout(U, chunk_size)
    spec = Spec(block=b, q=c // b, num_classes=c, chunk=chunk, eval_is_cand=k_el is None,
                u_floor=float(u_floor),
                precision=_precision.resolve(precision, "algebra"))
    n = to_device(rows if num_labeled is None else num_labeled, jnp.int32)
    state = _build(spec, N, Up, bool(sequential), k_ll, k_ul, y_l, f_l, f_u, n,
                   to_device(jitter, jnp.result_type(float)), k_uu, kappa, k_el, k_eu, f_e)
    info = {"jitter": float(jitter), "capacity": N, "block": b, "u_floor": float(u_floor)}
    return state, spec, info


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _build(spec: Spec, N: int, Up: int, sequential: bool, k_ll, k_ul, y_l, f_l, f_u, n,
           jitter, k_uu, kappa, k_el, k_eu, f_e) -> LookaheadState:
    """Flatten, pad to (N, U_pad), mask the labeled padding, then :func:`_factor`.

    Padding leaves every solution unchanged: padded labeled rows/columns of Θ(X, X) are
    those of the identity, of Θ(U, X) zero, padded residuals zero; padded candidates have
    κ = 1, are never available and never evaluated.
    """
    b, q = spec.block, spec.q
    dt = jnp.result_type(k_ul)
    U = k_ul.shape[0]
    real = jnp.repeat(jnp.arange(N) < n, b)                            # (N·B,)
    kll = _pad2(flatten_kernel(k_ll).astype(dt), N * b, N * b)
    kll = jnp.where(real[:, None] & real[None, :], kll, jnp.eye(N * b, dtype=dt))
    kul = jnp.where(real[None, :], _pad2(flatten_kernel(k_ul).astype(dt), Up * b, N * b), 0)
    onehot = jax.nn.one_hot(y_l, spec.num_classes, dtype=dt)
    resid = (onehot - f_l.astype(dt)).reshape(-1, q)
    resid = jnp.where(real[:, None], _pad2(resid, N * b, q), 0)
    fu = _pad2(f_u.astype(dt).reshape(U * b, q), Up * b, q)
    cand = jnp.arange(Up) < U
    if k_uu is not None:
        kuu = _pad2(flatten_kernel(k_uu).astype(dt), Up * b, Up * b)
        pad_c = ~jnp.repeat(cand, b)
        kuu = jnp.where(pad_c[:, None] | pad_c[None, :], jnp.eye(Up * b, dtype=dt), kuu)
        kap = _diag_blocks(kuu, b)
    else:
        kuu = None
        kap = jnp.asarray(kappa, dt).reshape(U, b, b)
        kap = jnp.concatenate([kap, jnp.broadcast_to(jnp.eye(b, dtype=dt), (Up - U, b, b))])
    diag = jnp.where(real, jnp.diagonal(kll), 0)
    lam = jitter.astype(dt) * jnp.sum(diag) / jnp.maximum(jnp.sum(real), 1)
    if spec.eval_is_cand:
        mask_e = cand.astype(dt)
        kel = fe = keu = None
    else:
        E = k_el.shape[0]
        mask_e = jnp.ones(E, dt)
        kel = jnp.where(real[None, :], _pad2(flatten_kernel(k_el).astype(dt), E * b, N * b), 0)
        fe = f_e.astype(dt).reshape(E * b, q)
        keu = None if k_eu is None else _pad2(flatten_kernel(k_eu).astype(dt).T, Up * b, E * b)
    return _factor(spec, kll, kul, resid, n, fu, kap, cand, mask_e, lam, kuu, kel, fe, keu,
                   sequential)


def _factor(spec, kll, kul, resid, n, fu, kap, avail, mask_e, lam, kuu, kel, fe, keu,
            sequential):
    """Cholesky, W, linearised predictions and Schur complements (Eq. 10-12)."""
    b, p = spec.block, spec.precision
    nb = kll.shape[0]
    real = (jnp.arange(nb) < n * b).astype(kll.dtype)
    chol = jnp.linalg.cholesky(kll + jnp.diag(lam * real))
    z = solve_triangular(chol, resid, lower=True)                  # Lc⁻¹ r   (N·B, Q)
    w_u = solve_triangular(chol, kul.T, lower=True)                # (N·B, U·B)
    lin_u = fu + _mm(w_u.T, z, p)                                  # f + Θ(U,X) K⁻¹ r
    wsq = w_u.reshape(nb, -1, b)
    schur = kap + lam * jnp.eye(b, dtype=kll.dtype)[None] - jnp.einsum(
        "kia,kib->iab", wsq, wsq, precision=p)
    if spec.eval_is_cand:
        w_e = lin_e = ref_e = None
    else:
        w_e = solve_triangular(chol, kel.T, lower=True)
        lin_e = fe + _mm(w_e.T, z, p)
        ref_e = fe
    a_uu = a_ue = None
    if sequential:
        a_uu = _mm(w_u.T, w_u, p) - kuu
        if not spec.eval_is_cand:
            a_ue = _mm(w_u.T, w_e, p) - keu
        w_u = w_e = None
    return LookaheadState(chol=chol, k_ll=kll, k_ul=kul, resid=resid, n=n, f_u=fu,
                          lin_u=lin_u, ref_u=fu, kappa=kap, schur=schur,
                          available=avail, mask_e=mask_e, lam=lam,
                          w_u=w_u, k_uu=kuu, a_uu=a_uu, lin_e=lin_e, ref_e=ref_e, w_e=w_e,
                          k_ue=keu, a_ue=a_ue)


# ----------------------------------------------------------------------------- one candidate


def _schur_inverse(u: Array, kappa: Array, floor: float, precision):
    """Clamped inverse of one Schur complement: u ``(B, B)`` → (u⁻¹, clamped?).

    B = 1: u ← max(u, floor·κ). B > 1: eigenvalues clamped at floor·tr(κ)/B.
    """
    b = u.shape[0]
    if b == 1:
        lo = floor * kappa[0, 0]
        return (1.0 / jnp.maximum(u, lo)), u[0, 0] < lo
    sym = 0.5 * (u + u.T)
    ev, vec = jnp.linalg.eigh(sym)
    lo = floor * jnp.trace(kappa) / b
    return _mm(vec / jnp.maximum(ev, lo)[None, :], vec.T, precision), jnp.any(ev < lo)


def _one_hot_block(y: Array, spec: Spec) -> Array:
    return jax.nn.one_hot(y, spec.num_classes, dtype=jnp.float32).reshape(spec.block, spec.q)


def _outputs(a_row, u_inv, lin_c, y_block, lin_e, precision):
    """f^lin_{L+} on E for one candidate and one label (Eq. 12): ``(E·B, Q)``.

    a_row ``(B, E·B)``: the candidate's row block of Aᵀ, i.e. (Θ(E,X) K⁻¹ Θ(X,x') −
    Θ(E,x'))ᵀ; u_inv ``(B, B)``; lin_c, y_block ``(B, Q)``; lin_e ``(E·B, Q)``.
    """
    c = _mm(u_inv, lin_c - y_block.astype(lin_c.dtype), precision)   # (vᵀr − r') / u
    return lin_e + _mm(a_row.T, c, precision)


def _candidate_score(kind: str, spec: Spec, ref_is_lin: bool, a_row, u_inv, lin_c, ref_c,
                     lin_e, ref_e, mask_e):
    """Score of ONE candidate (vmapped over a chunk by :func:`_chunk_scores`).

    Args:
      a_row: ``(B, E·B)`` its row block of Aᵀ.  u_inv: ``(B, B)``.
      lin_c, ref_c: ``(B, Q)`` its linearised / reference outputs.
      lin_e, ref_e: ``(E·B, Q)``; mask_e: ``(E,)``.
    """
    C = spec.num_classes
    E = mask_e.shape[0]
    ref_flat = ref_c.reshape(C)
    y_hat = jnp.argmax(ref_flat)

    def change(y):
        new = _outputs(a_row, u_inv, lin_c, _one_hot_block(y, spec), lin_e, spec.precision)
        return new.reshape(E, C)

    if kind == "mlmoc" and spec.block == 1:
        # ‖b_i + a_ij c_j‖ with b = f^lin − f_ref, expanded so no E × C tensor is formed:
        # √(‖b_i‖² + 2 a_ij (b_i·c_j) + a_ij² ‖c_j‖²); b = 0 from sequential step 1 on.
        c = (u_inv[0, 0] * (lin_c - _one_hot_block(y_hat, spec)))[0]        # (C,)
        a = a_row[0]
        if ref_is_lin:
            return jnp.linalg.norm(c) * jnp.sum(mask_e * jnp.abs(a))
        off = lin_e - ref_e                                                 # (E, C)
        sq = (jnp.sum(off * off, -1) + 2.0 * a * _mm(off, c, spec.precision)
              + a * a * jnp.sum(c * c))
        return jnp.sum(mask_e * jnp.sqrt(jnp.maximum(sq, 0.0)))
    if kind == "mlmoc":
        d = change(y_hat) - ref_e.reshape(E, C)
        return jnp.sum(mask_e * jnp.linalg.norm(d, axis=-1))
    if kind == "label_flip":
        before = jnp.argmax(ref_e.reshape(E, C), -1)
        after = jnp.argmax(change(y_hat), -1)
        return jnp.sum(mask_e * (after != before)) / jnp.maximum(jnp.sum(mask_e), 1.0)
    probs = jax.nn.softmax(ref_flat)

    def per_label(y):
        new = change(y)
        if kind == "emoc":
            return jnp.sum(mask_e * jnp.linalg.norm(new - ref_e.reshape(E, C), axis=-1))
        return -jnp.sum(mask_e * entropy(jax.nn.softmax(new, axis=-1)))     # eer

    vals = jax.lax.map(per_label, jnp.arange(C))
    return jnp.sum(probs * vals)


def _chunk_scores(kind, spec, ref_is_lin, a_rows, start, st: LookaheadState):
    """Scores of candidates ``start : start + k`` from their rows of Aᵀ ``(k·B, E·B)``.

    Returns ``(scores (k,), clamped (k,) bool)``; unavailable candidates score −inf.
    """
    b, q, k = spec.block, spec.q, spec.chunk
    sl = lambda x, m: jax.lax.dynamic_slice_in_dim(x, start * m, k * m, axis=0)
    lin_c = sl(st.lin_u, b).reshape(k, b, q)
    ref_c = sl(st.ref_u, b).reshape(k, b, q)
    u_inv, clamped = jax.vmap(functools.partial(_schur_inverse, precision=spec.precision),
                              in_axes=(0, 0, None))(
        sl(st.schur, 1), sl(st.kappa, 1), spec.u_floor)
    lin_e = st.lin_u if spec.eval_is_cand else st.lin_e
    ref_e = st.ref_u if spec.eval_is_cand else st.ref_e
    score = functools.partial(_candidate_score, kind, spec, ref_is_lin)
    # in_axes: per-candidate rows of Aᵀ, u⁻¹, lin, ref (axis 0); E-sized arrays shared.
    s = jax.vmap(score, in_axes=(0, 0, 0, 0, None, None, None))(
        a_rows.reshape(k, b, a_rows.shape[1]), u_inv, lin_c, ref_c, lin_e, ref_e, st.mask_e)
    avail = sl(st.available, 1)
    return jnp.where(avail, s, -jnp.inf), clamped & avail


def _map_chunks(fn, num_chunks):
    s, c = jax.lax.map(fn, jnp.arange(num_chunks))
    return s.reshape(-1), jnp.sum(c)


@functools.partial(jax.jit, static_argnames=("kind", "spec"))
def _batch_scores(kind: str, spec: Spec, st: LookaheadState):
    """All candidates, batch mode: Aᵀ rows = W_U[:, chunk]ᵀ W_E − Θ(chunk, E)."""
    b, k = spec.block, spec.chunk
    w_e = st.w_u if spec.eval_is_cand else st.w_e
    k_ue = st.k_uu if spec.eval_is_cand else st.k_ue

    def one(i):
        start = i * k
        w_c = jax.lax.dynamic_slice_in_dim(st.w_u, start * b, k * b, axis=1)
        k_c = jax.lax.dynamic_slice_in_dim(k_ue, start * b, k * b, axis=0)
        return _chunk_scores(kind, spec, False, _mm(w_c.T, w_e, spec.precision) - k_c,
                             start, st)

    return _map_chunks(one, st.kappa.shape[0] // k)


@functools.partial(jax.jit, static_argnames=("kind", "spec", "ref_is_lin"))
def _sequential_scores(kind: str, spec: Spec, ref_is_lin: bool, st: LookaheadState):
    """All candidates from the stored Aᵀ (sequential mode)."""
    b, k = spec.block, spec.chunk
    a = st.a_uu if spec.eval_is_cand else st.a_ue
    if kind == "mlmoc" and b == 1 and ref_is_lin:
        # One pass over Aᵀ: ‖c_j‖ Σ_i mask_i |a_ij| (no chunking needed: O(U) output).
        u_inv, clamped = jax.vmap(functools.partial(_schur_inverse, precision=spec.precision),
                              in_axes=(0, 0, None))(
            st.schur, st.kappa, spec.u_floor)
        y = jax.nn.one_hot(jnp.argmax(st.ref_u, -1), spec.num_classes, dtype=a.dtype)
        cn = u_inv[:, 0, 0] * jnp.linalg.norm(st.lin_u - y, axis=-1)
        s = cn * jnp.sum(jnp.abs(a) * st.mask_e[None, :], axis=1)
        return jnp.where(st.available, s, -jnp.inf), jnp.sum(clamped & st.available)

    def one(i):
        start = i * k
        return _chunk_scores(kind, spec, ref_is_lin,
                             jax.lax.dynamic_slice_in_dim(a, start * b, k * b, axis=0),
                             start, st)

    return _map_chunks(one, st.kappa.shape[0] // k)


@functools.partial(jax.jit, static_argnames=("kind", "spec"))
def _streaming_chunk(kind: str, spec: Spec, st: LookaheadState, start, k_ue_rows):
    """Scores of the chunk at ``start`` from its rows Θ(chunk, E) (padded here when short).

    Returns ``(scores (k,), () number clamped)``.
    """
    w_e = st.w_u if spec.eval_is_cand else st.w_e
    rows = _pad2(flatten_kernel(k_ue_rows), spec.chunk * spec.block, w_e.shape[1])
    w_c = jax.lax.dynamic_slice_in_dim(st.w_u, start * spec.block, spec.chunk * spec.block,
                                       axis=1)
    s, c = _chunk_scores(kind, spec, False, _mm(w_c.T, w_e, spec.precision) - rows,
                         start, st)
    return s, jnp.sum(c)


def score_candidates(kind: str, spec: Spec, state: LookaheadState, *,
                     ref_is_lin: bool = False) -> tuple[Array, Array]:
    """Scores of every (padded) candidate: ``((U_pad,) scores, () number clamped)``.

    Batch mode uses W; sequential mode (``state.a_uu`` set) the stored Aᵀ.
    ``ref_is_lin`` (sequential steps ≥ 1): the reference model is f^lin, not f_L.
    Unavailable (picked or padded) candidates score −inf.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown look-ahead score {kind!r}; known: {KINDS}")
    if state.a_uu is not None:
        return _sequential_scores(kind, spec, bool(ref_is_lin), state)
    return _batch_scores(kind, spec, state)


def streaming_scores(kind: str, spec: Spec, state: LookaheadState,
                     row_block: Callable[[int, int], Array], *,
                     num_chunks: Optional[int] = None,
                     progress: Optional[bool] = None) -> tuple[Array, Array]:
    """Batch scores without Θ(U, E) in memory (the whole-pool path), on device.

    Args:
      row_block: ``row_block(start, stop)`` returns Θ(U[start:stop], E) as ``(k, E)`` /
        ``(k, E, B, B)``, computed on demand (e.g. from NTK features); ``stop`` may pass
        the real U (the block is then shorter and is padded here).
      num_chunks: score only the first ``num_chunks`` chunks (timing a fraction).
      progress: a tqdm bar over the row blocks (``None``: shown when stderr is a
        terminal and there are at least 8 blocks). The bar waits for block i − 1 when
        block i is queued, so it follows the device without emptying its queue.
    Returns ``((U_pad,) scores, () number clamped)`` as device arrays (fewer scores with
    ``num_chunks``). Peak memory: one k × E block (plus the state). Nothing comes to the
    host; each chunk's offset goes to the device explicitly (what ``row_block`` does is
    its own affair: the NTK engine's row blocks are eager calls).
    """
    k = spec.chunk
    U = int(state.kappa.shape[0])
    starts = range(0, U if num_chunks is None else num_chunks * k, k)
    show = (len(starts) >= 8 and sys.stderr.isatty()) if progress is None else progress
    bar = tqdm.tqdm(total=len(starts), desc=f"{kind} row blocks of {k}", unit="block",
                    leave=False, disable=not show)
    out, clamped = [], None
    for start in starts:
        s, c = _streaming_chunk(kind, spec, state, to_device(start, jnp.int32),
                                jnp.asarray(row_block(start, start + k)))
        out.append(s)
        clamped = c if clamped is None else clamped + c
        if show and len(out) >= 2:
            out[-2].block_until_ready()
            bar.update(1)
    if show and out:
        out[-1].block_until_ready()
        bar.update(1)
    bar.close()
    return jnp.concatenate(out), clamped


# ----------------------------------------------------------------------------- sequential


class _StepVectors(NamedTuple):
    """What one sequential step reads from the state before writing it (small arrays)."""

    row: Array            # (B, N·B) new Cholesky block row [lᵀ, d]
    krow: Array           # (B, N·B) new row of Θ(X, X): [Θ(s, X), κ_s]
    k_us: Array           # (U·B, B) Θ(U, s)
    resid: Array          # (B, Q) y_s − f_L(s)
    w_u: Array            # (U·B, B) w on the candidates
    ws: Array             # (U·B, B) w_U S⁻¹
    c_s: Array            # (B, Q) S⁻¹ (f^lin(s) − y_s)
    w_e: Optional[Array]  # (E·B, B) w on the evaluation set (None when E = U)


@functools.partial(jax.jit, static_argnames=("spec",))
def _step_vectors(spec: Spec, state: LookaheadState, j, label) -> _StepVectors:
    b, p = spec.block, spec.precision
    n = state.n
    dt = state.chol.dtype
    eye = jnp.eye(b, dtype=dt)
    # Cholesky: new block row at n: l = Lc⁻¹ Θ(X, s), d = chol(κ + λ − lᵀl).
    k_sx = jax.lax.dynamic_slice_in_dim(state.k_ul, j * b, b, axis=0)       # Θ(s, X) (B, N·B)
    kap = jax.lax.dynamic_index_in_dim(state.kappa, j, keepdims=False)       # (B, B)
    l = solve_triangular(state.chol, k_sx.T, lower=True)                     # (N·B, B)
    s_mat = kap + state.lam * eye - _mm(l.T, l, p)                          # Schur (B, B)
    s_inv, _ = _schur_inverse(s_mat, kap, spec.u_floor, p)
    if b == 1:
        d = jnp.sqrt(jnp.maximum(s_mat, spec.u_floor * kap))
    else:
        d = jnp.linalg.cholesky(jnp.linalg.inv(s_inv))
    nb = state.chol.shape[0]
    cols = jnp.arange(nb)
    in_block = ((cols >= n * b) & (cols < (n + 1) * b))[None, :]
    row = jnp.where(in_block, jnp.tile(d, (1, nb // b)), l.T)
    krow = jnp.where(in_block, jnp.tile(kap, (1, nb // b)), k_sx)
    # Θ(U, s): Θ(U, U) is symmetric, read its row block.
    k_us = jax.lax.dynamic_slice_in_dim(state.k_uu, j * b, b, axis=0).T      # (U·B, B)
    y_blk = _one_hot_block(label, spec).astype(dt, copy=False)
    f_s = jax.lax.dynamic_slice_in_dim(state.f_u, j * b, b, axis=0)
    # w = Θ(·, s) − Θ(·, X) K⁻¹ Θ(X, s) = −A[:, s] (a row block of Aᵀ).
    w_u = -jax.lax.dynamic_slice_in_dim(state.a_uu, j * b, b, axis=0).T      # (U·B, B)
    lin_s = jax.lax.dynamic_slice_in_dim(state.lin_u, j * b, b, axis=0)
    w_e = None
    if not spec.eval_is_cand:
        w_e = -jax.lax.dynamic_slice_in_dim(state.a_ue, j * b, b, axis=0).T   # (E·B, B)
    return _StepVectors(row=row, krow=krow, k_us=k_us, resid=y_blk - f_s, w_u=w_u,
                        ws=_mm(w_u, s_inv, p), c_s=_mm(s_inv, lin_s - y_blk, p), w_e=w_e)


def _outer_add(a, left, right):
    """``a + left @ right.T`` for thin ``left, right`` ``(m, B)``, as B broadcast outer
    products (XLA:CPU runs a K = 1 dot far slower than the elementwise form)."""
    for i in range(left.shape[1]):
        a = a + left[:, i, None] * right[None, :, i]
    return a


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def _apply_step(spec: Spec, state: LookaheadState, v: _StepVectors, j) -> LookaheadState:
    b, p = spec.block, spec.precision
    n = state.n
    chol = jax.lax.dynamic_update_slice_in_dim(state.chol, v.row, n * b, axis=0)
    k_ll = jax.lax.dynamic_update_slice_in_dim(state.k_ll, v.krow, n * b, axis=0)
    k_ll = jax.lax.dynamic_update_slice_in_dim(k_ll, v.krow.T, n * b, axis=1)
    k_ul = jax.lax.dynamic_update_slice_in_dim(state.k_ul, v.k_us, n * b, axis=1)
    resid = jax.lax.dynamic_update_slice_in_dim(state.resid, v.resid, n * b, axis=0)
    lin_u = state.lin_u - _mm(v.w_u, v.c_s, p)
    schur = state.schur - jnp.einsum("iab,icb->iac", v.ws.reshape(-1, b, b),
                                     v.w_u.reshape(-1, b, b), precision=p)
    upd = dict(chol=chol, k_ll=k_ll, k_ul=k_ul, resid=resid, n=n + 1,
               a_uu=_outer_add(state.a_uu, v.ws, v.w_u), lin_u=lin_u, ref_u=lin_u,
               schur=schur, available=state.available.at[j].set(False))
    if spec.eval_is_cand:
        upd["mask_e"] = state.mask_e.at[j].set(0.0)
    else:
        upd["a_ue"] = _outer_add(state.a_ue, v.ws, v.w_e)
        upd["lin_e"] = state.lin_e - _mm(v.w_e, v.c_s, p)
        upd["ref_e"] = upd["lin_e"]
    return state._replace(**upd)


def add_labeled(spec: Spec, state: LookaheadState, j, label) -> LookaheadState:
    """Adds candidate ``j`` with its TRUE ``label`` to the labeled system (sequential).

    Extends the Cholesky factor by one block row (l = Lc⁻¹ Θ(X, s), d = chol(κ + λ − lᵀl);
    O(N²B²), no refactorisation), adds w_U S⁻¹ w_Eᵀ to Aᵀ (rank B; docs/ALGEBRA.md A10:
    M⁺ = M + w wᵀ / d², w = −A[:, s]; O(E·U·B²)), the residuals, the linearised
    predictions on U and E (Eq. 12 with the true label), and marks j picked. No kernel
    entry is computed: Θ(·, s) is read from Θ(U, U).

    Two jitted calls: the vectors w, l, ... are read first, then the state is updated
    IN PLACE (``state`` is donated: do not reuse the argument). In one call XLA copies
    the U × U matrix A because the update reads its own row (≈ 10× slower on CPU).

    Args:
      spec: static layout; state: a sequential-mode state (``a_uu`` set).
      j: () int candidate position; label: () int class: device arrays (e.g. a pick made
        on the device), or host integers, which go to the device explicitly.
    """
    j, label = to_device(j, jnp.int32), to_device(label, jnp.int32)
    v = _step_vectors(spec, state, j, label)
    return _apply_step(spec, state, v, j)


def lookahead_outputs(spec: Spec, state: LookaheadState, labels: Optional[Array] = None
                      ) -> Array:
    """f^lin_{L+}(x_i) for every candidate j and evaluation point i (Eq. 12), for tests.

    Materialises ``(U, E, C)``: small problems only. ``labels`` ``(U,)`` (default: the
    pseudo-labels argmax of the reference predictions). Batch-mode states only.
    """
    b, q, C = spec.block, spec.q, spec.num_classes
    U = state.kappa.shape[0]
    w_e = state.w_u if spec.eval_is_cand else state.w_e
    k_ue = state.k_uu if spec.eval_is_cand else state.k_ue
    lin_e = state.lin_u if spec.eval_is_cand else state.lin_e
    a_t = (_mm(state.w_u.T, w_e, spec.precision) - k_ue).reshape(U, b, -1)
    if labels is None:
        labels = jnp.argmax(state.ref_u.reshape(U, C), -1)
    u_inv, _ = jax.vmap(functools.partial(_schur_inverse, precision=spec.precision),
        in_axes=(0, 0, None))(
        state.schur, state.kappa, spec.u_floor)
    out = jax.vmap(lambda ar, ui, lc, y: _outputs(ar, ui, lc, _one_hot_block(y, spec), lin_e,
                                                  spec.precision))(a_t, u_inv, state.lin_u.reshape(U, b, q), labels)
    return out.reshape(U, -1, C)


def augmented_system_scores(k_ll, k_ul, k_uu, f_l, y_l, f_u, lam, chunk: int = 256,
                            num_labeled=None, precision=None) -> Array:
    """MLMOC by solving every candidate's augmented (L+1)×(L+1) system: no Eq. 12.

    The paper's "NTK w/o Block" (Fig. 1a): the same kernels, but for each candidate x′
    the system [[K + λI, k], [kᵀ, κ + λ]] α = [r; y′ − f(x′)] is solved from scratch
    (O(L³) per candidate instead of Eq. 12's O(L·E)). Scalar kernels, E = U.

    Args:
      k_ll: ``(L, L)``; k_ul: ``(U, L)``; k_uu: ``(U, U)`` Θ blocks.
      f_l: ``(L, C)``, f_u: ``(U, C)`` network outputs; y_l: ``(L,)`` labels.
      lam: absolute ridge λ (as in :func:`build_system`).
      chunk: candidates solved per vmapped call.
      num_labeled: the real L when the labeled side is padded (rows ≥ it are replaced by
        identity rows with zero residuals, which leaves every solution unchanged).
      precision: as :func:`build_system`'s.

    Returns:
      ``(U,)`` Σ_x ‖f^lin_{L+}(x) − f_L(x)‖₂ over the candidates (Eq. 13), on device.
    """
    k_ll, k_ul, k_uu = (jnp.asarray(a) for a in (k_ll, k_ul, k_uu))
    f_l, f_u = jnp.asarray(f_l), jnp.asarray(f_u)
    L, C = f_l.shape
    U = k_uu.shape[0]
    n = L if num_labeled is None else num_labeled
    k_ll, k_ul, r = _mask_labeled(k_ll, k_ul, jnp.asarray(y_l), f_l, to_device(n, jnp.int32))
    yhat = jax.nn.one_hot(jnp.argmax(f_u, -1), C, dtype=f_u.dtype)
    p = _precision.resolve(precision, "algebra")
    return jnp.concatenate([_augmented_chunk(k_ll, k_ul, k_uu, r, yhat, f_u, lam,
                                             _positions(to_device(s, jnp.int32),
                                                        min(chunk, U - s)), p)
                            for s in range(0, U, chunk)])


@functools.partial(jax.jit, static_argnums=(1,))
def _positions(start, size: int):
    """``start, start + 1, ..., start + size − 1`` (int32), made on the device."""
    return start + jnp.arange(size, dtype=jnp.int32)


@jax.jit
def _mask_labeled(k_ll, k_ul, y_l, f_l, n):
    real = jnp.arange(k_ll.shape[0]) < n
    k_ll = jnp.where(real[:, None] & real[None, :], k_ll, jnp.eye(k_ll.shape[0], dtype=k_ll.dtype))
    r = jnp.where(real[:, None], jax.nn.one_hot(y_l, f_l.shape[1], dtype=f_l.dtype) - f_l, 0)
    return k_ll, jnp.where(real[None, :], k_ul, 0), r


@functools.partial(jax.jit, static_argnums=(8,))
def _augmented_chunk(k_ll, k_ul, k_uu, r, yhat, f_u, lam, js, precision):
    L = k_ll.shape[0]

    def one(j):
        kj = k_ul[j]
        kaug = jnp.block([[k_ll + lam * jnp.eye(L, dtype=k_ll.dtype), kj[:, None]],
                          [kj[None, :], (k_uu[j, j] + lam)[None, None]]])
        alpha = jnp.linalg.solve(kaug, jnp.concatenate([r, (yhat[j] - f_u[j])[None]]))
        change = _mm(k_ul, alpha[:L], precision) + k_uu[:, j][:, None] * alpha[L][None]
        return jnp.sum(jnp.linalg.norm(change, axis=-1))

    return jax.vmap(one)(js)
