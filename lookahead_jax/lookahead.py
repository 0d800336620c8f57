"""NTK look-ahead acquisition: MLMOC, EMOC, EER and label-flip (paper Section 3).

One cycle, from the trained network f_L (MATH.md, "All candidates at once"):

1. Kernels, once: Θ(X, X) (n × n), Θ(U, X) (U × n), Θ(U, U) (U × U) with the NTK engine
   (:func:`lookahead_jax.ntk.kernel_set`); optionally a separate evaluation set E
   (``options["eval_x"]``) with Θ(E, X), Θ(E, U). By default E = U, as in the paper.
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

Kernel modes (``options["kernel"]``): ``"first_logit"`` (default, the paper's single-logit
kernel, used as Θ ⊗ I_C), ``"sum_logits"``, ``"trace"`` (scalar kernels, block size B = 1,
targets are n × C) and ``"full"`` ((n, n, C, C), treated as one (n·C) × (n·C) kernel:
B = C, targets n·C × 1, every Schur complement is a C × C block, clamped by eigenvalue).
Internally every kernel is stored flattened as (n·B) × (m·B) with row index i·B + b.

Sequential mode (the paper's "sequential query strategy", MATH.md "Sequential mode"): the
top candidate s is picked, its true label revealed, and the system grows by one point
with no new kernel evaluations (all of Θ among L ∪ U is already there):
  * Lc gains a row: l = Lc⁻¹ Θ(X, s), d = chol(κ_s + λ − lᵀl), O(n²B²);
  * the stored matrix A = Θ(E, X) K⁻¹ Θ(X, U) − Θ(E, U) (M − Θ in MATH.md's notation;
    Θ is constant, so A changes exactly as M does) gains the rank-B term
    A ← A + w_E S⁻¹ w_Uᵀ with w = Θ(·, s) − Θ(·, X) K⁻¹ Θ(X, s) = −A[:, s] and
    S = u_s = d² (B = 1: w wᵀ / d²): O(E·U·B²);
  * the linearised predictions on U and E update by the same rank-one form with the true
    label (f^lin ← f^lin − w c_s);
  * every remaining candidate is re-scored: O(E·U·C) (O(E·U) for MLMOC, below).
  The U × U update runs in place (the state is donated to a second jitted call, after
  the step's vectors are read in a first one). Measured on 2 shared CPU cores
  (benchmarks/lookahead_bench.py): one step at L = 1000, U = 4000 ≈ 14 ms, ≈ 170×
  faster than refactorising and re-scoring from scratch.
  Predictions between steps are the linearised model's. Scores at step 0 use the
  network f_L as the reference (exactly the batch scores, Eq. 13 with the r-term); from
  step 1 on the reference "current model" is the linearised f^lin_{L ∪ S}, so the MLMOC
  score is Σ_i ‖a_ij c_j‖ = ‖c_j‖ Σ_i |a_ij| (B = 1). Picked candidates leave the
  evaluation sum when E = U (U_{t+1} = U_t \\ {x*}).

Fixed shapes: L-dependent buffers are padded to a capacity N (``ctx.labeled_capacity``,
at least L + query_size in sequential mode): padded kernel rows/columns 0, padded
diagonal 1, padded residual 0, which leaves every solution unchanged. U is padded to a
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

Loss: Eq. 11-12 are the squared-loss (kernel regression) solution; with ``ctx.loss ==
"ce"`` the same formulas are used as an approximation on one-hot targets.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from lookahead_jax.acquisition import (AcquisitionContext, Selection, predict_in_chunks,
                                       register_strategy, top_k)

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
    """

    block: int
    q: int
    num_classes: int
    chunk: int
    eval_is_cand: bool
    u_floor: float


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


def _block_size(k: np.ndarray) -> int:
    return 1 if k.ndim == 2 else int(k.shape[-1])


def flatten_kernel(k) -> np.ndarray:
    """``(n1, n2)`` or ``(n1, n2, B, B)`` → ``(n1·B, n2·B)`` (row index i·B + b)."""
    k = np.asarray(k)
    if k.ndim == 2:
        return k
    n1, n2, b, b2 = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n1 * b, n2 * b2)


