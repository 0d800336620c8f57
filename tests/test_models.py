import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import models

SMALL = {
    "mlp": ({"widths": (16, 8)}, (6, 6, 1)),
    "cnn": ({"channels": (4, 8)}, (6, 6, 1)),
    "wide_resnet": ({"num_groups": 2, "widen_factor": 1}, (8, 8, 3)),
    "resnet18": ({"base_width": 4}, (8, 8, 3)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_embedding_and_collections(name):
    kwargs, shape = SMALL[name]
    model = models.create_model(name, 7, **kwargs)
    variables = models.init_variables(model, jax.random.key(0), shape)
    x = jax.random.normal(jax.random.key(1), (5, *shape))
    f = models.bind_eval(model, variables)
    logits = f(variables["params"], x)
    assert logits.shape == (5, 7)
    emb = f.embed(variables["params"], x)
    assert emb.ndim == 2 and emb.shape[0] == 5
    has_bn = name in ("wide_resnet", "resnet18")
    assert ("batch_stats" in variables) == has_bn
    # evaluation mode is a pure function of (params, x): per-example, batch-independent
    np.testing.assert_allclose(f(variables["params"], x[:2]), logits[:2], rtol=1e-5, atol=1e-5)


def test_batchnorm_stats_are_inputs_not_params():
    model = models.create_model("resnet18", 3, base_width=4)
    v = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    f = models.bind_eval(model, v)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    # train mode updates running statistics; eval mode uses them
    _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    f2 = models.bind_eval(model, {"params": v["params"], **upd})
    assert not np.allclose(f(v["params"], x), f2(v["params"], x))
    grads = jax.grad(lambda p: f(p, x).sum())(v["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(v["params"])


def test_bound_model_passes_through_jit_without_retrace():
    model = models.create_model("resnet18", 3, base_width=4)
    v = models.init_variables(model, jax.random.key(0), (8, 8, 3))
    traces = []

    @jax.jit
    def call(f, p, x):
        traces.append(1)
        return f(p, x)

    x = jnp.ones((2, 8, 8, 3))
    call(models.bind_eval(model, v), v["params"], x)
    v2 = jax.tree.map(lambda a: a + 1.0, v)
    call(models.bind_eval(models.create_model("resnet18", 3, base_width=4), v2), v2["params"], x)
    assert len(traces) == 1


def test_wide_resnet_widths_follow_the_paper_convention():
    model = models.create_model("wide_resnet", 10, num_groups=1, widen_factor=40)
    v = models.init_variables(model, jax.random.key(0), (8, 8, 1))
    assert v["params"]["group0_block0"]["conv1"]["kernel"].shape[-1] == 640


def test_dropout_only_with_flag():
    model = models.create_model("mlp", 3, widths=(32,), dropout_rate=0.5)
    v = models.init_variables(model, jax.random.key(0), (4, 4, 1))
    x = jnp.ones((3, 4, 4, 1))
    a = model.apply(v, x)
    np.testing.assert_array_equal(a, model.apply(v, x))
    b = model.apply(v, x, mc_dropout=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="known models: cnn, mlp, resnet18, wide_resnet"):
        models.create_model("vgg", 10)
    with pytest.raises(ValueError, match="no option"):
        models.create_model("mlp", 10, depth=3)
