"""Any JAX model through the whole loop: models defined HERE, outside the library.

A Flax NNX model, a Flax linen model with BatchNorm and dropout, a plain ``f(params, x)``
and (when installed) an Equinox model each run ``loop.run`` for 3 cycles, on image
inputs ``(n, H, W, C)`` and on tabular inputs ``(n, d)``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lookahead_jax import data, loop, models, records, strategies, train
from lookahead_jax.workdir import Workdir

C = 3


def _dataset(shape, seed=0, n_train=160, n_test=60):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, *shape)).astype(np.float32)
    flat = x.reshape(len(x), -1)
    y = (flat[:, 0] > 0).astype(np.int32) + (flat[:, 1] > 0.5).astype(np.int32)
    return data.Dataset("toy", x[:n_train], y[:n_train], x[n_train:], y[n_train:], C)


IMAGES = (4, 4, 1)
TABULAR = (12,)


class NNXNet(nnx.Module):
    """Linear-BatchNorm-ReLU-Dropout-Linear on flattened inputs."""

    def __init__(self, d_in: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, C, rngs=rngs)

    def features(self, x):
        h = jax.nn.relu(self.norm(self.hidden(x.reshape(x.shape[0], -1))))
        return self.drop(h)

    def __call__(self, x):
        return self.out(self.features(x))


class LinenBNNet(nn.Module):
    """Dense-BatchNorm (running statistics)-ReLU-Dropout-Dense, linen ``setup`` style."""

    def setup(self):
        self.dense = nn.Dense(16)
        self.bn = nn.BatchNorm(momentum=0.9)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Dense(C)

    def features(self, x, train: bool = False):
        h = self.bn(self.dense(x.reshape(x.shape[0], -1)), use_running_average=not train)
        return self.drop(nn.relu(h), deterministic=not train)

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def _config(strategy, **kw):
    return loop.LoopConfig(dataset="digits", strategy=strategy, cycles=3, initial_size=20,
                           query_size=6, subset_size=50, seed=1,
                           train=train.TrainConfig(epochs=4, batch_size=16), **kw)


def _check(res, ds):
    assert [m["num_labeled"] for m in res.metrics] == [20, 26, 32]
    queried = np.concatenate([q["indices"] for q in res.queries])
    assert np.unique(queried).size == queried.size == 12
    for q in res.queries:             # the default oracle answered from the dataset
        np.testing.assert_array_equal(q["labels"], ds.y_train[q["indices"]])
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in res.metrics)


STRATEGIES = ("mlmoc", "badge", "coreset", "random")


@pytest.mark.parametrize("shape", [IMAGES, TABULAR], ids=["images", "tabular"])
def test_nnx_model_runs_the_loop(shape, tmp_path):
    ds = _dataset(shape)
    d_in = int(np.prod(shape))
    model, _ = models.from_nnx(NNXNet(d_in, nnx.Rngs(0)), embed="features",
                               factory=lambda rngs: NNXNet(d_in, rngs))
    for s in STRATEGIES:
        res = loop.run(_config(s), str(tmp_path / s), dataset=ds, model=model,
                       log=lambda m: None)
        _check(res, ds)
    assert records.read_json(str(tmp_path / "mlmoc" / "config.json"))["model"] == "NNXNet"
    # BatchNorm statistics moved during training and went into the checkpoint
    fresh = model.init(jax.random.key(0), ds.x_train[:1])
    with Workdir(str(tmp_path / "mlmoc")) as wd:
        _, state = wd.load_variables(2, fresh)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state),
                                                          jax.tree.leaves(fresh.state))]
    assert max(moved) > 0


@pytest.mark.parametrize("shape", [IMAGES, TABULAR], ids=["images", "tabular"])
def test_linen_model_with_batchnorm_runs_the_loop(shape):
    ds = _dataset(shape)
    model = models.from_linen(LinenBNNet(), embed="features")
    v = model.init(jax.random.key(0), ds.x_train[:1])
    assert set(v.state) == {"batch_stats"}
    for s in STRATEGIES:
        _check(loop.run(_config(s), None, dataset=ds, model=model, log=lambda m: None), ds)


def test_resume_with_a_user_model_equals_uninterrupted(tmp_path):
    ds = _dataset(IMAGES)
    model = models.from_linen(LinenBNNet(), embed="features")
    full = loop.run(_config("mlmoc"), str(tmp_path / "full"), dataset=ds, model=model,
                    log=lambda m: None)
    part = str(tmp_path / "part")
    loop.run(_config("mlmoc"), part, dataset=ds, model=model, log=lambda m: None,
             stop_after_cycle=0)
    resumed = loop.run(_config("mlmoc"), part, dataset=ds, model=model, log=lambda m: None)
    assert [q["indices"] for q in resumed.queries] == [q["indices"] for q in full.queries]
    assert [m["test_accuracy"] for m in resumed.metrics] == \
        [m["test_accuracy"] for m in full.metrics]


def _plain(shape):
    d_in = int(np.prod(shape))

    def f(params, x):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
        return h @ params["w2"]

    def init(key, x):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (d_in, 16)) / np.sqrt(d_in),
                "b1": jnp.zeros(16), "w2": jax.random.normal(k2, (16, C)) / 4.0}

    return models.from_function(f, init=init, name="plain")


@pytest.mark.parametrize("shape", [IMAGES, TABULAR], ids=["images", "tabular"])
def test_plain_function_runs_mlmoc_and_random_and_badge_is_refused(shape, monkeypatch):
    ds = _dataset(shape)
    model = _plain(shape)
    for s in ("mlmoc", "random"):
        _check(loop.run(_config(s), None, dataset=ds, model=model, log=lambda m: None), ds)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before refusing"))
    # the hint names the user's own adapter and the signature it takes (issue 24, item 6)
    with pytest.raises(ValueError, match=r"strategy 'badge' needs the model's `embed\(params, "
                                         r"x\) -> \(n, D\)` \(penultimate features\); "
                                         r"model 'plain' does not provide it \(give it to the "
                                         r"adapter: models.from_function\(f, \.\.\., "
                                         r"embed=embed\) with embed\(params, x\)"):
        loop.run(_config("badge"), None, dataset=ds, model=model, log=lambda m: None)


def test_plain_function_with_fixed_params():
    ds = _dataset(TABULAR)
    params = _plain(TABULAR).init(jax.random.key(3), None).params
    model = models.from_function(lambda p, x: _plain(TABULAR).apply(p, {}, x), params=params)
    _check(loop.run(_config("entropy"), None, dataset=ds, model=model, log=lambda m: None), ds)


def test_equinox_model_runs_the_loop():
    eqx = pytest.importorskip("equinox")

    class EqxNet(eqx.Module):
        hidden: eqx.nn.Linear
        out: eqx.nn.Linear
        drop: eqx.nn.Dropout

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(12, 16, key=k1)
            self.out = eqx.nn.Linear(16, C, key=k2)
            self.drop = eqx.nn.Dropout(0.2)

        def features(self, x, *, key=None):
            return self.drop(jax.nn.relu(self.hidden(x)), key=key)

        def __call__(self, x, *, key=None):
            return self.out(self.features(x, key=key))

    ds = _dataset(TABULAR)
    model, variables = models.from_equinox(EqxNet(jax.random.key(0)), embed="features")
    np.testing.assert_allclose(model.apply(variables.params, {}, ds.x_test[:4]),
                               jax.vmap(eqx.nn.inference_mode(EqxNet(jax.random.key(0))))(
                                   ds.x_test[:4]), rtol=1e-6)
    for s in ("mlmoc", "badge", "random"):
        _check(loop.run(_config(s), None, dataset=ds, model=model, log=lambda m: None), ds)


def test_strategies_see_the_same_model_interface():
    """A context built by hand around an NNX model: BALD uses its MC-dropout piece."""
    ds = _dataset(TABULAR)
    model, v = models.from_nnx(NNXNet(12, nnx.Rngs(0)), embed="features")
    ctx = strategies.AcquisitionContext(
        model=model, params=v.params, state=v.state, x_labeled=ds.x_train[:10],
        y_labeled=ds.y_train[:10], x_candidates=ds.x_train[10:40], num_classes=C,
        query_size=5, key=jax.random.key(0))
    sel = strategies.get("bald")(ctx)
    assert sel.info == {"fallback": 0.0} and len(set(sel.indices.tolist())) == 5


class NNXPlain(nnx.Module):
    """Linear-ReLU-Linear, no dropout: BALD needs the readout (readout-only MC dropout)."""

    def __init__(self, d_in: int, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, 16, rngs=rngs)
        self.out = nnx.Linear(16, C, rngs=rngs)

    def features(self, x):
        return jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def blocks(self, x):
        h = self.features(x)
        return (h, self.out(h))

    def __call__(self, x):
        return self.out(self.features(x))


def _bald_context(model, v, ds):
    return strategies.AcquisitionContext(
        model=model, params=v.params, state=v.state, x_labeled=ds.x_train[:10],
        y_labeled=ds.y_train[:10], x_candidates=ds.x_train[10:40], num_classes=C,
        query_size=5, key=jax.random.key(0))


def test_nnx_bald_hint_names_from_nnx_and_its_readout_runs_bald():
    """Before: an NNX model with bald was told models.from_linen(module, readout=...), and
    from_nnx had no readout, so NNX users could not run BALD at all."""
    ds = _dataset(TABULAR)
    model, v = models.from_nnx(NNXPlain(12, nnx.Rngs(0)), embed="features")
    with pytest.raises(ValueError) as e:
        strategies.get("bald")(_bald_context(model, v, ds))
    assert "models.from_nnx(module, readout='ATTRIBUTE')" in str(e.value)
    assert "from_linen" not in str(e.value)
    net = NNXPlain(12, nnx.Rngs(0))
    model, v = models.from_nnx(net, embed="features", readout="out")
    w, b = model.readout(v.params)
    np.testing.assert_array_equal(w, net.out.kernel[...])
    np.testing.assert_array_equal(b, net.out.bias[...])
    x = ds.x_test[:6]
    # the readout is the head: embed @ W + b is the model's output (float32 sums of 16
    # products of O(1) terms: 1e-5 covers their rounding)
    np.testing.assert_allclose(model.embed(v.params, v.state, x) @ w + b[None],
                               model.apply(v.params, v.state, x), rtol=1e-5, atol=1e-5)
    sel = strategies.get("bald")(_bald_context(model, v, ds))
    assert sel.info["fallback"] == 1.0 and len(set(sel.indices.tolist())) == 5
    with pytest.raises(ValueError, match="has no parameters at 'head' for readout"):
        models.from_nnx(net, readout="head")
    with pytest.raises(ValueError, match="has no kernel and bias"):
        models.from_nnx(NNXNet(12, nnx.Rngs(0)), readout="norm")


def test_nnx_block_features_for_ll4al():
    ds = _dataset(TABULAR)
    net = NNXPlain(12, nnx.Rngs(0))
    model, v = models.from_nnx(net, block_features="blocks")
    x = ds.x_test[:5]
    feats = model.block_features(v.params, v.state, x)
    want = net.blocks(x)
    assert len(feats) == 2
    for f, g in zip(feats, want):
        np.testing.assert_array_equal(f, g)
    _, _, aux = model.train_apply(v.params, v.state, x, jax.random.key(1))
    for f, g in zip(aux["block_features"], want):       # no dropout: the same features
        np.testing.assert_allclose(f, g, rtol=1e-6)
    with pytest.raises(ValueError, match="has no method 'blockz' for block_features"):
        models.from_nnx(net, block_features="blockz")


def test_a_plain_function_can_give_bald_its_readout():
    ds = _dataset(TABULAR)
    base = _plain(TABULAR)
    params = base.init(jax.random.key(0), None).params

    def embed(p, x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])

    model = models.from_function(lambda p, x: base.apply(p, {}, x), params=params,
                                 embed=embed, readout=lambda p: (p["w2"], jnp.zeros(C)))
    sel = strategies.get("bald")(_bald_context(model, model.init(None, None), ds))
    assert len(set(sel.indices.tolist())) == 5
