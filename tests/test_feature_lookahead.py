"""Feature-space look-ahead (lookahead_jax/feature_lookahead.py) vs the dense algebra of
lookahead.py on the same kernel Φ Φᵀ, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import feature_lookahead as fla
from lookahead_jax import lookahead as la

C = 3


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _problem(L, U, E, k, seed=0):
    r = np.random.default_rng(seed)
    phi = lambda n: r.normal(size=(n, k)) * (1 + r.random((n, 1)))
    return dict(phi_l=phi(L), phi_u=phi(U), phi_e=None if E is None else phi(E),
                y_l=r.integers(0, C, L), f_l=r.normal(size=(L, C)), f_u=r.normal(size=(U, C)),
                f_e=None if E is None else r.normal(size=(E, C)))


def _dense(p, steps=0, jitter=1e-2):
    g = lambda a, b: jnp.asarray(a @ b.T)
    kw = {}
    if p["phi_e"] is not None:
        kw = dict(k_el=g(p["phi_e"], p["phi_l"]), k_eu=g(p["phi_e"], p["phi_u"]),
                  f_e=jnp.asarray(p["f_e"]))
    L = p["phi_l"].shape[0]
    return la.build_system(g(p["phi_l"], p["phi_l"]), g(p["phi_u"], p["phi_l"]),
                           jnp.asarray(p["y_l"]), jnp.asarray(p["f_l"]),
                           jnp.asarray(p["f_u"]), num_classes=C,
                           k_uu=g(p["phi_u"], p["phi_u"]), capacity=L + steps,
                           jitter=jitter, chunk_size=4, sequential=steps > 0, **kw)


def _feat(p, jitter=1e-2):
    e = {} if p["phi_e"] is None else dict(phi_e=jnp.asarray(p["phi_e"]),
                                          f_e=jnp.asarray(p["f_e"]))
    return fla.build_feature_system(jnp.asarray(p["phi_l"]), jnp.asarray(p["y_l"]),
                                    jnp.asarray(p["f_l"]), jnp.asarray(p["phi_u"]),
                                    jnp.asarray(p["f_u"]), num_classes=C, jitter=jitter,
                                    chunk_size=4, **e)


def _close(a, b):
    # float64: the dense path's Schur complement κ + λ − ‖W‖² cancels to λ ≈ 1e-2·κ,
    # losing ~2 digits; both then agree to ~1e-12 relative. A wrong term is O(1) off.
    a, b = np.asarray(a), np.asarray(b)
    fin = np.isfinite(b)
    assert (np.isfinite(a) == fin).all()
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-9, atol=1e-9 * np.abs(b[fin]).max())


# L > k: K = ΦΦᵀ is rank-deficient (only the ridge makes it invertible); L < k: full rank.
@pytest.mark.parametrize("L,k,E", [(9, 5, None), (4, 7, 6)])
def test_batch_scores_equal_dense(x64, L, k, E):
    p = _problem(L, 10, E, k)
    st_d, spec_d, _ = _dense(p)
    st_f, spec_f, _ = _feat(p)
    assert spec_d == spec_f
    _close(st_f.lin_u, st_d.lin_u)
    _close(st_f.schur, st_d.schur)
    for kind in la.KINDS:
        s_d, c_d = la.score_candidates(kind, spec_d, st_d)
        s_f, c_f = fla.score_candidates(kind, spec_f, st_f)
        _close(s_f, s_d)
        assert int(c_f) == int(c_d)
        if kind != "label_flip":                           # (ties: integer counts / E)
            np.testing.assert_array_equal(np.argsort(-np.asarray(s_f))[:4],
                                          np.argsort(-np.asarray(s_d))[:4])


@pytest.mark.parametrize("E", [None, 6])
def test_sequential_steps_equal_dense(x64, E):
    p = _problem(9, 10, E, 5, seed=1)
    st_d, spec, _ = _dense(p, steps=3)
    st_f, spec_f, _ = _feat(p)
    for step, (j, y) in enumerate([(2, 1), (7, 0), (4, 2)]):
        for kind in ("mlmoc", "eer"):
            s_d, _ = la.score_candidates(kind, spec, st_d, ref_is_lin=step > 0)
            s_f, _ = fla.score_candidates(kind, spec_f, st_f, ref_is_lin=step > 0)
            _close(s_f, s_d)
        st_d = la.add_labeled(spec, st_d, j, y)
        st_f = fla.add_labeled(spec_f, st_f, j, y)
        _close(st_f.lin_u, st_d.lin_u)
        _close(st_f.schur, st_d.schur)
        if E is not None:
            _close(st_f.lin_e, st_d.lin_e)


def test_clamped_schur_complements_are_counted_like_dense(x64):
    # a candidate that duplicates a labeled point: u ≈ λ, clamped when u_floor·κ > u
    p = _problem(6, 8, None, 4, seed=2)
    p["phi_u"][3] = p["phi_l"][0] * 50.0
    st_d, spec, _ = la.build_system(*(jnp.asarray(a @ b.T) for a, b in
                                      [(p["phi_l"], p["phi_l"]), (p["phi_u"], p["phi_l"])]),
                                    jnp.asarray(p["y_l"]), jnp.asarray(p["f_l"]),
                                    jnp.asarray(p["f_u"]), num_classes=C,
                                    k_uu=jnp.asarray(p["phi_u"] @ p["phi_u"].T),
                                    jitter=1e-6, u_floor=1e-3, chunk_size=4)
    st_f, spec_f, _ = fla.build_feature_system(
        *(jnp.asarray(p[n]) for n in ("phi_l", "y_l", "f_l", "phi_u", "f_u")),
        num_classes=C, jitter=1e-6, u_floor=1e-3, chunk_size=4)
    s_d, c_d = la.score_candidates("mlmoc", spec, st_d)
    s_f, c_f = fla.score_candidates("mlmoc", spec_f, st_f)
    assert int(c_d) == int(c_f) >= 1
    np.testing.assert_allclose(np.asarray(s_f), np.asarray(s_d), rtol=1e-6)


def test_jitter_zero_is_refused():
    p = _problem(3, 4, None, 2)
    with pytest.raises(ValueError, match="jitter > 0"):
        fla.build_feature_system(*(jnp.asarray(p[n], jnp.float32 if n[0] != "y" else None)
                                   for n in ("phi_l", "y_l", "f_l", "phi_u", "f_u")),
                                 num_classes=C, jitter=0.0)
