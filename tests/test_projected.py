"""Projected NTK features (lookahead_jax/ntk/projected.py): float64 twins and JL statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lookahead_jax.ntk import empirical as emp
from lookahead_jax.ntk import projected as pj


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def mlp(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]


def cnn(p, x):
    h = lax.conv_general_dilated(x, p["k1"], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h + p["c1"][None, None, None])
    h = h * p["scale"][None, None, None]            # a fallback leaf (not a dot weight)
    return h.mean((1, 2)) @ p["w"]


def unstructured(p, x):
    # ``* 1.0`` hides the weights from the structured engine: every leaf is a fallback row
    return jnp.tanh(x @ (p["w"] * 1.0)) @ (p["v"] * 1.0)


def _params(kind, dtype):
    k = jax.random.split(jax.random.key(0), 6)
    n = lambda i, s: jax.random.normal(k[i], s, dtype) / np.sqrt(s[0] if len(s) > 1 else 1)
    if kind == "mlp":
        return dict(w1=n(0, (12, 20)), b1=n(1, (20,)), w2=n(2, (20, 3)), b2=n(3, (3,)))
    if kind == "cnn":
        return dict(k1=n(0, (3, 3, 2, 5)) / 3, c1=n(1, (5,)), scale=1 + n(2, (5,)),
                    w=n(3, (5, 3)))
    return dict(w=n(0, (12, 16)), v=n(1, (16, 3)))


def _x(kind, n, dtype):
    shape = (n, 6, 6, 2) if kind == "cnn" else (n, 12)
    return jax.random.normal(jax.random.key(1), shape, dtype)


_NETS = dict(mlp=mlp, cnn=cnn, unstructured=unstructured)


def _explicit(kind, output, key, dim, dtype, sketch):
    """Explicit per-example Jacobian rows, projected with kron(P_in, P_out), the
    column-wise Khatri–Rao (P_in ⊙ P_out)/√k, or R_r."""
    f, params = _NETS[kind], _params(kind, dtype)
    x = _x(kind, 5, dtype)
    g, prog, layers, fallback, _ = emp._structured_plan(f, params, (1, *x.shape[1:]),
                                                        x.dtype, output)
    layout = pj.layout_of(f, params, x.shape[1:], x.dtype, output=output,
                          projection_dim=dim, sketch=sketch)
    leaves, treedef = jax.tree.flatten(params)
    jac = jax.vmap(jax.jacrev(lambda ls, xi: g(ls, xi[None])[0]), in_axes=(None, 0))(
        leaves, x)                                           # per leaf (n, K, *shape)
    n, kk = x.shape[0], jac[0].shape[1]
    parts = []
    for i, (layer, block) in enumerate(zip(layers, layout.blocks)):
        w = jac[layer.leaf].reshape(n, kk, -1, layer.d_out)  # (n, K, D_in, D_out)
        if layer.bias is not None:
            w = jnp.concatenate([w, jac[layer.bias].reshape(n, kk, 1, layer.d_out)], axis=2)
        p_in, p_out = pj.layer_matrices(key, block, i, dtype)
        p_in, p_out = np.asarray(p_in), np.asarray(p_out)
        if block.sketch == "khatri_rao":                      # column r: p_in,r ⊗ p_out,r
            m = np.einsum("ir,or->ior", p_in, p_out).reshape(-1, block.k_in)
            m = m / np.sqrt(block.k_in)
        else:
            m = np.kron(p_in, p_out)                          # (D_in·D_out, k_in·k_out)
        parts.append(np.asarray(w.reshape(n, kk, -1)) @ m)
    if fallback:
        rows = np.concatenate([np.asarray(jac[i]).reshape(n, kk, -1) for i in fallback], -1)
        r = np.asarray(pj.row_matrix(key, layout.blocks[-1], len(layout.blocks) - 1, dtype))
        parts.append(rows @ r)
    phi = np.concatenate(parts, axis=-1)
    return f, params, x, (phi[:, 0] if output == "first_logit" else phi.reshape(n, -1))


# The CNN has a conv layer with a folded bias, a dense layer and a fallback leaf (the
# dense row projection), and ``trace`` has C = 3 feature groups: each sketch on it covers
# every code path; the MLP adds a dense layer with a folded bias under first_logit.
@pytest.mark.parametrize("kind,output,sketch", [
    ("mlp", "first_logit", "khatri_rao"), ("cnn", "trace", "kronecker"),
    ("cnn", "trace", "khatri_rao")])
def test_structured_projection_equals_projected_jacobian_rows(x64, kind, output, sketch):
    key = jax.random.key(7)
    f, params, x, want = _explicit(kind, output, key, 48, jnp.float64, sketch)
    layout = pj.layout_of(f, params, x.shape[1:], x.dtype, output=output,
                          projection_dim=48, sketch=sketch)
    if kind != "unstructured":       # the sketch under test is really used (not P = I)
        assert any(b.kind == "layer" and b.sketch == sketch and b.dim < b.d_in * b.d_out
                   for b in layout.blocks), layout
    got = pj.projected_features(f, params, x, key=key, projection_dim=48, output=output,
                                chunk_size=2, sketch=sketch)
    # float64 rounding of a few hundred products: ~1e-15 relative; a wrong layout,
    # factor or key is O(1) off.
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-11,
                               atol=1e-12 * np.abs(want).max())


def test_same_key_same_projection_and_chunking_changes_nothing(x64):
    f, params = mlp, _params("mlp", jnp.float64)
    x = _x("mlp", 7, jnp.float64)
    a = pj.projected_features(f, params, x, key=jax.random.key(3), projection_dim=64)
    b = pj.projected_features(f, params, x, key=jax.random.key(3), projection_dim=64,
                              chunk_size=3)
    c = pj.projected_features(f, params, x, key=jax.random.key(4), projection_dim=64)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def _mean_sq_error(f, params, x, exact, dim, reps, sketch="khatri_rao"):
    errs = []
    for r in range(reps):
        phi = pj.projected_features(f, params, x, key=jax.random.key(100 + r),
                                    projection_dim=dim, sketch=sketch)
        errs.append(float(np.sum((np.asarray(pj.projected_kernel(phi, phi)) - exact) ** 2)))
    return float(np.mean(errs))


REPS = 64
# The mean of REPS squared Frobenius errors: each is a sum of squared (roughly χ²-like,
# relative std ≤ √3) errors, so the mean's relative std is ≤ √3/√64 ≈ 0.22; [0.5, 1.6]
# is beyond 2.5σ on both sides (fixed seeds: the test is deterministic).
LO, HI = 0.5, 1.6


def test_dense_projection_error_is_jl(x64):
    """E‖φφᵀ − Θ‖²_F = Σ_ij (Θ_ii Θ_jj + Θ_ij²)/k for a Gaussian projection (exact)."""
    f, params = unstructured, _params("unstructured", jnp.float64)
    x = _x("unstructured", 6, jnp.float64)
    exact = np.asarray(emp.empirical_ntk_fn(f, implementation="jacobian")(params, x))
    d = np.diag(exact)
    for dim in (16, 128):
        predicted = np.sum(np.outer(d, d) + exact ** 2) / dim
        ratio = _mean_sq_error(f, params, x, exact, dim, REPS) / predicted
        assert LO < ratio < HI, (dim, ratio)


def test_kronecker_projection_error_is_a_product_of_two_jl(x64):
    """S = 1 layer: (a·M_in a′)(δ·M_out δ′), two independent JL estimates; the layers'
    errors are independent, so E‖K̂ − Θ‖² = Σ_l Σ_ij σx²σy² + σx² y² + σy² x²."""
    f, params = mlp, _params("mlp", jnp.float64)
    x = _x("mlp", 6, jnp.float64)
    feats = emp.ntk_features(f, params, x, implementation="structured")
    exact = np.asarray(emp.kernel_from_features(feats, feats))
    for dim in (64, 256):
        layout = pj.layout_of(f, params, x.shape[1:], x.dtype, projection_dim=dim,
                              sketch="kronecker")
        predicted = 0.0
        for a, dl, blk in zip(feats.acts, feats.cots, layout.blocks):
            a = np.concatenate([np.asarray(a[:, 0]), np.ones((x.shape[0], 1))], 1)
            dl = np.asarray(dl[:, 0, 0])
            ga, gd = a @ a.T, dl @ dl.T
            va = 0 if blk.k_in == blk.d_in else (np.outer(np.diag(ga), np.diag(ga))
                                                 + ga ** 2) / blk.k_in
            vd = 0 if blk.k_out == blk.d_out else (np.outer(np.diag(gd), np.diag(gd))
                                                   + gd ** 2) / blk.k_out
            predicted += np.sum(va * vd + va * gd ** 2 + vd * ga ** 2)
        ratio = _mean_sq_error(f, params, x, exact, dim, REPS, "kronecker") / predicted
        assert LO < ratio < HI, (dim, ratio)


def _kr_variance(gs, k):
    """Σ_ij of the Khatri–Rao formula (module docstring) for per-example G_i (n, a, b)."""
    n2 = np.einsum("iab->i", gs ** 2)
    t = np.einsum("iab,jab->ij", gs, gs)                          # Θ_l
    ggt = np.einsum("iab,jcb->ijac", gs, gs)                      # G_i G_jᵀ
    gtg = np.einsum("iab,jac->ijbc", gs, gs)                      # G_iᵀ G_j
    v = (np.outer(n2, n2) + t ** 2 + 2 * np.einsum("ijac->ij", ggt ** 2)
         + 2 * np.einsum("ijbc->ij", gtg ** 2) + 2 * np.einsum("ijbc,ijcb->ij", gtg, gtg))
    return float(np.sum(v)) / k


def test_khatri_rao_error_matches_its_variance_formula(x64):
    """Per layer E(φ·φ′ − Θ)² = (‖G‖²‖G′‖² + Θ² + 2‖GG′ᵀ‖² + 2‖GᵀG′‖² + 2tr((GᵀG′)²))/k;
    the layers' keys are independent, so the Frobenius errors add."""
    f, params = mlp, _params("mlp", jnp.float64)
    x = _x("mlp", 6, jnp.float64)
    feats = emp.ntk_features(f, params, x, implementation="structured")
    exact = np.asarray(emp.kernel_from_features(feats, feats))
    for dim in (16, 128):
        layout = pj.layout_of(f, params, x.shape[1:], x.dtype, projection_dim=dim)
        predicted = 0.0
        for a, dl, blk in zip(feats.acts, feats.cots, layout.blocks):
            if blk.sketch != "khatri_rao":                    # D_in·D_out ≤ share: exact
                assert blk.dim == blk.d_in * blk.d_out, blk
                continue
            a = np.concatenate([np.asarray(a[:, 0]), np.ones((x.shape[0], 1))], 1)
            gs = np.einsum("ia,ib->iab", a, np.asarray(dl[:, 0, 0]))   # G = a δᵀ (S = 1)
            predicted += _kr_variance(gs, blk.k_in)
        ratio = _mean_sq_error(f, params, x, exact, dim, REPS) / predicted
        assert LO < ratio < HI, (dim, ratio)


def test_bad_sketch_is_one_clear_error():
    with pytest.raises(ValueError, match="sketch must be one of 'khatri_rao', 'kronecker'"):
        pj.projected_features(mlp, _params("mlp", jnp.float32), _x("mlp", 2, jnp.float32),
                              key=jax.random.key(0), projection_dim=8, sketch="dense")


def test_bad_projection_dim_is_one_clear_error():
    with pytest.raises(ValueError, match="projection_dim must be a positive integer"):
        pj.projected_features(mlp, _params("mlp", jnp.float32), _x("mlp", 2, jnp.float32),
                              key=jax.random.key(0), projection_dim=0)
