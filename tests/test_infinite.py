"""Infinite-width ReLU MLP kernels against neural-tangents' golden values."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax.ntk.infinite import infinite_mlp_kernels
from twins import jacobian_gram

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


@pytest.fixture(scope="module")
def golden():
    if not (GOLDEN / "nt_golden.npz").exists():
        pytest.skip(f"golden files absent: {GOLDEN} (shared/ is cloned beside the repo in CI)")
    return dict(np.load(GOLDEN / "nt_params.npz")), dict(np.load(GOLDEN / "nt_golden.npz"))


def _rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


# neural-tangents' golden kernels are float64; ours agree to 1.8e-15 relative (measured:
# NNGP 1.81e-15, NTK 1.69e-15 standard / 1.72e-15 NTK parameterisation). 2e-14 (~10x)
# leaves room for another BLAS; a wrong constant or recursion step fails by far more.
GOLDEN_RTOL = 2e-14


@pytest.mark.parametrize("parameterization,key", [("standard", "mlp_inf_ntk_standard"),
                                                  ("ntk", "mlp_inf_ntk_ntkparam")])
def test_golden(golden, parameterization, key):
    params, gold = golden
    with jax.enable_x64(True):
        x1, x2 = jnp.asarray(params["x1"]), jnp.asarray(params["x2"])
        nngp, ntk = infinite_mlp_kernels(x1, x2, widths=(512, 512, 10),
                                         parameterization=parameterization)
        assert ntk.dtype == jnp.float64 and ntk.shape == (20, 30)
        assert _rel(nngp, gold["mlp_inf_nngp"]) <= GOLDEN_RTOL
        assert _rel(ntk, gold[key]) <= GOLDEN_RTOL


def test_symmetric_psd_and_default_x2():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (8, 5), dtype=jnp.float64)
        nngp, ntk = infinite_mlp_kernels(x, widths=(16, 16, 3))
        nngp2, ntk2 = infinite_mlp_kernels(x, x, widths=(16, 16, 3))
        np.testing.assert_allclose(ntk, ntk2)
        for k in (nngp, ntk):
            np.testing.assert_allclose(k, k.T, rtol=1e-12)
            assert np.linalg.eigvalsh(np.asarray(k)).min() > -1e-9


def test_expected_finite_ntk_monte_carlo():
    """Standard parametrisation = expectation of the finite NTK at init (loose MC check)."""
    d, width, n_init = 6, 256, 24
    x = jax.random.normal(jax.random.key(1), (4, d))
    _, ntk_inf = infinite_mlp_kernels(x, widths=(width, 1))

    def one(key):
        k1, k2, k3 = jax.random.split(key, 3)
        p = {"w1": jax.random.normal(k1, (d, width)) * np.sqrt(2 / d),
             "b1": jax.random.normal(k2, (width,)) * 0.1,
             "w2": jax.random.normal(k3, (width, 1)) * np.sqrt(2 / width)}
        f = lambda p, x: jax.nn.relu(x @ p["w1"] + p["b1"][None]) @ p["w2"]  # noqa: E731
        return jacobian_gram(lambda p: f(p, x)[:, 0], p)

    ntk_mc = jnp.mean(jax.vmap(one)(jax.random.split(jax.random.key(2), n_init)), axis=0)
    assert _rel(ntk_mc, np.asarray(ntk_inf)) < 0.1


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="known"):
        infinite_mlp_kernels(jnp.ones((2, 3)), widths=(4, 1), parameterization="mup")


def test_zero_input_without_bias_is_finite():
    """x = 0 with b_std = 0 has zero variance (0/0 in the arccos); other rows unchanged."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (4, 6), dtype=jnp.float64)
        xz = jnp.concatenate([jnp.zeros((1, 6)), x])
        nngp, ntk = infinite_mlp_kernels(xz, widths=(16, 16, 3), b_std=0.0)
        assert np.all(np.isfinite(nngp)) and np.all(np.isfinite(ntk))
        np.testing.assert_array_equal(nngp[0], 0.0)   # zero pre-activations at every layer
        ref_nngp, ref_ntk = infinite_mlp_kernels(x, widths=(16, 16, 3), b_std=0.0)
        np.testing.assert_allclose(nngp[1:, 1:], ref_nngp, rtol=1e-13)
        np.testing.assert_allclose(ntk[1:, 1:], ref_ntk, rtol=1e-13)
