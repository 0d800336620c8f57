"""Every numbered identity of docs/ALGEBRA.md (A1-A15), checked in float64.

Each test names its identity and compares the code's fast form (or the identity written
out) with a brute-force twin from tests/twins.py: explicit solves of the augmented
system, fresh Cholesky factorisations and rebuilt systems, loops over candidates and
labels, ``jax.jacrev`` Jacobians. Problems are tiny (L ≤ 12, U ≤ 12), so float64 rounding
is ~1e-16 relative per operation and the errors measured below are 1e-16 to 2e-15;
each bound is stated next to its assertion, ~10-100x the measured error (a wrong term,
sign or index is off by O(1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lookahead_jax import lookahead as la
from lookahead_jax.ntk import empirical_ntk_fn, ntk_features
from twins import (brute_force_ntk, direct_lookahead, flat, jacobian_gram, krr, lam_of,
                   loop_scores, random_problem, rel_err, system_kwargs)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _system(p, jitter=1e-3, **kw):
    return la.build_system(**system_kwargs(p), jitter=jitter, chunk_size=4, **kw)


def _direct(p, lam, train, test):
    """Θ(test, train) (Θ(train, train) + λI)⁻¹ Θ(train, test) by a dense solve."""
    k = flat(p["k_all"][np.ix_(train, train)])
    return flat(p["k_all"][np.ix_(test, train)]) @ np.linalg.solve(
        k + lam * np.eye(k.shape[0]), flat(p["k_all"][np.ix_(train, test)]))


# ----------------------------------------------------------------------------- section 2


def test_a1_linearised_predictions():
    """(A1) f^lin_L = f_L + Θ(·, X) K⁻¹ r, formed as f_L + W_ᵀ (Lc⁻¹ r), on U and on a
    separate E (block kernel; the scalar one is the B = 1 case, checked through A4)."""
    full, E = True, 4
    p = random_problem(0, E=E, full=full)
    st, spec, _ = _system(p)
    iL, iU, iE = p["idx"]
    C, lam = p["num_classes"], lam_of(p, 1e-3)
    y = np.eye(C)[p["y_l"]]
    lin_u = krr(p["k_all"], iL, iU, y, p["f_u"], p["f_l"], lam, full)
    # measured 5.2e-16 (U), 6.8e-16 (E); bound 1e-14
    assert rel_err(np.asarray(st.lin_u).reshape(-1, C)[:len(iU)], lin_u) < 1e-14
    if E:
        lin_e = krr(p["k_all"], iL, iE, y, p["f_e"], p["f_l"], lam, full)
        assert rel_err(np.asarray(st.lin_e).reshape(-1, C), lin_e) < 1e-14


@pytest.mark.parametrize("b", [1, 3])
def test_a2_block_inverse(b):
    """(A2) [[K, k], [kᵀ, κ+λ]]⁻¹ = [[K⁻¹ + v u⁻¹ vᵀ, −v u⁻¹], [−u⁻¹ vᵀ, u⁻¹]]."""
    rng = np.random.RandomState(b)
    n, lam = 6 * b, 1e-2
    z = rng.randn(n + b, 3 * n)
    g = z @ z.T / z.shape[1]
    K, k, kap = g[:n, :n] + lam * np.eye(n), g[:n, n:], g[n:, n:]
    v = np.linalg.solve(K, k)
    u = kap + lam * np.eye(b) - k.T @ v
    ui = np.linalg.inv(u)
    block = np.block([[np.linalg.inv(K) + v @ ui @ v.T, -v @ ui], [-ui @ v.T, ui]])
    aug = np.block([[K, k], [k.T, kap + lam * np.eye(b)]])
    # measured 1.5e-16; bound 1e-14
    assert rel_err(block, np.linalg.inv(aug)) < 1e-13


@pytest.mark.parametrize("full", [False, True], ids=["scalar", "full"])
def test_a3_one_candidate_block_form_equals_augmented_solve(full):
    """(A3) f^lin_{L+}(x) = f^lin_L(x) + a(x, x′) c(x′), both forms of c, against the
    explicit solve of the augmented system (written out here, not through the library)."""
    p = random_problem(1, full=full)
    iL, iU, _ = p["idx"]
    C, lam = p["num_classes"], lam_of(p, 1e-3)
    b = C if full else 1
    j, yj = 4, 2
    k_all = p["k_all"]
    K = flat(k_all[np.ix_(iL, iL)]) + lam * np.eye(len(iL) * b)
    k = flat(k_all[np.ix_(iL, iU[[j]])])                        # Θ(X, x′)
    kap = flat(k_all[np.ix_(iU[[j]], iU[[j]])])
    k_ex = flat(k_all[np.ix_(iU, iL)])                          # Θ(x, X), x over U
    k_ex1 = flat(k_all[np.ix_(iU, iU[[j]])])                    # Θ(x, x′)
    y = np.eye(C)[p["y_l"]]
    r = (y - p["f_l"]).reshape(-1, C // b)
    r1 = (np.eye(C)[yj] - p["f_u"][j]).reshape(b, C // b)       # r′ = y′ − f_L(x′)
    v = np.linalg.solve(K, k)
    u = kap + lam * np.eye(b) - k.T @ v
    lin = p["f_u"].reshape(-1, C // b) + k_ex @ np.linalg.solve(K, r)
    c1 = np.linalg.solve(u, v.T @ r - r1)
    c2 = np.linalg.solve(u, lin[j * b:(j + 1) * b] - np.eye(C)[yj].reshape(b, C // b))
    # measured 3.9e-16 (c) and 4.6e-16 (the look-ahead); bound 1e-14
    assert rel_err(c1, c2) < 1e-14
    fast = (lin + (k_ex @ v - k_ex1) @ c1).reshape(-1, C)
    ref = krr(k_all, np.concatenate([iL, iU[[j]]]), iU, np.vstack([y, np.eye(C)[yj]]),
              p["f_u"], np.vstack([p["f_l"], p["f_u"][j:j + 1]]), lam, full)
    assert rel_err(fast, ref) < 1e-14


# ----------------------------------------------------------------------------- section 3


@pytest.mark.parametrize("full,E", [(False, 5), (True, None)], ids=["scalar-E", "full"])
def test_a4_all_candidates_cholesky_form(full, E):
    """(A4) W_Eᵀ W_U = Θ(E,X) K⁻¹ Θ(X,U); u_j = κ_j + λ − ‖W_U[:, j]‖²; and every
    candidate's look-ahead f^lin_L + A_ij c_j equals its augmented solve."""
    p = random_problem(2, E=E, full=full)
    st, spec, _ = _system(p)
    iL, iU, iE = p["idx"]
    lam, b, U = lam_of(p, 1e-3), spec.block, len(iU)
    ev = iE if E else iU
    w_e = st.w_e if E else st.w_u
    m = np.asarray(w_e.T @ st.w_u)[:len(ev) * b, :U * b]
    # measured 5.3e-16; bound 1e-14
    m_direct = flat(p["k_all"][np.ix_(ev, iL)]) @ np.linalg.solve(
        flat(p["k_all"][np.ix_(iL, iL)]) + lam * np.eye(len(iL) * b),
        flat(p["k_all"][np.ix_(iL, iU)]))
    assert rel_err(m, m_direct) < 1e-14
    m_uu = _direct(p, lam, iL, iU)
    kap = flat(p["k_all"][np.ix_(iU, iU)])
    u_direct = np.stack([kap[j * b:(j + 1) * b, j * b:(j + 1) * b] + lam * np.eye(b)
                         - m_uu[j * b:(j + 1) * b, j * b:(j + 1) * b] for j in range(U)])
    assert rel_err(np.asarray(st.schur)[:U], u_direct) < 1e-14     # measured 4.1e-16
    labels = np.argmax(p["f_u"], -1)
    fast = np.asarray(la.lookahead_outputs(spec, st))[:U]
    ref = direct_lookahead(p, lam, labels, full)
    assert rel_err(fast, ref) < 1e-14                                # measured 8.6e-16


