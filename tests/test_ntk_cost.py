"""``ntk.kernel_cost`` against FLOPs counted by hand for a small Dense MLP.

The network is the library's MLP (flax ``nn.Dense`` layers with biases):
16 inputs (4×4×1, flattened) → 8 (ReLU) → C = 3 logits, so

    P = 16·8 + 8 + 8·3 + 3 = 163 parameters.

Per layer (D_in → D_out, S = 1 position), K outputs differentiated (1 for
``first_logit``, C for ``full``):

* the Jacobian contraction: every pair of examples is a dot product of two K×P rows,
  ``2·K²·P`` FLOPs, so ``2·K²·P·N1·N2`` for the kernel; building each example's rows of a
  weight costs ``2·K·D_in·D_out``;
* the structured contraction: per layer ``2·(D_in + K²·D_out + K²)`` per pair (Gram of
  the layer inputs, Gram of the output cotangents, Hadamard product and sum).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lookahead_jax
from lookahead_jax import models, ntk

D, W, C = 16, 8, 3
LAYERS = ((D, W), (W, C))                                 # (D_in, D_out), both with a bias
P = sum(d_in * d_out + d_out for d_in, d_out in LAYERS)
N1, N2 = 5, 4
F32 = 4                                                   # bytes


@pytest.fixture(scope="module")
def mlp():
    model = models.get_model("mlp", C, widths=(W,))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    f = model.bind(variables.state)
    x = np.random.RandomState(0).randn(N1, 4, 4, 1).astype(np.float32)
    return f, variables.params, x


def test_parameter_count_is_the_hand_count(mlp):
    _, params, _ = mlp
    assert P == 163 == sum(np.size(a) for a in jax.tree.leaves(params))


@pytest.mark.parametrize("output, k", [("first_logit", 1), ("full", C)])
def test_jacobian_cost_is_two_n1_n2_p(mlp, output, k):
    f, params, x = mlp
    cost = ntk.kernel_cost(f, params, x, x[:N2], output=output, implementation="jacobian")
    assert cost["implementation"] == "jacobian" and (cost["n1"], cost["n2"]) == (N1, N2)
    assert cost["pair_flops"] == 2 * k * k * P
    assert cost["contraction_flops"] == 2 * k * k * N1 * N2 * P
    assert cost["row_flops"] == (N1 + N2) * sum(2 * k * d_in * d_out for d_in, d_out in LAYERS)
    assert cost["feature_bytes_per_example"] == k * P * F32


@pytest.mark.parametrize("output, k", [("first_logit", 1), ("full", C)])
def test_structured_cost_is_the_gram_count(mlp, output, k):
    f, params, x = mlp
    cost = ntk.kernel_cost(f, params, x, x[:N2], output=output)        # auto → structured
    pair = sum(2 * (d_in + k * k * d_out + k * k) for d_in, d_out in LAYERS)
    assert cost["implementation"] == "structured"
    assert cost["pair_flops"] == pair == (2 * (16 + 8 + 1) + 2 * (8 + 3 + 1) if k == 1 else
                                          2 * (16 + 72 + 9) + 2 * (8 + 27 + 9))
    assert cost["contraction_flops"] == pair * N1 * N2 and cost["row_flops"] == 0
    # features: each layer's input (D_in) and K output cotangents (K·D_out), no rows
    assert cost["feature_bytes_per_example"] == F32 * sum(d_in + k * d_out
                                                          for d_in, d_out in LAYERS)


def test_pass_flops_and_square_kernels(mlp):
    f, params, x = mlp
    cost = ntk.kernel_cost(f, params, x, output="full")                # Θ(x, x)
    # forward: both matmuls; backward: C cotangents through the readout only (the first
    # layer's input is x, which is not differentiated)
    assert cost["fwd_flops_per_example"] == 2 * (D * W + W * C)
    assert cost["bwd_flops_per_example"] == C * 2 * W * C
    assert cost["n2"] == N1 and cost["contraction_flops"] == cost["pair_flops"] * N1 * N1
    jac = ntk.kernel_cost(f, params, x, output="full", implementation="jacobian")
    assert jac["row_flops"] == N1 * 2 * C * (D * W + W * C)           # x's rows only


def test_only_shapes_are_read_and_it_is_exported(mlp):
    f, params, x = mlp
    spec = jax.ShapeDtypeStruct((N1, 4, 4, 1), jnp.float32)
    assert ntk.kernel_cost(f, params, spec) == ntk.kernel_cost(f, params, x)
    assert lookahead_jax.kernel_cost is ntk.kernel_cost
    with pytest.raises(ValueError):
        ntk.kernel_cost(f, params, x, output="logits")
