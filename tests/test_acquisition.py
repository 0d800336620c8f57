import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import acquisition as acq
from lookahead_jax import models


def test_margin_prefers_the_smallest_gap():
    probs = jnp.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1]])
    # gaps 0.85, 0.05, 0.3: margin sampling queries the ambiguous point first
    np.testing.assert_array_equal(acq.top_k(acq.margin_scores(probs), 3), [1, 2, 0])


def test_entropy_and_least_confidence_order():
    probs = jnp.array([[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]])
    np.testing.assert_allclose(acq.entropy_scores(probs), [0.0, np.log(2), 0.5004024], rtol=1e-5)
    np.testing.assert_array_equal(acq.top_k(acq.least_confidence_scores(probs), 2), [1, 2])


def test_top_k_ties_and_errors():
    np.testing.assert_array_equal(acq.top_k(np.array([1.0, 3.0, 3.0, 0.0]), 3), [1, 2, 0])
    with pytest.raises(FloatingPointError, match="not finite"):
        acq.top_k(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="cannot select"):
        acq.top_k(np.array([1.0, 2.0]), 3)


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(ValueError, match="known strategies: .*entropy.*random"):
        acq.get_strategy("bogus")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        acq.register_strategy("random")(lambda ctx: None)


def test_predict_in_chunks_equals_one_call():
    m = models.create_model("mlp", 3, widths=(8,))
    v = models.init_variables(m, jax.random.key(0), (2, 2, 1))
    f = models.bind_eval(m, v)
    x = jax.random.normal(jax.random.key(1), (11, 2, 2, 1))
    np.testing.assert_allclose(acq.predict_in_chunks(f, v["params"], x, 4), f(v["params"], x),
                               rtol=1e-6)
    plain = lambda p, x: m.apply({"params": p}, x)  # noqa: E731
    np.testing.assert_allclose(acq.predict_in_chunks(plain, v["params"], x, 4),
                               f(v["params"], x), rtol=1e-6)


def make_context(num_candidates=30, query_size=5, seed=0, label_fn=None, num_classes=4,
                 options=None):
    """A tiny context around an untrained MLP (shared with other strategy tests)."""
    m = models.create_model("mlp", num_classes, widths=(16,))
    v = models.init_variables(m, jax.random.key(seed), (3, 3, 1))
    kx = jax.random.split(jax.random.key(seed + 1), 2)
    x_l = jax.random.normal(kx[0], (12, 3, 3, 1))
    y_l = jnp.arange(12, dtype=jnp.int32) % num_classes
    x_u = jax.random.normal(kx[1], (num_candidates, 3, 3, 1))
    return acq.AcquisitionContext(
        apply_fn=models.bind_eval(m, v), params=v["params"], variables=v, model=m,
        x_labeled=x_l, y_labeled=y_l, x_candidates=x_u, num_classes=num_classes,
        query_size=query_size, key=jax.random.key(seed + 2), label_fn=label_fn,
        labeled_capacity=12 + 3 * query_size, options=options or {})


def _check_selection(sel, ctx):
    idx = np.asarray(sel.indices)
    assert idx.shape == (ctx.query_size,) and np.unique(idx).size == ctx.query_size
    assert idx.min() >= 0 and idx.max() < ctx.num_candidates
    assert np.asarray(sel.scores).shape == (ctx.num_candidates,)
    assert np.all(np.isfinite(sel.scores))


@pytest.mark.parametrize("name", acq.available_strategies())
def test_every_strategy_battery(name):
    """Distinct in-range indices, finite scores, deterministic for a seed (batch mode)."""
    sel = acq.get_strategy(name)(make_context())
    _check_selection(sel, make_context())
    again = acq.get_strategy(name)(make_context())
    np.testing.assert_array_equal(sel.indices, again.indices)


@pytest.mark.parametrize("name", [s for s in acq.available_strategies()
                                  if acq.is_sequential(s)])
def test_every_sequential_strategy_battery(name):
    """Sequential mode asks for each chosen label once, in order, and returns them."""
    asked = []

    def label_fn(j):
        asked.append(int(j))
        return int(j) % 4

    ctx = make_context(label_fn=label_fn)
    sel = acq.get_strategy(name)(ctx)
    _check_selection(sel, ctx)
    assert asked == [int(i) for i in sel.indices]
    np.testing.assert_array_equal(sel.revealed, np.asarray(asked) % 4)