# ----------------------------------------------------------------------------- section 4


@pytest.mark.parametrize("kind,full,E", [("mlmoc", True, 5), ("emoc", False, None),
                                         ("eer", False, None)])
def test_a5_a6_a7_scores_equal_loops_over_augmented_solves(kind, full, E):
    """(A5) MLMOC, (A6) EMOC, (A7) EER and label flips: the vectorised scores against
    loops over candidates and labels, each look-ahead an explicit augmented solve."""
    p = random_problem(3, E=E, full=full)
    st, spec, _ = _system(p, jitter=1e-4)
    fast = np.asarray(la.score_candidates(kind, spec, st)[0])[:len(p["idx"][1])]
    ref = loop_scores(p, kind, lam_of(p, 1e-4), full)
    # measured ≤ 1.0e-15 relative; bound 1e-13
    np.testing.assert_allclose(fast, ref, rtol=1e-13, atol=1e-14)


def test_a5_expanded_mlmoc_norm():
    """(A5) ‖b + a c‖ = √(‖b‖² + 2a (b·c) + a²‖c‖²), the form evaluated for B = 1."""
    rng = np.random.RandomState(4)
    b, c, a = rng.randn(20, 3), rng.randn(3), rng.randn(20)
    direct = np.linalg.norm(b + a[:, None] * c[None, :], axis=-1)
    expanded = np.sqrt(np.sum(b * b, -1) + 2 * a * (b @ c) + a * a * (c @ c))
    assert rel_err(expanded, direct) < 1e-14                         # measured 7.7e-17


