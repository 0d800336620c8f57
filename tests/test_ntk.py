"""Tests of lookahead_jax.ntk: golden values from neural-tangents and brute-force twins."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.flatten_util import ravel_pytree

from lookahead_jax.ntk import empirical as ntk_lib
from lookahead_jax.ntk import (OUTPUTS, empirical_ntk_fn, kernel_from_features,
                               kernel_set, ntk_features, slice_features)
from twins import brute_force_ntk, rel_err

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden"
IMPLS = ("jacobian", "jvp_vjp", "structured", "auto")


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------------ golden
def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def golden_mlp(p, x):
    h = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(h @ p["W1"] + p["b1"][None])
    h = jax.nn.relu(h @ p["W2"] + p["b2"][None])
    return h @ p["W3"] + p["b3"][None]


def golden_cnn(p, x):
    h = jax.nn.relu(_conv(x, p["conv1_W"]) + p["conv1_b"][None, None, None])
    h = jax.nn.relu(_conv(h, p["conv2_W"]) + p["conv2_b"][None, None, None])
    return h.mean((1, 2)) @ p["dense_W"] + p["dense_b"][None]


@pytest.fixture(scope="module")
def golden():
    if not (GOLDEN / "nt_golden.npz").exists():
        pytest.skip(f"golden files absent: {GOLDEN} (shared/ is cloned beside the repo in CI)")
    return dict(np.load(GOLDEN / "nt_params.npz")), dict(np.load(GOLDEN / "nt_golden.npz"))


# Golden pairs are per entry, so a sub-block of x1 × x2 is checked (keeps float64 fast).
_SUB = {"mlp": (6, 7), "cnn": (3, 4)}
# neural-tangents computed the golden kernels in float64; every implementation and output
# agrees with them to at most 2.7e-15 relative (measured: cnn sum_logits, jacobian), so
# 3e-14 (~10x) is the bound: a wrong factor, term or layout fails by orders of magnitude.
GOLDEN_RTOL = 3e-14


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("implementation", IMPLS)
def test_golden(golden, x64, net, implementation):
    params_np, gold = golden
    p = {k[len(net) + 1:]: jnp.asarray(v) for k, v in params_np.items() if k.startswith(net + "_")}
    f = golden_mlp if net == "mlp" else golden_cnn
    n1, n2 = _SUB[net]
    x1, x2 = jnp.asarray(params_np["x1"][:n1]), jnp.asarray(params_np["x2"][:n2])
    np.testing.assert_allclose(f(p, x1), gold[f"{net}_f_x1"][:n1], rtol=1e-10, atol=1e-12)
    full = gold[f"{net}_ntk_full"][:n1, :n2]
    refs = {"first_logit": gold[f"{net}_ntk_logit0"][:n1, :n2],
            "trace": gold[f"{net}_ntk_mean"][:n1, :n2] * 10,
            "full": full,
            "sum_logits": full.sum((2, 3)) / 10}
    for output in OUTPUTS:
        k = empirical_ntk_fn(f, output=output, implementation=implementation)(p, x1, x2)
        assert k.dtype == jnp.float64
        assert rel_err(k, refs[output]) <= GOLDEN_RTOL, (output, rel_err(k, refs[output]))


# ------------------------------------------------------------------------ flax models
class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(12)(x))
        x = nn.relu(nn.Dense(10)(x))
        return nn.Dense(3)(x)


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=(2, 2), padding="VALID")(x))
        x = x.mean((1, 2))
        return nn.Dense(3)(x)


class WideBlockNet(nn.Module):
    """Pre-activation wide block with BatchNorm, a 1×1 projection shortcut and a residual."""

    @nn.compact
    def __call__(self, x, train=False):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        x = nn.Conv(4, (3, 3))(x)
        h = nn.relu(bn()(x))
        y = nn.Conv(6, (3, 3), strides=(2, 2))(h)
        y = nn.Conv(6, (3, 3), use_bias=False)(nn.relu(bn()(y)))
        x = y + nn.Conv(6, (1, 1), strides=(2, 2), use_bias=False)(h)
        x = nn.relu(bn()(x)).mean((1, 2))
        return nn.Dense(3)(x)


class TinyResNet(nn.Module):
    """Post-activation basic block (conv-BN-relu-conv-BN + identity), LayerNorm readout."""

    @nn.compact
    def __call__(self, x, train=False):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        x = nn.relu(bn()(nn.Conv(4, (3, 3), use_bias=False)(x)))
        y = nn.relu(bn()(nn.Conv(4, (3, 3), use_bias=False)(x)))
        y = bn()(nn.Conv(4, (3, 3), use_bias=False)(y))
        x = nn.relu(x + y)
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.LayerNorm()(nn.Dense(7)(x))
        return nn.Dense(3)(x)


def _init_flax(module, shape, key=0):
    x = jax.random.normal(jax.random.key(key), (6, *shape))
    variables = module.init(jax.random.key(key + 1), x[:1])
    if "batch_stats" in variables:  # move running statistics away from 0/1
        _, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **upd}
    state = {k: v for k, v in variables.items() if k != "params"}

    def f(p, xx):
        return module.apply({"params": p, **state}, xx, train=False)

    return f, variables["params"], x


FLAX = {"mlp": (TinyMLP(), (4, 4, 2)), "cnn": (TinyCNN(), (7, 7, 2)),
        "wrn": (WideBlockNet(), (8, 8, 2)), "resnet": (TinyResNet(), (6, 6, 2))}


# The built-in networks at test size (an unknown option name fails the test: an earlier
# version skipped them silently, and after a rename this test ran on nothing).
_LEAD = {"mlp": dict(widths=(8, 6)), "cnn": dict(channels=(3, 4)),
         "wide_resnet": dict(num_groups=1, widen_factor=1),
         "resnet18": dict(stage_sizes=(1,), base_width=2)}


def _reduce(full, output):
    if output == "full":
        return full
    if output == "trace":
        return jnp.einsum("ijkk->ij", full)
    if output == "sum_logits":
        return full.sum((2, 3)) / full.shape[-1]
    return full[:, :, 0, 0]


# (implementation, output) pairs checked on every model; the reductions of "full" are
# shared code, so jvp_vjp/jacobian are checked on fewer modes to keep compile time down.
_FLAX_GRID = ([("structured", o) for o in OUTPUTS]
              + [("jacobian", "first_logit"), ("jacobian", "trace"), ("jvp_vjp", "full")])


_FLAX_GRID_BN = [("structured", "trace"), ("structured", "full"), ("jacobian", "first_logit"),
                 ("jvp_vjp", "first_logit")]


@pytest.mark.parametrize("name", list(FLAX))
def test_flax_vs_brute_force(x64, name):
    module, shape = FLAX[name]
    f, params, x = _init_flax(module, shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    x1, x2 = x[:3], x[3:5]
    full = brute_force_ntk(f, params, x1, x2, "full")
    np.testing.assert_allclose(_reduce(full, "sum_logits"),
                               brute_force_ntk(f, params, x1, x2, "sum_logits"), rtol=1e-12)
    grid = _FLAX_GRID if name in ("mlp", "cnn") else _FLAX_GRID_BN
    for impl, output in grid:
        k = empirical_ntk_fn(f, output=output, implementation=impl)(params, x1, x2)
        assert rel_err(k, _reduce(full, output)) <= 1e-10, (impl, output)


@pytest.mark.parametrize("name", sorted(_LEAD))
def test_lead_models_vs_brute_force(name):
    from lookahead_jax import models

    model = models.get_model(name, 3, **_LEAD[name])
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
    v = model.init(jax.random.key(1), x[:1])
    state = v.state
    if state:                                   # statistics away from their 0/1 start
        _, state, _ = model.train_apply(v.params, v.state, x, jax.random.key(2))
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        f, params, x = model.bind(to64(state)), to64(v.params), jnp.asarray(x, jnp.float64)
        ref = brute_force_ntk(f, params, x[:2], x[2:4], "first_logit")
        k = empirical_ntk_fn(f, implementation="structured")(params, x[:2], x[2:4])
        assert rel_err(k, ref) <= 1e-10


def test_structured_recognises_layers():
    from lookahead_jax.ntk import structured as st
    f, params, x = _init_flax(WideBlockNet(), (8, 8, 2))
    leaves = jax.tree.leaves(params)
    prog = st.trace_program(lambda ls, xx: f(jax.tree.unflatten(jax.tree.structure(params), ls), xx),
                            (leaves, x[:1]))
    layers, fallback = st.analyse(prog, len(leaves))
    kinds = sorted(l.kind for l in layers)
    assert kinds == ["conv"] * 4 + ["dense"]        # 4 convs + readout
    # the biases of the first conv, the strided conv and the readout are folded into
    # their layers (h + b); BatchNorm scales/offsets fall back to Jacobian rows
    assert sum(l.bias is not None for l in layers) == 3
    assert len(fallback) == len(leaves) - 5 - 3


def test_batchnorm_stats_not_differentiated(x64):
    module, shape = FLAX["resnet"]
    f, params, x = _init_flax(module, shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    # The kernel equals the explicit J Jᵀ over the params alone, the statistics held as
    # constants (measured 6.4e-16 relative; bound 1e-14, ~15x). Symmetry and PSD alone
    # would hold for any Gram matrix, right or wrong.
    k = empirical_ntk_fn(f, output="trace")(params, x)
    assert rel_err(k, brute_force_ntk(f, params, x, x, "trace")) <= 1e-14
    feats = ntk_features(f, params, x, output="first_logit", implementation="jacobian")
    flat, _ = ravel_pytree(params)
    assert feats.rows.shape == (6, 1, flat.size)   # params only
    # the rows are the Jacobian's columns in the engine's own order: compare their Gram
    # with the jacrev Gram of the first logit (measured 1.5e-16)
    assert rel_err(jnp.einsum("icp,jcp->ij", feats.rows, feats.rows),
                   brute_force_ntk(f, params, x, x, "first_logit")) <= 1e-14


def test_default_float32_and_precision():
    """float32 by default, and its values those of the float64 brute-force twin to float32
    rounding (measured 6.4e-8 first_logit, 1.9e-8 full; bound 1e-6, ~15x)."""
    f, params, x = _init_flax(TinyMLP(), (4, 4, 2))
    k = empirical_ntk_fn(f, precision=lax.Precision.HIGHEST)(params, x)
    assert k.dtype == jnp.float32 and k.shape == (6, 6)
    full = empirical_ntk_fn(f, output="full")(params, x[:2], x[2:5])
    assert full.dtype == jnp.float32 and full.shape == (2, 3, 3, 3)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x64_ = jnp.asarray(x, jnp.float64)
        assert rel_err(k, brute_force_ntk(f, p64, x64_, x64_, "first_logit")) <= 1e-6
        assert rel_err(full, brute_force_ntk(f, p64, x64_[:2], x64_[2:5], "full")) <= 1e-6


# ----------------------------------------------------------------- chunking & features
@pytest.mark.parametrize("implementation,output", [("structured", "full"),
                                                   ("jacobian", "first_logit"),
                                                   ("jvp_vjp", "first_logit")])
def test_chunked_equals_unchunked(x64, implementation, output):
    f, params, x = _init_flax(TinyCNN(), (7, 7, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    whole = empirical_ntk_fn(f, output=output, implementation=implementation)(params, x, x[:5])
    chunked = empirical_ntk_fn(f, output=output, implementation=implementation,
                               chunk_size=2)(params, x, x[:5])
    assert rel_err(chunked, whole) <= 1e-12


def test_recompute_path_when_features_do_not_fit(x64, monkeypatch):
    f, params, x = _init_flax(TinyMLP(), (4, 4, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    ref = brute_force_ntk(f, params, x, x[:4], "first_logit")
    monkeypatch.setattr(ntk_lib, "memory_budget_bytes", lambda: 1000)
    k = empirical_ntk_fn(f, chunk_size=4)(params, x, x[:4])
    assert rel_err(k, ref) <= 1e-12


@pytest.mark.parametrize("output", ["first_logit", "full"])
def test_kernel_set_and_feature_slices(x64, output):
    f, params, x = _init_flax(WideBlockNet(), (8, 8, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    xl, xu = x[:2], x[2:]
    # Every block against the explicit float64 J Jᵀ of all six points (measured at most
    # 6.3e-16 relative over the blocks and both outputs; bound 1e-14, ~15x).
    bf = brute_force_ntk(f, params, x, x, output)
    ks = kernel_set(f, params, xl, xu, output=output, chunk_size=3)
    assert rel_err(ks.ll, bf[:2, :2]) <= 1e-14
    assert rel_err(ks.ul, bf[2:, :2]) <= 1e-14
    assert rel_err(ks.uu, bf[2:, 2:]) <= 1e-14
    fu = ntk_features(f, params, xu, output=output)
    cols = kernel_from_features(fu, slice_features(fu, 1, 3))
    assert rel_err(cols, bf[2:, 3:5]) <= 1e-14
    sym = kernel_from_features(fu, fu, chunk_size=2)          # symmetric tiling path
    assert rel_err(sym, bf[2:, 2:]) <= 1e-14
    cols_tm = kernel_from_features(fu, jax.tree.map(lambda a: a[1:3], fu))
    assert rel_err(cols_tm, bf[2:, 3:5]) <= 1e-14
    assert fu.acts and fu.cots  # dense readout is structured


def test_no_recompile_on_repeat():
    f, params, x = _init_flax(TinyMLP(), (4, 4, 2))
    fn = empirical_ntk_fn(f)
    fn(params, x, x[:3]).block_until_ready()
    n_feat, n_con = ntk_lib._features_jit._cache_size(), ntk_lib._contract_jit._cache_size()
    params2 = jax.tree.map(lambda a: a * 1.5, params)
    fn(params2, x + 1.0, x[1:4]).block_until_ready()
    assert ntk_lib._features_jit._cache_size() == n_feat
    assert ntk_lib._contract_jit._cache_size() == n_con


def test_unknown_names():
    with pytest.raises(ValueError, match="known"):
        empirical_ntk_fn(lambda p, x: x, output="mean")
    with pytest.raises(ValueError, match="known"):
        empirical_ntk_fn(lambda p, x: x, implementation="fast")


def test_sharded_equals_single_device():
    code = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        assert len(jax.devices()) == 4
        from lookahead_jax.ntk import empirical_ntk_fn, kernel_set
        k1, k2 = jax.random.split(jax.random.key(0))
        p = {"w1": jax.random.normal(k1, (5, 7)), "b1": jnp.ones(7),
             "w2": jax.random.normal(k2, (7, 3))}
        f = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"][None]) @ p["w2"]
        x = jax.random.normal(jax.random.key(1), (10, 5), dtype=jnp.float64)
        out = {}
        for impl in ("structured", "jacobian", "jvp_vjp"):
            for output in ("first_logit", "full"):
                out[impl + output] = np.asarray(empirical_ntk_fn(
                    f, output=output, implementation=impl, chunk_size=4)(p, x, x[:7]))
        out["ks"] = np.asarray(kernel_set(f, p, x[:3], x[3:], chunk_size=4).uu)
        np.savez(os.environ["OUT_NPZ"], **out)
    """)
    results = []
    for ndev in (4, 1):
        env = dict(os.environ, PYTHONPATH=str(REPO), OUT_NPZ=f"/tmp/_ntk_shard_{os.getpid()}_{ndev}.npz")
        src = code if ndev == 4 else code.replace("count=4", "count=1").replace("== 4", "== 1")
        proc = subprocess.run([sys.executable, "-c", src], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(dict(np.load(env["OUT_NPZ"])))
        os.remove(env["OUT_NPZ"])
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-12, atol=1e-12)
