"""The look-ahead algebra in feature space (issue 21): Eq. 11-13 through a k × k system.

With features φ(x) ∈ ℝᵏ and Θ(x, x′) = φ(x)·φ(x′) (e.g. :mod:`lookahead_jax.ntk.projected`),
K = Φ_X Φ_Xᵀ + λI, G = Φ_Xᵀ Φ_X + λI = Lg Lgᵀ (k × k), the push-through identity
Φ_Xᵀ K⁻¹ = G⁻¹ Φ_Xᵀ and Φ_Xᵀ K⁻¹ Φ_X = I − λ G⁻¹ turn every quantity of
:mod:`lookahead_jax.lookahead` into k-dimensional ones. With V = Φ Lg⁻ᵀ (one row v_j per
point) and H = Lgᵀ G_t⁻¹ Lg (H = I at step 0; G_t the system after t sequential steps):

* predictions (Eq. 11): f^lin = f + Θ(·, X) K⁻¹ r = f + V z, z = Lg⁻¹ Φ_Xᵀ r  (k × C);
* Schur complements (Eq. 12's u): u_j = κ_j + λ − φ_jᵀ Φ_Xᵀ K⁻¹ Φ_X φ_j
  = λ (1 + v_jᵀ H v_j), κ_j = ‖φ_j‖² (no cancellation: u ≥ λ);
* the look-ahead matrix A = Θ(E, X) K⁻¹ Θ(X, U) − Θ(E, U) = −λ V_E H V_Uᵀ, formed one
  chunk of candidates at a time (chunk × E), never stored;
* a sequential step with candidate s, t = v_s: w = −A[:, s] = λ V H t,
  S⁻¹ = clamped u_s⁻¹ (as :mod:`lookahead`), and G_{t+1} = G_t + φ_s φ_sᵀ is
  H ← H − λ S⁻¹ (H t)(H t)ᵀ (Sherman–Morrison; with S unclamped λ S⁻¹ = 1 / (1 + tᵀHt)),
  so A ← A + w_E S⁻¹ w_Uᵀ exactly as the dense rank-one update, f^lin ← f^lin − w c_s,
  u ← u − w² S⁻¹.

Cost: build O((N + U + E)·k²) (N the labeled capacity: L enters linearly), scores
O(E·U·k) per call (the score sums, chunk by chunk, from V_U H kept up to date), a step
O(k² + (U + E)·k); memory O((N + U + E)·k + k²): no L × L, U × U or E × U matrix.
The scores themselves (MLMOC, EMOC, EER, label-flip), the clamping of Schur complements,
the masks, the padding and the meaning of ``ref_is_lin`` are those of :mod:`lookahead_jax.lookahead`, whose
per-candidate functions are reused, so the two paths agree to rounding on the same
kernel Φ Φᵀ (tests/test_feature_lookahead.py). Scalar kernels only (block size B = 1);
``jitter`` must be > 0 (with λ = 0 and L > k, K is singular).

Every matmul takes ``precision`` (default :data:`PRECISION`, one constant for a policy to
replace).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from lookahead_jax import lookahead as la

Array = jax.Array

PRECISION = jax.lax.Precision.HIGHEST


class FeatureState(NamedTuple):
    """Padded feature-space system of one cycle (a pytree; every field a fixed shape).

    U: padded candidates, E: evaluation points (E = U and the ``*_e`` fields ``None``
    when ``spec.eval_is_cand``), k: feature width, C: classes. The field names shared with
    :class:`lookahead_jax.lookahead.LookaheadState` mean the same.
    """

    lg: Array              # (k, k) lower Cholesky factor of Φ_Xᵀ Φ_X + λI (step 0)
    h: Array               # (k, k) H = Lgᵀ G_t⁻¹ Lg (I at step 0)
    v_u: Array             # (U, k) V_U = Φ_U Lg⁻ᵀ (padded candidates 0)
    vh_u: Array            # (U, k) V_U H (= V_U at step 0), updated in O(U·k) per step
    n: Array               # () int32 labeled points absorbed
    f_u: Array             # (U, C) network outputs on candidates
    lin_u: Array           # (U, C) linearised predictions
    ref_u: Array           # (U, C) reference predictions
    kappa: Array           # (U, 1, 1) ‖φ_j‖² (padding 1)
    schur: Array           # (U, 1, 1) u_j (unclamped)
    available: Array       # (U,) bool
    mask_e: Array          # (E,) evaluation weights
    lam: Array             # () absolute ridge λ
    v_e: Optional[Array] = None     # (E, k)
    lin_e: Optional[Array] = None   # (E, C)
    ref_e: Optional[Array] = None   # (E, C)


def build_feature_system(phi_l, y_l, f_l, phi_u, f_u, *, num_classes: int, phi_e=None,
                         f_e=None, mask_e=None, num_labeled=None, jitter: float = 1e-5,
                         u_floor: float = 1e-6, chunk_size: int = 256,
                         precision=PRECISION) -> tuple[FeatureState, la.Spec, dict]:
    """The feature-space system of one cycle (:func:`lookahead.build_system`'s twin).

    Args:
      phi_l: ``(N, k)`` labeled features (rows ≥ ``num_labeled`` ignored); y_l ``(N,)``,
        f_l ``(N, C)``.
      phi_u: ``(U, k)`` candidate features; f_u ``(U, C)``.
      phi_e, f_e: a separate evaluation set ``(E, k)``, ``(E, C)`` (``None``: E = U).
      mask_e: ``(E,)`` evaluation weights with ``phi_e`` (default ones).
      num_labeled: the real L (``()`` int, may be traced); default N.
      jitter: relative ridge λ / mean ‖φ_x‖² over X (> 0).
      u_floor, chunk_size: as :func:`lookahead.build_system`.
    Returns ``(state, spec, info)`` as :func:`lookahead.build_system` (block 1).
    """
    if not jitter > 0:
        raise ValueError(f"the feature-space look-ahead needs jitter > 0 (got {jitter!r}): "
                         "with λ = 0 the labeled kernel Φ Φᵀ is singular once L > k")
    if phi_l.ndim != 2 or phi_u.ndim != 2:
        raise ValueError(f"features must be (n, k); got {phi_l.shape} and {phi_u.shape} "
                         "(the feature-space look-ahead takes scalar kernels only)")
    U = int(phi_u.shape[0])
    chunk, Up = la.chunk_layout(U, chunk_size)
    spec = la.Spec(block=1, q=int(num_classes), num_classes=int(num_classes), chunk=chunk,
                   eval_is_cand=phi_e is None, u_floor=float(u_floor))
    N = int(phi_l.shape[0])
    n = la.to_device(N if num_labeled is None else num_labeled, jnp.int32)
    if phi_e is not None and mask_e is None:
        mask_e = jnp.ones(phi_e.shape[0], phi_e.dtype)
    state = _build(spec, Up, precision, phi_l, y_l, f_l, phi_u, f_u, n,
                   la.to_device(jitter, jnp.result_type(float)), phi_e, f_e, mask_e)
    info = {"jitter": float(jitter), "capacity": N, "block": 1, "u_floor": float(u_floor),
            "features": int(phi_u.shape[1])}
    return state, spec, info


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _build(spec, Up, precision, phi_l, y_l, f_l, phi_u, f_u, n, jitter, phi_e, f_e, mask_e):
    dt = jnp.result_type(phi_u)
    mm = functools.partial(jnp.matmul, precision=precision)
    N, k = phi_l.shape
    U = phi_u.shape[0]
    real = jnp.arange(N) < n
    px = jnp.where(real[:, None], phi_l.astype(dt), 0)
    r = jnp.where(real[:, None], jax.nn.one_hot(y_l, spec.num_classes, dtype=dt)
                  - f_l.astype(dt), 0)
    lam = jitter.astype(dt) * jnp.sum(px * px) / jnp.maximum(n, 1).astype(dt)
    lg = jnp.linalg.cholesky(mm(px.T, px) + lam * jnp.eye(k, dtype=dt))
    z = solve_triangular(lg, mm(px.T, r), lower=True)                     # (k, C)
    pu = la._pad2(phi_u.astype(dt), Up, k)
    v_u = solve_triangular(lg, pu.T, lower=True).T                        # (U, k)
    fu = la._pad2(f_u.astype(dt), Up, spec.num_classes)
    cand = jnp.arange(Up) < U
    kap = jnp.where(cand, jnp.sum(pu * pu, -1), 1.0)[:, None, None]
    # padded candidates: κ = 1, no labeled coupling, u = 1 + λ (as the dense padding)
    schur = jnp.where(cand, lam * (1.0 + jnp.sum(v_u * v_u, -1)), 1.0 + lam)[:, None, None]
    lin_u = fu + mm(v_u, z)
    if spec.eval_is_cand:
        v_e = lin_e = ref_e = None
        mask = cand.astype(dt)
    else:
        v_e = solve_triangular(lg, phi_e.astype(dt).T, lower=True).T
        ref_e = f_e.astype(dt)
        lin_e = ref_e + mm(v_e, z)
        mask = mask_e.astype(dt)
    return FeatureState(lg=lg, h=jnp.eye(k, dtype=dt), v_u=v_u, vh_u=v_u, n=n, f_u=fu, lin_u=lin_u,
                        ref_u=fu, kappa=kap, schur=schur, available=cand, mask_e=mask,
                        lam=lam, v_e=v_e, lin_e=lin_e, ref_e=ref_e)


def _a_rows(spec: la.Spec, st: FeatureState, start, precision) -> Array:
    """Rows of Aᵀ for candidates ``start : start + chunk``: −λ (V_c H) V_Eᵀ, ``(chunk, E)``."""
    vh = jax.lax.dynamic_slice_in_dim(st.vh_u, start, spec.chunk, axis=0)
    v_e = st.v_u if spec.eval_is_cand else st.v_e
    return -st.lam * jnp.matmul(vh, v_e.T, precision=precision)


@functools.partial(jax.jit, static_argnames=("kind", "spec", "ref_is_lin", "precision"))
def _scores(kind: str, spec: la.Spec, ref_is_lin: bool, precision, st: FeatureState):
    def one(i):
        start = i * spec.chunk
        return la._chunk_scores(kind, spec, ref_is_lin, _a_rows(spec, st, start, precision),
                                start, st)

    return la._map_chunks(one, st.kappa.shape[0] // spec.chunk)


def score_candidates(kind: str, spec: la.Spec, state: FeatureState, *,
                     ref_is_lin: bool = False, precision=PRECISION) -> tuple[Array, Array]:
    """Scores of every (padded) candidate: ``((U_pad,) scores, () number clamped)``.

    As :func:`lookahead.score_candidates` (unavailable candidates −inf; ``ref_is_lin``:
    the reference is f^lin, sequential steps ≥ 1), from the features.
    """
    if kind not in la.KINDS:
        raise ValueError(f"unknown look-ahead score {kind!r}; known: {la.KINDS}")
    return _scores(kind, spec, bool(ref_is_lin), precision, state)


@functools.partial(jax.jit, static_argnames=("spec", "precision"))
def _step(spec: la.Spec, precision, st: FeatureState, j, label) -> FeatureState:
    mm = functools.partial(jnp.matmul, precision=precision)
    t = jax.lax.dynamic_index_in_dim(st.v_u, j, keepdims=False)           # (k,)
    ht = mm(st.h, t)
    kap = jax.lax.dynamic_index_in_dim(st.kappa, j, keepdims=False)       # (1, 1)
    s_mat = (st.lam * (1.0 + jnp.dot(t, ht, precision=precision)))[None, None]
    s_inv, _ = la._schur_inverse(s_mat, kap, spec.u_floor, precision)
    s_inv = s_inv[0, 0]
    w_u = st.lam * mm(st.vh_u, t)                                         # −A[:, s] (U,)
    y = jax.nn.one_hot(label, spec.num_classes, dtype=st.lin_u.dtype)
    lin_s = jax.lax.dynamic_index_in_dim(st.lin_u, j, keepdims=False)
    c_s = s_inv * (lin_s - y)                                             # (C,)
    lin_u = st.lin_u - w_u[:, None] * c_s[None, :]
    upd = dict(h=st.h - (st.lam * s_inv) * (ht[:, None] * ht[None, :]), n=st.n + 1,
               vh_u=st.vh_u - (s_inv * w_u)[:, None] * ht[None, :],
               lin_u=lin_u, ref_u=lin_u,
               schur=st.schur - (w_u * w_u * s_inv)[:, None, None],
               available=st.available.at[j].set(False))
    if spec.eval_is_cand:
        upd["mask_e"] = st.mask_e.at[j].set(0.0)
    else:
        w_e = st.lam * mm(st.v_e, ht)
        upd["lin_e"] = st.lin_e - w_e[:, None] * c_s[None, :]
        upd["ref_e"] = upd["lin_e"]
    return st._replace(**upd)


def add_labeled(spec: la.Spec, state: FeatureState, j, label, *,
                precision=PRECISION) -> FeatureState:
    """Adds candidate ``j`` with ``label`` (sequential / greedy step): O(k² + (U + E)·k).

    The dense :func:`lookahead.add_labeled`'s update (A ← A + w_E S⁻¹ w_Uᵀ with the same
    clamped S, f^lin ← f^lin − w c_s, u ← u − w² S⁻¹, j withdrawn and, when E = U, out of
    the evaluation sum) carried by the k × k matrix H alone.
    """
    j, label = la.to_device(j, jnp.int32), la.to_device(label, jnp.int32)
    return _step(spec, precision, state, j, label)