def test_a8_factorised_mlmoc_when_the_reference_is_linear():
    """(A8) With r = 0 (b = 0), MLMOC(x′_j) = ‖c_j‖ Σ_i |A_ij|: the library's scores, the
    factorised form built from direct solves, and the loop twin agree."""
    p = random_problem(5, resid=False)
    st, spec, _ = _system(p)
    iL, iU, _ = p["idx"]
    lam, C, U = lam_of(p, 1e-3), p["num_classes"], len(iU)
    a = _direct(p, lam, iL, iU) - p["k_uu"]                           # A (E = U)
    u = p["k_uu"].diagonal() + lam - _direct(p, lam, iL, iU).diagonal()
    y = np.eye(C)[np.argmax(p["f_u"], -1)]
    c = (p["f_u"] - y) / u[:, None]                                  # f^lin_L = f_L
    factorised = np.linalg.norm(c, axis=-1) * np.abs(a).sum(0)
    fast = np.asarray(la.score_candidates("mlmoc", spec, st)[0])[:U]
    assert rel_err(factorised, loop_scores(p, "mlmoc", lam, False)) < 1e-14   # 1.1e-16
    assert rel_err(fast, factorised) < 1e-14                                  # 1.1e-16


# ----------------------------------------------------------------------------- section 5


