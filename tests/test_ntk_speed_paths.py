"""The empirical-NTK engine's fast paths against the brute-force Jacobian contraction.

Folded biases (``(a·a' + 1)(δ·δ')`` and bias rows ``Σ_s δ_s``), the small feature
steps of conv nets, and the cost summary used by the benchmarks. Every kernel is checked
in float64 against ``jacrev`` of the raveled parameters (tests/twins.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from lookahead_jax.ntk import empirical as ntk_lib
from lookahead_jax.ntk import empirical_ntk_fn, ntk_features

from lookahead_jax.ntk import structured as st
from twins import brute_force_ntk, rel_err

OUTPUTS = ("first_logit", "full")
IMPLS = ("structured", "jacobian")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _normal(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _conv(x, w, stride=1, padding="SAME"):
    return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


# ------------------------------------------------------------------------- networks
def mlp_bias(p, x):                               # h + b through broadcast_in_dim
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def mlp_bias_first(p, x):                         # b + h (bias is the left operand)
    h = jnp.tanh(p["b1"] + x.reshape(x.shape[0], -1) @ p["w1"])
    return h @ p["w2"]


def seq_dense_bias(p, x):                         # S = 3 positions per example
    h = jnp.tanh(x @ p["w1"] + p["b1"])          # (n, 3, 5)
    return h.reshape(h.shape[0], -1) @ p["w2"] + p["b2"]


def conv_bias(p, x):                              # conv + b, strided, VALID
    h = jax.nn.relu(_conv(x, p["c1"]) + p["cb1"])
    h = jax.nn.relu(_conv(h, p["c2"], 2, "VALID") + p["cb2"])
    return h.mean((1, 2)) @ p["w"] + p["b"]


def permuted_bias(p, x):                          # b (2, 3) transposed onto 6 features
    h = x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"].T.reshape(6)
    return jnp.tanh(h) @ p["w2"]


# Not biases of a structured layer: each must fall back to Jacobian rows.
def bias_after_nonlinearity(p, x):                # relu(xW) + b
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"]) + p["b1"]
    return h @ p["w2"]


def bias_over_positions(p, x):                    # b varies along positions, not features
    h = x @ p["w1"] + p["bs"][:, None]            # (n, 3, 5) + (3, 1)
    return jnp.tanh(h).reshape(x.shape[0], -1) @ p["w2"]


def bias_used_twice(p, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b1"][:3]


def output_used_twice(p, x):                      # h feeds the bias add and a skip
    h = x.reshape(x.shape[0], -1) @ p["w1"]
    y = jnp.tanh(h + p["b1"]) + 0.5 * h
    return y @ p["w2"]


def _params(name):
    k = iter(range(100))
    dense = {"w1": _normal(next(k), (12, 6)), "b1": _normal(next(k), (6,)),
             "w2": _normal(next(k), (6, 3)), "b2": _normal(next(k), (3,))}
    if name in ("mlp_bias", "bias_after_nonlinearity", "bias_used_twice",
                "output_used_twice"):
        return dense, (2, 3, 2)
    if name == "mlp_bias_first":
        return {k_: v for k_, v in dense.items() if k_ != "b2"}, (2, 3, 2)
    if name == "permuted_bias":
        return {"w1": dense["w1"], "b1": _normal(9, (2, 3)), "w2": dense["w2"]}, (2, 3, 2)
    if name in ("seq_dense_bias", "bias_over_positions"):
        return {"w1": _normal(1, (4, 5)), "b1": _normal(2, (5,)), "bs": _normal(3, (3,)),
                "w2": _normal(4, (15, 3)), "b2": _normal(5, (3,))}, (3, 4)
    if name == "conv_bias":
        return {"c1": _normal(1, (3, 3, 2, 4)), "cb1": _normal(2, (4,)),
                "c2": _normal(3, (3, 3, 4, 5)), "cb2": _normal(4, (5,)),
                "w": _normal(5, (5, 3)), "b": _normal(6, (3,))}, (7, 7, 2)
    raise KeyError(name)


NETS = {f.__name__: f for f in (mlp_bias, mlp_bias_first, seq_dense_bias, conv_bias,
                                permuted_bias, bias_after_nonlinearity,
                                bias_over_positions, bias_used_twice, output_used_twice)}
# leaves (sorted keys) that must be folded as biases
FOLDED = {"mlp_bias": {"b1", "b2"}, "mlp_bias_first": {"b1"},
          "seq_dense_bias": {"b1", "b2"}, "conv_bias": {"cb1", "cb2", "b"},
          "permuted_bias": {"b1"}, "bias_after_nonlinearity": set(),
          "bias_over_positions": set(), "bias_used_twice": set(),
          "output_used_twice": set()}


def _folded(f, params, x):
    leaves, treedef = jax.tree.flatten(params)
    names = sorted(params)
    prog = st.trace_program(lambda ls, xx: f(jax.tree.unflatten(treedef, ls), xx),
                            (leaves, x[:1]))
    layers, fallback = st.analyse(prog, len(leaves))
    folded = {names[l.bias] for l in layers if l.bias is not None}
    assert not folded & {names[i] for i in fallback}
    return folded


@pytest.mark.parametrize("name", list(NETS))
def test_bias_detection(x64, name):
    params, shape = _params(name)
    x = _normal(50, (4, *shape))
    assert _folded(NETS[name], params, x) == FOLDED[name]


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("implementation", IMPLS)
def test_folded_bias_vs_brute_force(x64, name, implementation):
    params, shape = _params(name)
    x = _normal(51, (5, *shape))
    f = NETS[name]
    for output in OUTPUTS:
        ref = brute_force_ntk(f, params, x[:3], x[3:], output, jit=False)
        k = empirical_ntk_fn(f, output=output, implementation=implementation)(
            params, x[:3], x[3:])
        assert rel_err(k, ref) <= 1e-12, (output, rel_err(k, ref))


class FlaxBiasNet(nn.Module):
    """Flax reshapes the bias to (1, ..., 1, C) and adds it with implicit broadcasting."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3))(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        return nn.Dense(2)(x.mean((1, 2)))


