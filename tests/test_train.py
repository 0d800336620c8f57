import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import models, train


def _setup(model="mlp", **kw):
    m = models.create_model(model, 4, **(kw or {"widths": (32,)}))
    v = models.init_variables(m, jax.random.key(0), (6, 6, 1))
    return m, v


def test_learns_the_tiny_problem(tiny_dataset):
    m, v = _setup()
    cfg = train.TrainConfig(epochs=40, batch_size=32, learning_rate=0.05)
    state = train.create_train_state(m, v, cfg)
    state, loss = train.fit(state, tiny_dataset.x_train, tiny_dataset.y_train, cfg, seed=0)
    acc = train.accuracy(m, state.variables, tiny_dataset.x_test, tiny_dataset.y_test)
    assert loss < 0.1 and acc > 0.6


def test_mse_loss_matches_hand_formula_and_masks_padding():
    logits = jnp.array([[0.2, 0.9], [0.5, 0.1], [3.0, 3.0]])
    y = jnp.array([1, 0, 1])
    w = jnp.array([1.0, 1.0, 0.0])
    expect = 0.5 * ((0.2 ** 2 + 0.1 ** 2) + (0.5 ** 2 + 0.1 ** 2)) / 2
    np.testing.assert_allclose(train.loss_fn(logits, y, w, "mse"), expect, rtol=1e-6)
    ce = optax.softmax_cross_entropy(logits[:2], jax.nn.one_hot(y[:2], 2)).mean()
    np.testing.assert_allclose(train.loss_fn(logits, y, w, "ce"), ce, rtol=1e-6)


def test_step_equals_hand_sgd_momentum():
    m, v = _setup()
    cfg = train.TrainConfig(momentum=0.9, weight_decay=1e-3)
    state = train.create_train_state(m, v, cfg)
    x = jax.random.normal(jax.random.key(1), (8, 6, 6, 1))
    y = jnp.arange(8) % 4
    w = jnp.ones(8)
    lr = 0.1
    key = jax.random.key(0)
    s1, _ = train.train_step(state, x, y, w, jnp.float32(lr), key, loss="mse")
    s2, _ = train.train_step(s1, x, y, w, jnp.float32(lr), key, loss="mse")

    def grad(p):
        return jax.grad(lambda q: train.loss_fn(m.apply({"params": q}, x), y, w, "mse"))(p)

    p0 = v["params"]
    g0 = jax.tree.map(lambda g, p: g + 1e-3 * p, grad(p0), p0)
    p1 = jax.tree.map(lambda p, g: p - lr * g, p0, g0)
    g1 = jax.tree.map(lambda g, p: g + 1e-3 * p, grad(p1), p1)
    mom = jax.tree.map(lambda a, b: b + 0.9 * a, g0, g1)
    p2 = jax.tree.map(lambda p, g: p - lr * g, p1, mom)
    for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_cycle_schedule_shape():
    cfg = train.TrainConfig(learning_rate=1.0, pct_start=0.3)
    lrs = np.array([train.one_cycle_lr(s, 100, cfg) for s in range(100)])
    assert lrs[0] == pytest.approx(1 / 25)
    assert lrs.max() == pytest.approx(1.0, rel=1e-3) and 25 <= lrs.argmax() <= 31
    assert lrs[-1] < 1e-2 and np.all(np.diff(lrs[lrs.argmax():]) <= 0)


def test_growing_labeled_set_does_not_recompile(tiny_dataset):
    """The step compiles once for a model, whatever the labeled-set size or cycle."""
    m, v = _setup("cnn", channels=(4,))
    cfg = train.TrainConfig(epochs=1, batch_size=16)
    before = train.train_step._cache_size()
    for n in (20, 37, 64):
        state = train.create_train_state(m, v, cfg)
        train.fit(state, tiny_dataset.x_train[:n], tiny_dataset.y_train[:n], cfg, seed=n)
    assert train.train_step._cache_size() - before == 1


def test_batchnorm_model_trains_and_updates_running_stats(tiny_dataset):
    m = models.create_model("resnet18", 4, base_width=4, stage_sizes=(1, 1))
    v = models.init_variables(m, jax.random.key(0), (6, 6, 1))
    cfg = train.TrainConfig(epochs=2, batch_size=16)
    state, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                         tiny_dataset.y_train[:40], cfg, seed=0)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.batch_stats,
                         v["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0


def test_bad_train_config():
    with pytest.raises(ValueError, match="unknown loss"):
        train.TrainConfig(loss="hinge")
    with pytest.raises(ValueError, match="epochs must be positive"):
        train.TrainConfig(epochs=0)


def test_divergence_is_reported(tiny_dataset):
    m, v = _setup()
    cfg = train.TrainConfig(epochs=3, learning_rate=1e6)
    with pytest.raises(FloatingPointError, match="diverged"):
        train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train,
                  tiny_dataset.y_train, cfg, seed=0)


def test_dropout_model_trains_with_per_step_masks(tiny_dataset):
    m, v = _setup("mlp", widths=(32,), dropout_rate=0.3)
    cfg = train.TrainConfig(epochs=2, batch_size=16)
    a, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, seed=0)
    b, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, seed=0)
    c, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, seed=1)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)  # deterministic for a seed
    assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                      jax.tree.leaves(c.params)))