def _diag_blocks(k: np.ndarray, b: int) -> np.ndarray:
    """Diagonal B × B blocks of a flattened square kernel: ``(n, B, B)``."""
    n = k.shape[0] // b
    return np.asarray(k).reshape(n, b, n, b)[np.arange(n), :, np.arange(n), :]


def _pad_to(a: np.ndarray, shape, eye_rows: int = 0, b: int = 1) -> np.ndarray:
    """Zero-pads ``a`` to ``shape``; puts ones on the diagonal from row ``eye_rows`` on.

    Returns ``a`` itself (no copy) when it already has ``shape``."""
    if tuple(a.shape) == tuple(shape):
        return a
    out = np.zeros(shape, a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    if eye_rows:
        idx = np.arange(eye_rows, min(shape))
        out[idx, idx] = 1
    return out


# ----------------------------------------------------------------------------- build


def build_system(k_ll, k_ul, y_l, f_l, f_u, *, num_classes: int, k_uu=None,
                 kappa=None, k_el=None, k_eu=None, f_e=None, capacity: Optional[int] = None,
                 jitter: float = 1e-5, u_floor: float = 1e-6, chunk_size: int = 256,
                 sequential: bool = False) -> tuple[LookaheadState, Spec, dict]:
    """Pads the kernels of one cycle and factors Θ(X, X) (batch or sequential mode).

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
      capacity: labeled capacity N (≥ L, and ≥ L + queries in sequential mode).
      jitter: relative ridge λ / mean diag Θ(X, X) (0 allowed).
      u_floor: Schur complements are clamped at ``u_floor`` · κ.
      chunk_size: candidates per chunk; U is padded to a multiple.
      sequential: also form A = W_Eᵀ W_U − Θ(E, U) (needed by :func:`add_labeled`).

    Returns:
      ``(state, spec, info)``; info holds ``jitter`` (relative), ``lambda`` (absolute),
      ``capacity``, ``block``.
    """
    k_ll = np.asarray(k_ll)
    b = _block_size(k_ll)
    c = int(num_classes)
    if c % b:
        raise ValueError(f"block size {b} does not divide num_classes {c}")
    q = c // b
    L = k_ll.shape[0]
    U = int(np.asarray(k_ul).shape[0])
    N = max(int(capacity or 0), L)
    # The fewest chunks of at most chunk_size, as even as possible: U_pad − U < #chunks
    # (U = 4000, chunk_size 256 → 16 chunks of 250, no padding copy of Θ(U, U)).
    n_chunks = -(-U // int(chunk_size))
    chunk = -(-U // n_chunks)
    Up = n_chunks * chunk
    dt = np.asarray(k_ul).dtype
    eval_is_cand = k_el is None
    spec = Spec(block=b, q=q, num_classes=c, chunk=chunk, eval_is_cand=eval_is_cand,
                u_floor=float(u_floor))

    kll = _pad_to(flatten_kernel(k_ll).astype(dt, copy=False), (N * b, N * b),
                  eye_rows=L * b)
    kul = _pad_to(flatten_kernel(k_ul).astype(dt, copy=False), (Up * b, N * b))
    onehot = np.eye(c, dtype=dt)[np.asarray(y_l)]
    resid = _pad_to((onehot - np.asarray(f_l, dt)).reshape(L * b, q), (N * b, q))
    fu = _pad_to(np.asarray(f_u, dt).reshape(U * b, q), (Up * b, q))
    if k_uu is not None:
        kuu = _pad_to(flatten_kernel(k_uu).astype(dt, copy=False), (Up * b, Up * b),
                      eye_rows=U * b)
        kap = _diag_blocks(kuu, b)
    else:
        kuu = None
        kap = np.asarray(kappa, dt).reshape(U, b, b)
        kap = np.concatenate([kap, np.broadcast_to(np.eye(b, dtype=dt), (Up - U, b, b))])
    mean_diag = float(np.mean(np.diagonal(flatten_kernel(k_ll)))) if L else 1.0
    lam = np.asarray(jitter * mean_diag, dt)
    avail = np.arange(Up) < U
    if eval_is_cand:
        mask_e = avail.astype(dt, copy=False)
        kel = fe = keu = None
    else:
        E = int(np.asarray(k_el).shape[0])
        mask_e = np.ones(E, dt)
        kel = flatten_kernel(k_el).astype(dt, copy=False)
        kel = _pad_to(kel, (E * b, N * b))
        fe = np.asarray(f_e, dt).reshape(E * b, q)
        keu = None if k_eu is None else _pad_to(
            np.ascontiguousarray(flatten_kernel(k_eu).astype(dt, copy=False).T), (Up * b, E * b))
    n = np.asarray(L, np.int32)
    state = _factor(spec, kll, kul, resid, n, fu, kap, avail, mask_e, lam, kuu,
                    kel, fe, keu, sequential)
    info = {"jitter": float(jitter), "lambda": float(lam), "capacity": N, "block": b,
            "u_floor": float(u_floor)}
    return state, spec, info


@functools.partial(jax.jit, static_argnames=("spec", "sequential"))
def _factor(spec, kll, kul, resid, n, fu, kap, avail, mask_e, lam, kuu, kel, fe, keu,
            sequential):
    """Cholesky, W, linearised predictions and Schur complements (Eq. 10-12)."""
    b = spec.block
    nb = kll.shape[0]
    real = (jnp.arange(nb) < n * b).astype(kll.dtype)
    chol = jnp.linalg.cholesky(kll + jnp.diag(lam * real))
    z = solve_triangular(chol, resid, lower=True)                  # Lc⁻¹ r   (N·B, Q)
    w_u = solve_triangular(chol, kul.T, lower=True)                # (N·B, U·B)
    lin_u = fu + w_u.T @ z                                         # f + Θ(U,X) K⁻¹ r
    wsq = w_u.reshape(nb, -1, b)
    schur = kap + lam * jnp.eye(b, dtype=kll.dtype) - jnp.einsum("kia,kib->iab", wsq, wsq)
    if spec.eval_is_cand:
        w_e = lin_e = ref_e = None
    else:
        w_e = solve_triangular(chol, kel.T, lower=True)
        lin_e = fe + w_e.T @ z
        ref_e = fe
    a_uu = a_ue = None
    if sequential:
        a_uu = w_u.T @ w_u - kuu
        if not spec.eval_is_cand:
            a_ue = w_u.T @ w_e - keu
        w_u = w_e = None
    return LookaheadState(chol=chol, k_ll=kll, k_ul=kul, resid=resid, n=n, f_u=fu,
                          lin_u=lin_u, ref_u=fu, kappa=kap, schur=schur,
                          available=jnp.asarray(avail), mask_e=jnp.asarray(mask_e), lam=lam,
                          w_u=w_u, k_uu=kuu, a_uu=a_uu, lin_e=lin_e, ref_e=ref_e, w_e=w_e,
                          k_ue=keu, a_ue=a_ue)


# ----------------------------------------------------------------------------- one candidate


def _schur_inverse(u: Array, kappa: Array, floor: float):
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
    return (vec / jnp.maximum(ev, lo)) @ vec.T, jnp.any(ev < lo)


def _one_hot_block(y: Array, spec: Spec) -> Array:
    return jax.nn.one_hot(y, spec.num_classes, dtype=jnp.float32).reshape(spec.block, spec.q)


def _outputs(a_row, u_inv, lin_c, y_block, lin_e):
    """f^lin_{L+} on E for one candidate and one label (Eq. 12): ``(E·B, Q)``.

    a_row ``(B, E·B)``: the candidate's row block of Aᵀ, i.e. (Θ(E,X) K⁻¹ Θ(X,x') −
    Θ(E,x'))ᵀ; u_inv ``(B, B)``; lin_c, y_block ``(B, Q)``; lin_e ``(E·B, Q)``.
    """
    c = u_inv @ (lin_c - y_block.astype(lin_c.dtype))            # (vᵀr − r') / u
    return lin_e + a_row.T @ c


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
        new = _outputs(a_row, u_inv, lin_c, _one_hot_block(y, spec), lin_e)
        return new.reshape(E, C)

    if kind == "mlmoc" and spec.block == 1:
        # ‖b_i + a_ij c_j‖ with b = f^lin − f_ref, expanded so no E × C tensor is formed:
        # √(‖b_i‖² + 2 a_ij (b_i·c_j) + a_ij² ‖c_j‖²); b = 0 from sequential step 1 on.
        c = (u_inv[0, 0] * (lin_c - _one_hot_block(y_hat, spec)))[0]        # (C,)
        a = a_row[0]
        if ref_is_lin:
            return jnp.linalg.norm(c) * jnp.sum(mask_e * jnp.abs(a))
        off = lin_e - ref_e                                                 # (E, C)
        sq = jnp.sum(off * off, -1) + 2.0 * a * (off @ c) + a * a * jnp.dot(c, c)
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
        p = jax.nn.softmax(new, axis=-1)                        # eer
        ent = -jnp.sum(p * jnp.log(jnp.clip(p, 1e-30)), axis=-1)
        return -jnp.sum(mask_e * ent)

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
    u_inv, clamped = jax.vmap(_schur_inverse, in_axes=(0, 0, None))(
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
        return _chunk_scores(kind, spec, False, w_c.T @ w_e - k_c, start, st)

    return _map_chunks(one, st.kappa.shape[0] // k)


@functools.partial(jax.jit, static_argnames=("kind", "spec", "ref_is_lin"))
def _sequential_scores(kind: str, spec: Spec, ref_is_lin: bool, st: LookaheadState):
    """All candidates from the stored Aᵀ (sequential mode)."""
    b, k = spec.block, spec.chunk
    a = st.a_uu if spec.eval_is_cand else st.a_ue
    if kind == "mlmoc" and b == 1 and ref_is_lin:
        # One pass over Aᵀ: ‖c_j‖ Σ_i mask_i |a_ij| (no chunking needed: O(U) output).
        u_inv, clamped = jax.vmap(_schur_inverse, in_axes=(0, 0, None))(
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
    w_e = st.w_u if spec.eval_is_cand else st.w_e
    w_c = jax.lax.dynamic_slice_in_dim(st.w_u, start * spec.block, spec.chunk * spec.block,
                                       axis=1)
    return _chunk_scores(kind, spec, False, w_c.T @ w_e - k_ue_rows, start, st)


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
                     num_chunks: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Batch scores without Θ(U, E) in memory (the whole-pool path).

    Args:
      row_block: ``row_block(start, stop)`` returns Θ(U[start:stop], E) as ``(k, E)`` /
        ``(k, E, B, B)``, computed on demand (e.g. from NTK features).
      num_chunks: score only the first ``num_chunks`` chunks (timing a fraction).
    Returns ``((U_pad,) numpy scores, number clamped)`` (fewer with ``num_chunks``).
    Peak memory: one k × E block (plus the state).
    """
    k, b = spec.chunk, spec.block
    U = int(state.kappa.shape[0])
    e_cols = int(state.mask_e.shape[0]) * b
    out, clamped = [], 0
    for start in range(0, U if num_chunks is None else num_chunks * k, k):
        blk = np.asarray(flatten_kernel(row_block(start, start + k)))
        if blk.shape != (k * b, e_cols):
            blk = _pad_to(blk, (k * b, e_cols))
        s, c = _streaming_chunk(kind, spec, state, np.int32(start), blk)
        out.append(np.asarray(s))
        clamped += int(np.sum(c))
    return np.concatenate(out), clamped


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
    b = spec.block
    n = state.n
    dt = state.chol.dtype
    eye = jnp.eye(b, dtype=dt)
    # Cholesky: new block row at n: l = Lc⁻¹ Θ(X, s), d = chol(κ + λ − lᵀl).
    k_sx = jax.lax.dynamic_slice_in_dim(state.k_ul, j * b, b, axis=0)       # Θ(s, X) (B, N·B)
    kap = jax.lax.dynamic_index_in_dim(state.kappa, j, keepdims=False)       # (B, B)
    l = solve_triangular(state.chol, k_sx.T, lower=True)                     # (N·B, B)
    s_mat = kap + state.lam * eye - l.T @ l                                 # Schur (B, B)
    s_inv, _ = _schur_inverse(s_mat, kap, spec.u_floor)
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
                        ws=w_u @ s_inv, c_s=s_inv @ (lin_s - y_blk), w_e=w_e)


def _outer_add(a, left, right):
    """``a + left @ right.T`` for thin ``left, right`` ``(m, B)``, as B broadcast outer
    products (XLA:CPU runs a K = 1 dot far slower than the elementwise form)."""
    for i in range(left.shape[1]):
        a = a + left[:, i, None] * right[None, :, i]
    return a


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def _apply_step(spec: Spec, state: LookaheadState, v: _StepVectors, j) -> LookaheadState:
    b = spec.block
    n = state.n
    chol = jax.lax.dynamic_update_slice_in_dim(state.chol, v.row, n * b, axis=0)
    k_ll = jax.lax.dynamic_update_slice_in_dim(state.k_ll, v.krow, n * b, axis=0)
    k_ll = jax.lax.dynamic_update_slice_in_dim(k_ll, v.krow.T, n * b, axis=1)
    k_ul = jax.lax.dynamic_update_slice_in_dim(state.k_ul, v.k_us, n * b, axis=1)
    resid = jax.lax.dynamic_update_slice_in_dim(state.resid, v.resid, n * b, axis=0)
    lin_u = state.lin_u - v.w_u @ v.c_s
    schur = state.schur - jnp.einsum("iab,icb->iac", v.ws.reshape(-1, b, b),
                                     v.w_u.reshape(-1, b, b))
    upd = dict(chol=chol, k_ll=k_ll, k_ul=k_ul, resid=resid, n=n + 1,
               a_uu=_outer_add(state.a_uu, v.ws, v.w_u), lin_u=lin_u, ref_u=lin_u,
               schur=schur, available=state.available.at[j].set(False))
    if spec.eval_is_cand:
        upd["mask_e"] = state.mask_e.at[j].set(0.0)
    else:
        upd["a_ue"] = _outer_add(state.a_ue, v.ws, v.w_e)
        upd["lin_e"] = state.lin_e - v.w_e @ v.c_s
        upd["ref_e"] = upd["lin_e"]
    return state._replace(**upd)


def add_labeled(spec: Spec, state: LookaheadState, j, label) -> LookaheadState:
    """Adds candidate ``j`` with its TRUE ``label`` to the labeled system (sequential).

    Extends the Cholesky factor by one block row (l = Lc⁻¹ Θ(X, s), d = chol(κ + λ − lᵀl);
    O(N²B²), no refactorisation), updates Aᵀ by the rank-B term w_U S⁻¹ w_Eᵀ (MATH.md:
    M⁺ = M + w wᵀ / d², w = −A[:, s]; O(E·U·B²)), the residuals, the linearised
    predictions on U and E (Eq. 12 with the true label), and marks j picked. No kernel
    entry is computed: Θ(·, s) is read from Θ(U, U).

    Two jitted calls: the vectors w, l, ... are read first, then the state is updated
    IN PLACE (``state`` is donated: do not reuse the argument). In one call XLA copies
    the U × U matrix A because the update reads its own row (≈ 10× slower on CPU).

    Args:
      spec: static layout; state: a sequential-mode state (``a_uu`` set).
      j: () int candidate position; label: () int class.
    """
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
    a_t = (state.w_u.T @ w_e - k_ue).reshape(U, b, -1)
    if labels is None:
        labels = jnp.argmax(state.ref_u.reshape(U, C), -1)
    u_inv, _ = jax.vmap(_schur_inverse, in_axes=(0, 0, None))(state.schur, state.kappa,
                                                               spec.u_floor)
    out = jax.vmap(lambda ar, ui, lc, y: _outputs(ar, ui, lc, _one_hot_block(y, spec), lin_e)
                   )(a_t, u_inv, state.lin_u.reshape(U, b, q), labels)
    return out.reshape(U, -1, C)


def augmented_system_scores(k_ll, k_ul, k_uu, f_l, y_l, f_u, lam, chunk: int = 256
                            ) -> Array:
    """MLMOC by solving every candidate's augmented (L+1)×(L+1) system: no Eq. 12.

    The paper's "NTK w/o Block" (Fig. 1a): the same kernels, but for each candidate x′
    the system [[K + λI, k], [kᵀ, κ + λ]] α = [r; y′ − f(x′)] is solved from scratch
    (O(L³) per candidate instead of Eq. 12's O(L·E)). Scalar kernels, E = U.

    Args:
      k_ll: ``(L, L)``; k_ul: ``(U, L)``; k_uu: ``(U, U)`` Θ blocks.
      f_l: ``(L, C)``, f_u: ``(U, C)`` network outputs; y_l: ``(L,)`` labels.
      lam: absolute ridge λ (as in :func:`build_system`).
      chunk: candidates solved per vmapped call.

    Returns:
      ``(U,)`` Σ_x ‖f^lin_{L+}(x) − f_L(x)‖₂ over the candidates (Eq. 13).
    """
    k_ll, k_ul, k_uu = (jnp.asarray(a) for a in (k_ll, k_ul, k_uu))
    f_l, f_u = jnp.asarray(f_l), jnp.asarray(f_u)
    L, C = f_l.shape
    U = k_uu.shape[0]
    r = jax.nn.one_hot(jnp.asarray(y_l), C, dtype=f_l.dtype) - f_l
    yhat = jax.nn.one_hot(jnp.argmax(f_u, -1), C, dtype=f_u.dtype)
    return jnp.concatenate([_augmented_chunk(k_ll, k_ul, k_uu, r, yhat, f_u, lam,
                                             jnp.arange(s, min(s + chunk, U)))
                            for s in range(0, U, chunk)])


@jax.jit
def _augmented_chunk(k_ll, k_ul, k_uu, r, yhat, f_u, lam, js):
    L = k_ll.shape[0]

    def one(j):
        kj = k_ul[j]
        kaug = jnp.block([[k_ll + lam * jnp.eye(L, dtype=k_ll.dtype), kj[:, None]],
                          [kj[None, :], (k_uu[j, j] + lam)[None, None]]])
        alpha = jnp.linalg.solve(kaug, jnp.concatenate([r, (yhat[j] - f_u[j])[None]]))
        change = k_ul @ alpha[:L] + k_uu[:, j][:, None] * alpha[L][None]
        return jnp.sum(jnp.linalg.norm(change, axis=-1))

    return jax.vmap(one)(js)


# ----------------------------------------------------------------------------- strategy glue


def _kernels(ctx: AcquisitionContext, output: str, x_eval, streaming: bool):
    """Θ_LL, Θ_UL, Θ_UU (or its diagonal + feature handles), and eval blocks."""
    impl = ctx.option("ntk_implementation", "auto")
    nchunk = ctx.option("ntk_chunk_size", None)
    from lookahead_jax import ntk

    kw = dict(output=output, implementation=impl, chunk_size=nchunk)
    if impl == "jvp_vjp" and not streaming and x_eval is None:   # no per-example features
        ks = ntk.kernel_set(ctx.apply_fn, ctx.params, ctx.x_labeled, ctx.x_candidates, **kw)
        return dict(k_ll=ks.ll, k_ul=ks.ul, k_uu=ks.uu), None
    fl = ntk.ntk_features(ctx.apply_fn, ctx.params, ctx.x_labeled, **kw)
    fu = ntk.ntk_features(ctx.apply_fn, ctx.params, ctx.x_candidates, **kw)
    kf = functools.partial(ntk.kernel_from_features, chunk_size=nchunk)
    out = dict(k_ll=kf(fl, fl), k_ul=kf(fu, fl))
    fe = fu if x_eval is None else ntk.ntk_features(ctx.apply_fn, ctx.params, x_eval, **kw)
    if x_eval is not None:
        out["k_el"] = kf(fe, fl)
    if not streaming:
        # Θ(U, U) is symmetric: the engine computes the tiles on and above the diagonal
        out["k_uu"] = ntk.kernel_from_features(fu, fu, chunk_size=int(ctx.option("gram_tile", 512)))
        if x_eval is not None:
            out["k_eu"] = kf(fe, fu)
        return out, None
    # streaming: Θ(U, U) / Θ(U, E) are never held, only the diagonal and row blocks.
    k = int(ctx.option("chunk_size", 256))
    U = ctx.num_candidates
    diag = []
    for s in range(0, U, k):
        blk = np.asarray(kf(ntk.slice_features(fu, s, min(s + k, U)),
                            ntk.slice_features(fu, s, min(s + k, U))))
        diag.append(blk[np.arange(blk.shape[0]), np.arange(blk.shape[0])])
    out["kappa"] = np.concatenate(diag)

    def row_block(start, stop):
        return kf(ntk.slice_features(fu, start, min(stop, U)), fe)

    return out, row_block


def lookahead_select(ctx: AcquisitionContext, kind: str) -> Selection:
    """Runs one look-ahead acquisition (batch, or sequential when ``ctx.label_fn``).

    Options (``ctx.options``): ``kernel`` (:data:`KERNELS`, default ``"first_logit"``),
    ``jitter`` (relative ridge, default 1e-5), ``u_floor`` (1e-6), ``chunk_size`` (256),
    ``eval_x`` (separate evaluation inputs, default the candidates), ``streaming``
    (never hold Θ(E, U); batch mode only), ``ntk_implementation``, ``ntk_chunk_size``,
    ``block`` (default True; False solves every augmented system instead of Eq. 12: the
    paper's "NTK w/o Block", batch MLMOC with a scalar kernel only, for Fig. 1a).
    Batch selection is the top ``query_size`` scores (no diversity term).

    Sequential mode (``ctx.label_fn`` given): ``query_size`` steps of pick the best
    available candidate → ``label_fn(j)`` (its TRUE label) → :func:`add_labeled` →
    re-score; ``Selection.indices`` are in pick order, ``revealed`` the labels, and
    ``scores`` the step-0 scores (equal to the batch scores; later picks used re-scored
    values, so ``indices`` need not be the top-k of ``scores``).

    ``info``: ``jitter`` (relative), ``lambda`` (absolute), ``u_floor``, ``clamped``
    (Schur complements clamped at step 0 / in the batch), ``clamped_all_steps``,
    ``capacity``, ``block``, ``kernel_s`` and ``total_s`` (seconds).
    """
    t0 = time.perf_counter()
    output = ctx.option("kernel", "first_logit")
    if output not in KERNELS:
        raise ValueError(f"unknown kernel {output!r}; known: {KERNELS}")
    sequential = ctx.label_fn is not None
    streaming = bool(ctx.option("streaming", False)) and not sequential
    x_eval = ctx.option("eval_x", None)
    C = ctx.num_classes
    U, L, q = ctx.num_candidates, int(ctx.x_labeled.shape[0]), ctx.query_size
    block = bool(ctx.option("block", True))
    if not block and (kind != "mlmoc" or sequential or streaming or x_eval is not None
                      or output == "full"):
        raise ValueError("block=False (the paper's 'NTK w/o Block') supports batch-mode "
                         "MLMOC with a scalar kernel and E = U only")
    kern, row_block = _kernels(ctx, output, x_eval, streaming)
    jax.block_until_ready(kern)
    t_kernel = time.perf_counter() - t0
    f_l = predict_in_chunks(ctx.apply_fn, ctx.params, ctx.x_labeled)
    f_u = predict_in_chunks(ctx.apply_fn, ctx.params, ctx.x_candidates)
    if not block:
        jitter = float(ctx.option("jitter", 1e-5))
        lam = jitter * float(np.mean(np.diagonal(np.asarray(kern["k_ll"]))))
        scores = np.asarray(augmented_system_scores(
            kern["k_ll"], kern["k_ul"], kern["k_uu"], f_l, ctx.y_labeled, f_u, lam,
            int(ctx.option("chunk_size", 256))), np.float64)
        return Selection(indices=top_k(scores, q), scores=scores,
                         info=dict(jitter=jitter, kernel_s=t_kernel,
                                   total_s=time.perf_counter() - t0))
    f_e = None if x_eval is None else predict_in_chunks(ctx.apply_fn, ctx.params, x_eval)
    capacity = max(int(ctx.labeled_capacity or 0), L + (q if sequential else 0))
    state, spec, info = build_system(
        y_l=ctx.y_labeled, f_l=f_l, f_u=f_u, f_e=f_e, num_classes=C, capacity=capacity,
        jitter=float(ctx.option("jitter", 1e-5)), u_floor=float(ctx.option("u_floor", 1e-6)),
        chunk_size=int(ctx.option("chunk_size", 256)), sequential=sequential, **kern)
    info = dict(info, kernel_s=t_kernel)
    if streaming:
        scores, clamped = streaming_scores(kind, spec, state, row_block)
        scores = np.asarray(scores, np.float64)[:U]
        info.update(clamped=clamped, total_s=time.perf_counter() - t0)
        return Selection(indices=top_k(scores, q), scores=scores, info=info)
    if not sequential:
        scores, clamped = score_candidates(kind, spec, state)
        scores = np.asarray(scores, np.float64)[:U]
        info.update(clamped=int(clamped), total_s=time.perf_counter() - t0)
        return Selection(indices=top_k(scores, q), scores=scores, info=info)
    picked, labels, total_clamped = [], [], 0
    first = None
    for t in range(q):
        scores, clamped = score_candidates(kind, spec, state, ref_is_lin=t > 0)
        total_clamped += int(clamped)
        scores = np.asarray(scores, np.float64)
        if first is None:
            first = scores[:U]
            info["clamped"] = int(clamped)
        j = int(np.argmax(scores))          # unavailable candidates are −inf
        y = int(ctx.label_fn(j))
        picked.append(j)
        labels.append(y)
        state = add_labeled(spec, state, np.int32(j), np.int32(y))
    info.update(clamped_all_steps=total_clamped, total_s=time.perf_counter() - t0)
    # ``scores``: step-0 scores (= the batch scores); later picks used re-scored values.
    return Selection(indices=np.asarray(picked, np.int64), scores=first,
                     revealed=np.asarray(labels, np.int64), info=info)


@register_strategy("mlmoc", sequential=True)
def mlmoc_strategy(ctx: AcquisitionContext) -> Selection:
    """NTK look-ahead MLMOC (Eq. 13): Σ_x ‖f_L(x) − f^lin_{L+}(x)‖ with y' = argmax f_L(x')."""
    return lookahead_select(ctx, "mlmoc")


@register_strategy("emoc", sequential=True)
def emoc_strategy(ctx: AcquisitionContext) -> Selection:
    """NTK look-ahead EMOC (Eq. 3): MLMOC's sum in expectation over softmax(f_L(x')). C× cost."""
    return lookahead_select(ctx, "emoc")


@register_strategy("eer", sequential=True)
def eer_strategy(ctx: AcquisitionContext) -> Selection:
    """NTK look-ahead expected error reduction (Eq. 2): −E_y Σ_x H(softmax(f^lin_{L+}(x)))."""
    return lookahead_select(ctx, "eer")


@register_strategy("label_flip", sequential=True)
def label_flip_strategy(ctx: AcquisitionContext) -> Selection:
    """Fraction of evaluation points whose argmax flips (the authors' released code's score)."""
    return lookahead_select(ctx, "label_flip")
