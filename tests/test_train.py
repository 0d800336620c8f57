import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import models, train


def _setup(model="mlp", **kw):
    m = models.get_model(model, 4, **(kw or {"widths": (32,)}))
    return m, m.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))


def _key(seed):
    return jax.random.key(seed)


def test_learns_the_tiny_problem(tiny_dataset):
    m, v = _setup()
    cfg = train.TrainConfig(epochs=40, batch_size=32, learning_rate=0.05)
    state = train.create_train_state(m, v, cfg)
    state, loss = train.fit(state, tiny_dataset.x_train, tiny_dataset.y_train, cfg, key=_key(0))
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
        return jax.grad(lambda q: train.loss_fn(m.apply(q, {}, x), y, w, "mse"))(p)

    p0 = v.params
    g0 = jax.tree.map(lambda g, p: g + 1e-3 * p, grad(p0), p0)
    p1 = jax.tree.map(lambda p, g: p - lr * g, p0, g0)
    g1 = jax.tree.map(lambda g, p: g + 1e-3 * p, grad(p1), p1)
    mom = jax.tree.map(lambda a, b: b + 0.9 * a, g0, g1)
    p2 = jax.tree.map(lambda p, g: p - lr * g, p1, mom)
    for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def one_cycle_twin(step, total, peak, pct):
    """The 1cycle policy written out (cosine warm-up from peak/25, cosine down to peak/1e4)."""
    warm = max(1, int(pct * total))
    if step < warm:
        t, lo, hi = step / warm, peak / 25.0, peak
    else:
        t, lo, hi = (step - warm) / max(1, total - warm), peak, peak / 1e4
    return hi + (lo - hi) * 0.5 * (1.0 + np.cos(np.pi * t))


@pytest.mark.parametrize("total", [1, 2, 3, 7, 33, 100, 1563])
@pytest.mark.parametrize("pct", [0.1, 0.3, 0.5])
def test_one_cycle_schedule_equals_the_written_out_policy(total, pct):
    """optax's cosine_onecycle_schedule, set up as torch's OneCycleLR, step by step."""
    cfg = train.TrainConfig(learning_rate=0.05, pct_start=pct)
    got = np.array([train.one_cycle_lr(s, total, cfg) for s in range(total)])
    want = np.array([one_cycle_twin(s, total, 0.05, pct) for s in range(total)])
    # optax computes in float32: a few ulps of each value, or of the peak where the cosine
    # nears -1 and the sum cancels (eps = 1.2e-7)
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=4 * eps * 0.05)
    assert got[0] == pytest.approx(0.05 / 25, rel=1e-6)


def test_growing_labeled_set_does_not_recompile(tiny_dataset):
    """The step compiles once for a model, whatever the labeled-set size or cycle."""
    m, v = _setup("cnn", channels=(4,))
    cfg = train.TrainConfig(epochs=1, batch_size=16)
    before = train.train_step._cache_size()
    for n in (20, 37, 64):
        state = train.create_train_state(m, v, cfg)
        train.fit(state, tiny_dataset.x_train[:n], tiny_dataset.y_train[:n], cfg, key=_key(n))
    assert train.train_step._cache_size() - before == 1


def test_batchnorm_model_trains_and_updates_running_stats(tiny_dataset):
    m = models.get_model("resnet18", 4, base_width=4, stage_sizes=(1, 1))
    v = m.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    cfg = train.TrainConfig(epochs=2, batch_size=16)
    state, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                         tiny_dataset.y_train[:40], cfg, key=_key(0))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.model_state,
                         v.state)
    assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("kw, message", [
    (dict(loss="hinge"), "train.loss must be one of mse, ce, got 'hinge'"),
    (dict(epochs=0), "train.epochs must be a positive integer, got 0"),
    (dict(epochs="3"), "train.epochs must be a positive integer, got '3'"),
    (dict(batch_size=2.5), "train.batch_size must be a positive integer"),
    (dict(learning_rate=float("inf")), "train.learning_rate must be a finite number"),
    (dict(learning_rate=-0.1), "train.learning_rate must be positive"),
    (dict(momentum=1.0), r"train.momentum must be in \[0, 1\)"),
    (dict(pct_start=0.0), r"train.pct_start must be in \(0, 1\)"),
])
def test_bad_train_config(kw, message):
    with pytest.raises(ValueError, match=message):
        train.TrainConfig(**kw)


def test_divergence_is_reported(tiny_dataset):
    m, v = _setup()
    cfg = train.TrainConfig(epochs=3, learning_rate=1e6)
    with pytest.raises(FloatingPointError, match="diverged"):
        train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train,
                  tiny_dataset.y_train, cfg, key=_key(0))


def test_dropout_model_trains_with_per_step_masks(tiny_dataset):
    m, v = _setup("mlp", widths=(32,), dropout_rate=0.3)
    cfg = train.TrainConfig(epochs=2, batch_size=16)
    a, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, key=_key(0))
    b, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, key=_key(0))
    c, _ = train.fit(train.create_train_state(m, v, cfg), tiny_dataset.x_train[:40],
                     tiny_dataset.y_train[:40], cfg, key=_key(1))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)  # deterministic for a seed
    assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                      jax.tree.leaves(c.params)))