@pytest.mark.parametrize("full,E", [(False, None), (True, 4)], ids=["scalar", "full-E"])
def test_a9_a10_a11_sequential_update_equals_rebuild(full, E):
    """(A9) Lc⁺ = [[Lc, 0], [lᵀ, d]]; (A10) A⁺ = A + w_E u_s⁻¹ w_Uᵀ with w = −A[:, s];
    (A11) u⁺ and f^lin⁺: after each of three steps, against a fresh factorisation and a
    system rebuilt on L ∪ picks (λ held fixed)."""
    p = random_problem(6, E=E, full=full, U=10)
    jitter = 1e-3
    lam = lam_of(p, jitter)
    st, spec, _ = _system(p, jitter, capacity=10, sequential=True)
    iL, iU, iE = p["idx"]
    b, C = spec.block, p["num_classes"]
    ev = iE if E else iU
    picks, labels = [3, 7, 0], [1, 0, 2]
    for t, (j, y) in enumerate(zip(picks, labels), start=1):
        a_before = _stored_a(st, E, len(ev) * b, len(iU) * b)          # A (E·B, U·B)
        u_s = np.asarray(st.schur)[j]
        st = la.add_labeled(spec, st, np.int32(j), np.int32(y))
        train = np.concatenate([iL, iU[picks[:t]]])
        n = len(train) * b
        k = flat(p["k_all"][np.ix_(train, train)]) + lam * np.eye(n)
        # (A9): measured 4.7e-16; bound 1e-14
        assert rel_err(np.asarray(st.chol)[:n, :n], np.linalg.cholesky(k)) < 1e-14
        # (A10) written out: w = −A[:, s] and A + w_E u_s⁻¹ w_Uᵀ, against the rebuilt A
        w_e = -a_before[:, j * b:(j + 1) * b]                         # w on E
        prev = np.concatenate([iL, iU[picks[:t - 1]]])
        w_u = -_a_uu_of(p, lam, prev, iU, b)[:, j * b:(j + 1) * b]     # w on U
        m_new = flat(p["k_all"][np.ix_(ev, train)]) @ np.linalg.solve(
            k, flat(p["k_all"][np.ix_(train, iU)]))
        a_new = m_new - flat(p["k_all"][np.ix_(ev, iU)])
        by_formula = a_before + w_e @ np.linalg.inv(u_s) @ w_u.T
        assert rel_err(by_formula, a_new) < 1e-13                     # measured 1.4e-15
        a_lib = _stored_a(st, E, len(ev) * b, len(iU) * b)
        assert rel_err(a_lib, a_new) < 1e-13                          # measured 1.4e-15
        # (A11): Schur complements of the candidates still available, and f^lin on E
        avail = np.asarray(st.available)[:len(iU)]
        m_uu = _a_uu_of(p, lam, train, iU, b) + flat(p["k_all"][np.ix_(iU, iU)])
        kap = flat(p["k_all"][np.ix_(iU, iU)])
        u_new = np.stack([kap[i * b:(i + 1) * b, i * b:(i + 1) * b] + lam * np.eye(b)
                          - m_uu[i * b:(i + 1) * b, i * b:(i + 1) * b]
                          for i in range(len(iU))])
        # measured 1.2e-15; bound 1e-13
        assert rel_err(np.asarray(st.schur)[:len(iU)][avail], u_new[avail]) < 1e-13
        tgt = np.eye(C)[np.concatenate([p["y_l"], labels[:t]])]
        ftr = np.concatenate([p["f_l"], p["f_u"][picks[:t]]])
        f_ev = p["f_e"] if E else p["f_u"]
        lin = krr(p["k_all"], train, ev, tgt, f_ev, ftr, lam, full)
        got = np.asarray(st.lin_e if E else st.lin_u).reshape(-1, C)[:len(ev)]
        assert rel_err(got, lin) < 1e-13                              # measured 9.9e-16


def _stored_a(st, E, rows, cols):
    """A (E·B × U·B, padding cut) from the state's candidate-major Aᵀ."""
    return np.asarray(st.a_ue if E else st.a_uu).T[:rows, :cols]


def _a_uu_of(p, lam, train, iU, b):
    """A on U × U of the system on ``train``: Θ(U,X) K⁻¹ Θ(X,U) − Θ(U,U), direct solve."""
    k = flat(p["k_all"][np.ix_(train, train)])
    m = flat(p["k_all"][np.ix_(iU, train)]) @ np.linalg.solve(
        k + lam * np.eye(k.shape[0]), flat(p["k_all"][np.ix_(train, iU)]))
    return m - flat(p["k_all"][np.ix_(iU, iU)])


# ----------------------------------------------------------------------------- section 6


def test_a12_padding_leaves_the_system_unchanged():
    """(A12) Capacity N > L (identity rows, zero residuals) and U padded to the chunk:
    the same f^lin, u, A rows and scores as the unpadded system."""
    p = random_problem(7, U=11)
    U = 11
    st0, spec0, _ = la.build_system(**system_kwargs(p), jitter=1e-3, chunk_size=11)
    st1, spec1, _ = la.build_system(**system_kwargs(p), jitter=1e-3, chunk_size=4,
                                    capacity=20)
    assert st1.chol.shape == (20, 20) and st1.kappa.shape[0] == 12
    np.testing.assert_array_equal(np.asarray(st1.chol)[7:, 7:], np.eye(13))
    for name in ("lin_u", "schur"):
        # measured 0 to 2e-16; bound 1e-14
        assert rel_err(np.asarray(getattr(st1, name))[:U],
                       np.asarray(getattr(st0, name))[:U]) < 1e-14
    s0 = np.asarray(la.score_candidates("emoc", spec0, st0)[0])
    s1 = np.asarray(la.score_candidates("emoc", spec1, st1)[0])
    assert rel_err(s1[:U], s0) < 1e-14 and s1[U] == -np.inf


# ----------------------------------------------------------------------------- section 7


