"""The built-in networks and the Model interface they share with users' models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models, ntk
from twins import jacobian_gram

SMALL = {
    "mlp": ({"widths": (16, 8)}, (6, 6, 1)),
    "cnn": ({"channels": (4, 8)}, (6, 6, 1)),
    "wide_resnet": ({"num_groups": 2, "widen_factor": 1}, (8, 8, 3)),
    "resnet18": ({"base_width": 4}, (8, 8, 3)),
}


def _built(name, num_classes=7):
    kwargs, shape = SMALL[name]
    model = models.get_model(name, num_classes, **kwargs)
    return model, model.init(jax.random.key(0), jnp.zeros((1, *shape))), shape


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_piece_of_the_built_in_networks(name):
    model, v, shape = _built(name)
    x = jax.random.normal(jax.random.key(1), (5, *shape))
    logits = model.apply(v.params, v.state, x)
    assert logits.shape == (5, 7)
    emb = model.embed(v.params, v.state, x)
    w, b = model.readout(v.params)
    # the readout applied to the embedding IS the network's output
    np.testing.assert_allclose(emb @ w + b[None, :], logits, rtol=1e-5, atol=1e-5)
    feats = model.block_features(v.params, v.state, x)
    assert len(feats) >= 1 and all(f.shape[0] == 5 and f.ndim == 2 for f in feats)
    assert bool(v.state) == (name in ("wide_resnet", "resnet18"))
    # evaluation mode is per-example: a sub-batch gives the same rows
    np.testing.assert_allclose(model.apply(v.params, v.state, x[:2]), logits[:2], rtol=1e-5,
                               atol=1e-5)


def test_batchnorm_statistics_are_inputs_not_parameters():
    # ResNet18 cut to two stages of one block (was four of two): still the stem's BN, a
    # basic block's two BNs, a strided block's projection shortcut with its own BN, and
    # residual sums. The Jacobians below are jitted (the same arithmetic).
    model = models.get_model("resnet18", 3, stage_sizes=(1, 1), base_width=4)
    shape = SMALL["resnet18"][1]
    v = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    _, new_state, _ = model.train_apply(v.params, v.state, x, jax.random.key(2))
    assert not np.allclose(model.apply(v.params, v.state, x),
                           model.apply(v.params, new_state, x))
    # The NTK is taken over the params alone: it equals the brute-force contraction of
    # the Jacobian w.r.t. params with the statistics held fixed (differentiating the
    # statistics too, as the authors' code did, gives a different kernel).
    f = model.bind(new_state)
    k = ntk.empirical_ntk_fn(f, output="first_logit", implementation="jacobian")(v.params, x)
    gram = jacobian_gram(lambda p: f(p, x)[:, 0], v.params, jit=True)
    np.testing.assert_allclose(k, gram, rtol=2e-5, atol=1e-6)
    extra = jacobian_gram(lambda s: model.apply(v.params, s, x)[:, 0], new_state, jit=True)
    assert float(jnp.abs(extra).max()) > 1e-3 * float(jnp.abs(k).max())


@pytest.mark.parametrize("name,kwargs,shape", [
    ("mlp", {"widths": (16, 8)}, (6, 6, 1)),
    ("wide_resnet", {"num_groups": 1, "widen_factor": 1}, (6, 6, 1))])
def test_parameter_gradient_equals_central_differences(name, kwargs, shape):
    """jax.grad through the evaluation-mode network (BatchNorm statistics bound as state)
    equals central finite differences of the same function along random directions, in
    float64. A gradient that drops a path (a stop_gradient, a wrong custom rule, the
    statistics differentiated instead of held) breaks this; a matching tree structure
    would not. With h = 1e-6 the measured relative error is 5.8e-11 (mlp) and 1.6e-10
    (wide_resnet); it falls as h² (truncation). Asserted below 1e-8 (~60x)."""
    model = models.get_model(name, 3, **kwargs)
    v = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    state = v.state
    if state:                       # statistics away from their 0/1 initial values
        _, state, _ = model.train_apply(v.params, v.state, x, jax.random.key(2))
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        params, state, x = to64(v.params), to64(state), jnp.asarray(x, jnp.float64)
        weights = jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)
        objective = jax.jit(lambda p: jnp.sum(weights * model.apply(p, state, x)))
        grad = jax.grad(objective)(params)
        leaves, treedef = jax.tree.flatten(params)
        h, worst = 1e-6, 0.0
        for seed in range(3):
            keys = jax.random.split(jax.random.key(10 + seed), len(leaves))
            d = jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape, jnp.float64)
                                             for k, a in zip(keys, leaves)])
            step = lambda s: jax.tree.map(lambda p, e: p + s * e, params, d)  # noqa: E731
            fd = (objective(step(h)) - objective(step(-h))) / (2 * h)
            ad = sum(jnp.vdot(g, e) for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
            worst = max(worst, abs(float(fd - ad)) / abs(float(ad)))
    print(f"{name}: relative error of the directional derivative {worst:.1e}")
    assert worst < 1e-8, worst


def test_bound_model_passes_through_jit_without_retrace():
    model, v, shape = _built("resnet18", 3)
    traces = []

    @jax.jit
    def call(f, p, x):
        traces.append(1)
        return f(p, x)

    x = jnp.ones((2, *shape))
    call(model.bind(v.state), v.params, x)
    call(model.bind(jax.tree.map(lambda a: a + 1.0, v.state)), v.params, x)
    assert len(traces) == 1


def test_wide_resnet_widths_follow_the_paper_convention():
    model = models.get_model("wide_resnet", 10, num_groups=1, widen_factor=40)
    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert v.params["group0_block0"]["conv1"]["kernel"].shape[-1] == 640


def test_dropout_only_in_training_and_mc_modes():
    model = models.get_model("mlp", 3, widths=(32,), dropout_rate=0.5)
    v = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    x = jnp.ones((3, 4, 4, 1))
    a = model.apply(v.params, v.state, x)
    np.testing.assert_array_equal(a, model.apply(v.params, v.state, x))
    b = model.mc_apply(v.params, v.state, x, jax.random.key(2))
    c, _, _ = model.train_apply(v.params, v.state, x, jax.random.key(2))
    assert not np.allclose(a, b) and not np.allclose(a, c)
    assert model.meta == {"dropout_rate": 0.5, "mlp_widths": (32, 3)}
    assert models.get_model("mlp", 3, widths=(32,)).mc_apply is None


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="known models: cnn, mlp, resnet18, wide_resnet"):
        models.get_model("vgg", 10)
    with pytest.raises(ValueError, match="no option"):
        models.get_model("mlp", 10, depth=3)


def test_require_names_the_missing_piece():
    model = models.from_function(lambda p, x: x.reshape(x.shape[0], -1) @ p,
                                 params=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"strategy 'x' needs the model's `embed\(params"):
        models.require(model, "embed", "strategy 'x'")


def test_apply_in_chunks_equals_one_call():
    model, v, shape = _built("mlp", 3)
    x = jax.random.normal(jax.random.key(1), (11, *shape))
    f = model.bind(v.state)
    np.testing.assert_allclose(models.apply_in_chunks(f, v.params, x, 4), f(v.params, x),
                               rtol=1e-6)
    plain = lambda p, xs: model.apply(p, v.state, xs)  # noqa: E731
    np.testing.assert_allclose(models.apply_in_chunks(plain, v.params, x, 4), f(v.params, x),
                               rtol=1e-6)