def test_flax_biases_folded(x64):
    module = FlaxBiasNet()
    x = _normal(52, (5, 6, 6, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          module.init(jax.random.key(0), x[:1])["params"])
    f = lambda p, xx: module.apply({"params": p}, xx)  # noqa: E731
    leaves, treedef = jax.tree.flatten(params)
    prog = st.trace_program(lambda ls, xx: f(jax.tree.unflatten(treedef, ls), xx),
                            (leaves, x[:1]))
    layers, fallback = st.analyse(prog, len(leaves))
    assert len(layers) == 3 and all(l.bias is not None for l in layers) and not fallback
    full = brute_force_ntk(f, params, x[:3], x[3:], "full", jit=False)
    refs = {"first_logit": full[:, :, 0, 0], "trace": jnp.einsum("ijkk->ij", full),
            "full": full}
    for output, ref in refs.items():
        for impl in IMPLS:
            k = empirical_ntk_fn(f, output=output, implementation=impl)(params, x[:3], x[3:])
            assert rel_err(k, ref) <= 1e-12, (output, impl)


def test_jacobian_rows_count_every_parameter(x64):
    params, shape = _params("conv_bias")
    x = _normal(53, (3, *shape))
    feats = ntk_features(conv_bias, params, x, implementation="jacobian")
    n_params = sum(v.size for v in params.values())
    assert feats.rows.shape == (3, 1, n_params) and not feats.acts


@pytest.mark.parametrize("step_bytes", [1, 1 << 12])
def test_small_feature_steps_equal_whole_batch(x64, monkeypatch, step_bytes):
    """Conv nets compute features a few examples per call (bounded intermediates)."""
    params, shape = _params("conv_bias")
    x = _normal(54, (7, *shape))
    ref = brute_force_ntk(conv_bias, params, x[:4], x[4:], "first_logit", jit=False)
    whole = empirical_ntk_fn(conv_bias)(params, x[:4], x[4:])
    monkeypatch.setattr(ntk_lib, "_STEP_BYTES", step_bytes)
    monkeypatch.setattr(ntk_lib, "_PLANS", {})
    fs, fl = ntk_lib._split_f(conv_bias)
    plan = ntk_lib._make_plan(fs, fl, params, x, "first_logit", "auto", None)
    assert plan.step < 4
    stepped = empirical_ntk_fn(conv_bias)(params, x[:4], x[4:])
    assert rel_err(stepped, ref) <= 1e-12 and rel_err(stepped, whole) <= 1e-12


def test_kernel_cost_counts_structured_contraction():
    params = {"w1": jnp.ones((12, 6)), "b1": jnp.ones(6), "w2": jnp.ones((6, 3)),
              "b2": jnp.ones(3)}
    x = jnp.ones((5, 2, 3, 2))
    cost = ntk_lib.kernel_cost(mlp_bias, params, x, x[:4])
    # per pair, scalar output: A-Gram + Δ-Gram + Hadamard-and-sum per dense layer
    pair = 2 * (12 + 6 + 1) + 2 * (6 + 3 + 1)
    assert cost["implementation"] == "structured" and cost["pair_flops"] == pair
    assert cost["contraction_flops"] == pair * 5 * 4 and cost["row_flops"] == 0
    # forward: both matmuls; backward: only the second (the first's input is x)
    assert cost["fwd_flops_per_example"] == 2 * (12 * 6 + 6 * 3)
    assert cost["bwd_flops_per_example"] == 2 * 6 * 3
    jac = ntk_lib.kernel_cost(mlp_bias, params, x, x[:4], implementation="jacobian")
    n_params = 12 * 6 + 6 + 6 * 3 + 3
    assert jac["pair_flops"] == 2 * n_params
    assert jac["row_flops"] == 2 * (12 * 6 + 6 * 3) * 9


def test_single_program_path_matches_and_does_not_recompile(x64):
    """MLP-sized kernels run features + contraction as one jitted program."""
    params, shape = _params("mlp_bias")
    x = _normal(55, (6, *shape))
    fn = empirical_ntk_fn(mlp_bias)
    n_before = ntk_lib._kernel_fused_jit._cache_size()
    k = fn(params, x, x[:4])
    assert ntk_lib._kernel_fused_jit._cache_size() == n_before + 1   # took the fused path
    assert rel_err(k, brute_force_ntk(mlp_bias, params, x, x[:4], "first_logit",
                                      jit=False)) <= 1e-12
    sym = fn(params, x)
    assert rel_err(sym, brute_force_ntk(mlp_bias, params, x, x, "first_logit",
                                        jit=False)) <= 1e-12
    n_after = ntk_lib._kernel_fused_jit._cache_size()
    params2 = jax.tree.map(lambda a: a * 1.5, params)
    fn(params2, x + 1.0, x[1:5]).block_until_ready()
    fn(params2, x + 1.0).block_until_ready()
    assert ntk_lib._kernel_fused_jit._cache_size() == n_after