def _dense_net(p, x):
    """A sequence-like dense layer (S = 2 positions, bias), then a plain one (S = 1)."""
    h = jnp.tanh(x @ p["w1"] + p["b1"][None, None, :])                 # (n, 2, 16)
    return h.mean(axis=1) @ p["w2"] + p["b2"][None, :]


def _dense_params():
    ks = jax.random.split(jax.random.key(0), 4)
    return {"w1": jax.random.normal(ks[0], (8, 16), jnp.float64) / np.sqrt(8),
            "b1": jax.random.normal(ks[1], (16,), jnp.float64),
            "w2": jax.random.normal(ks[2], (16, 3), jnp.float64) / 4.0,
            "b2": jax.random.normal(ks[3], (3,), jnp.float64)}


def _structured_blocks(feats):
    """Σ_{s,t} (a_s·a′_t [+ 1])(δ_s·δ′_t) of every structured layer, scalar output."""
    out = []
    for a, d, bias in zip(feats.acts, feats.cots, feats.bias):
        ga = jnp.einsum("isd,jtd->ijst", a, a) + (1.0 if bias else 0.0)
        gd = jnp.einsum("ikse,jkte->ijst", d, d)
        out.append(np.asarray(jnp.sum(ga * gd, axis=(2, 3))))
    return out


def _leaf_gram(f, params, x, names):
    """jacrev Gram of the first logit over the leaves ``names`` only (others fixed)."""
    def g(sub):
        return f({**params, **sub}, x)[:, 0]
    return np.asarray(jacobian_gram(g, {k: params[k] for k in names}, jit=True))


def test_a13_dense_layer_rows_and_kernel_block():
    """(A13) ∂z/∂W = Σ_s a_s ⊗ δ_s, ∂z/∂b = Σ_s δ_s, and the block
    Σ_{s,t}(a_s·a′_t + 1)(δ_s·δ′_t), from the engine's recorded a and δ, against jacrev."""
    params = _dense_params()
    x = jax.random.normal(jax.random.key(1), (5, 2, 8), jnp.float64)
    feats = ntk_features(_dense_net, params, x, output="first_logit",
                         implementation="structured")
    assert [a.shape for a in feats.acts] == [(5, 2, 8), (5, 1, 16)]   # both structured
    assert feats.bias == (True, True) and feats.rows.shape[-1] == 0
    a, d = feats.acts[0], feats.cots[0][:, 0]                          # (n, S, D_in/out)
    jw = jax.jacrev(lambda w: _dense_net({**params, "w1": w}, x)[:, 0])(params["w1"])
    jb = jax.jacrev(lambda b: _dense_net({**params, "b1": b}, x)[:, 0])(params["b1"])
    # measured 1.1e-16 to 7.2e-16; bound 1e-14
    assert rel_err(jnp.einsum("isd,ise->ide", a, d), jw) < 1e-14
    assert rel_err(d.sum(axis=1), jb) < 1e-14
    blocks = _structured_blocks(feats)
    assert rel_err(blocks[0], _leaf_gram(_dense_net, params, x, ["w1", "b1"])) < 1e-14
    assert rel_err(blocks[1], _leaf_gram(_dense_net, params, x, ["w2", "b2"])) < 1e-14


def _conv_net(p, x):
    """One strided VALID convolution with 4 output positions, then a dense read-out."""
    h = lax.conv_general_dilated(x, p["c"], (2, 2), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h).reshape(x.shape[0], -1) @ p["w"]


def test_a14_conv_layer_patches_and_kernel_block():
    """(A14) A convolution is (A13) on its input patches: the engine's a are the patches
    (lax.conv_general_dilated_patches), and Σ_{s,t}(a_s·a′_t)(δ_s·δ′_t) is the jacrev Gram
    over the filter."""
    ks = jax.random.split(jax.random.key(2), 3)
    params = {"c": jax.random.normal(ks[0], (3, 3, 4, 32), jnp.float64) / 6.0,
              "w": jax.random.normal(ks[1], (4 * 32, 2), jnp.float64) / 11.0}
    x = jax.random.normal(ks[2], (4, 5, 5, 4), jnp.float64)
    feats = ntk_features(_conv_net, params, x, output="first_logit",
                         implementation="structured")
    # S = 4 output positions, D_in = 3·3·4 = 36, D_out = 32: S²(D_in + D_out) = 1088 ≤
    # D_in·D_out = 1152, so the engine keeps the conv structured.
    assert feats.acts[0].shape == (4, 4, 36)
    patches = lax.conv_general_dilated_patches(x, (3, 3), (2, 2), "VALID",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # the patches' feature order is (C_in, kh, kw); the engine's is (kh, kw, C_in)
    patches = patches.reshape(4, 4, 4, 3, 3).transpose(0, 1, 3, 4, 2).reshape(4, 4, 36)
    assert rel_err(feats.acts[0], patches) < 1e-15                    # pure data movement
    block = _structured_blocks(feats)[0]
    assert rel_err(block, _leaf_gram(_conv_net, params, x, ["c"])) < 2e-14  # measured 1.8e-15


def _mixed_net(p, x):
    """Conv (rows cheaper: S = 16), a weight used twice (fallback rows), folded biases."""
    h = lax.conv_general_dilated(x, p["c"], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + p["cb"][None, None, None, :]).mean(axis=(1, 2))
    h = jnp.tanh(h @ p["tied"]) @ p["tied"].T
    return h @ p["w"] + p["b"][None, :]


def test_a15_whole_kernel_equals_jacobian_gram():
    """(A15) Θ = R R′ᵀ + Σ_l structured blocks equals the full Jacobian's J Jᵀ (the
    C × C-block kernel, ``output="full"``: K = C outputs per example)."""
    output = "full"
    ks = jax.random.split(jax.random.key(3), 5)
    params = {"c": jax.random.normal(ks[0], (3, 3, 2, 3), jnp.float64) / 4.0,
              "cb": jax.random.normal(ks[1], (3,), jnp.float64),
              "tied": jax.random.normal(ks[2], (3, 3), jnp.float64) / 2.0,
              "w": jax.random.normal(ks[3], (3, 3), jnp.float64),
              "b": jax.random.normal(ks[4], (3,), jnp.float64)}
    x = jax.random.normal(jax.random.key(4), (5, 4, 4, 2), jnp.float64)
    feats = ntk_features(_mixed_net, params, x, output=output, implementation="structured")
    assert feats.rows.shape[-1] > 0 and len(feats.acts) >= 1        # both kinds present
    k = empirical_ntk_fn(_mixed_net, output=output, implementation="structured")(params, x)
    # measured 3.2e-16; bound 1e-14
    assert rel_err(k, brute_force_ntk(_mixed_net, params, x, x, output)) < 1e-14


# ----------------------------------------------------------------------------- citations


def test_every_cited_docs_file_exists_and_algebra_citations_resolve():
    """Every ``docs/...`` path that a docstring, comment, README or docs page cites is in
    the repository; no library file cites MATH.md (it is not in the repository); every
    ``docs/ALGEBRA.md §N`` / ``A<n>`` citation names a section / identity the page has."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    for folder in ("lookahead_jax", "experiments", "benchmarks", "tools", "tests"):
        files += sorted((repo / folder).rglob("*.py"))
    algebra = (repo / "docs" / "ALGEBRA.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", algebra, re.M))
    identities = set(re.findall(r"\*\*\(A(\d+)\)", algebra))
    assert sections == {str(i) for i in range(1, 8)} and identities == {
        str(i) for i in range(1, 16)}
    missing, cited = [], 0
    for path in files:
        text = path.read_text()
        rel = path.relative_to(repo)
        if rel.parts[0] == "lookahead_jax":
            assert "MATH.md" not in text, f"{rel} cites MATH.md, which is not in the repo"
        for m in re.finditer(r"(?<![\w/])docs/[\w/-]*(?:\.\w+)+", text):
            cited += 1
            if not (repo / m.group(0)).exists():
                missing.append(f"{rel}: {m.group(0)}")
        for sec, ids in re.findall(r"docs/ALGEBRA\.md(?: §(\d+))?,? ?((?:A\d+[-, ]*)*)", text):
            assert not sec or sec in sections, (rel, sec)
            for n in re.findall(r"A(\d+)", ids):
                assert n in identities, (rel, f"A{n}")
    assert cited > 10 and not missing, missing
