"""Tests of the baseline strategies (lookahead_jax/baselines.py) against slow, obvious twins.

Each strategy's defining property is checked: BADGE embeddings against ``jax.grad``, core-set
picks against a brute-force k-center loop, BALD against a numpy mutual information, LL4AL's
ranking loss against the hand formula, the look-ahead baselines against plain loops of SGD
steps / explicit augmented solves (float64 numpy).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lookahead_jax import acquisition as acq
from lookahead_jax import baselines as bl
from lookahead_jax import loop, models, train
from lookahead_jax.ntk import infinite


def tiny_ctx(model=None, loss="mse", seed=0, L=10, U=14, C=3, shape=(3, 3, 1), options=None,
             query_size=4):
    m = model or models.create_model("mlp", C, widths=(16, 8))
    v = models.init_variables(m, jax.random.key(seed), shape)
    k = jax.random.split(jax.random.key(seed + 1), 2)
    x_l = jax.random.normal(k[0], (L,) + shape)
    x_u = jax.random.normal(k[1], (U,) + shape)
    return acq.AcquisitionContext(
        apply_fn=models.bind_eval(m, v), params=v["params"], variables=v, model=m,
        x_labeled=x_l, y_labeled=jnp.arange(L, dtype=jnp.int32) % C, x_candidates=x_u,
        num_classes=C, query_size=query_size, key=jax.random.key(seed + 2), loss=loss,
        options=options or {})


# ============================================================================ BADGE


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("include_bias", [False, True])
def test_badge_embedding_is_readout_gradient(loss, include_bias):
    ctx = tiny_ctx(loss=loss, U=5)
    logits, h = bl.logits_and_embeddings(ctx, ctx.x_candidates)
    emb = bl.badge_embeddings(logits, h, loss, include_bias)
    ro = bl.readout_params(ctx.params)

    def per_example(readout, x):
        params = jax.tree.map(lambda a: a, ctx.params)
        params["_Head_0"] = {"readout": readout}
        out = ctx.apply_fn(params, x[None])
        y_hat = jnp.argmax(jax.lax.stop_gradient(out), -1)
        return train.loss_fn(out, y_hat, jnp.ones(1), loss)

    for i in range(ctx.num_candidates):
        g = jax.grad(per_example)(ro, ctx.x_candidates[i])
        want = g["kernel"].reshape(-1)
        if include_bias:
            want = jnp.concatenate([want, g["bias"]])
        np.testing.assert_allclose(emb[i], want, rtol=1e-5, atol=1e-6)


def test_badge_first_pick_is_max_norm_and_picks_are_distinct():
    ctx = tiny_ctx(U=25, query_size=8)
    sel = acq.get_strategy("badge")(ctx)
    logits, h = bl.logits_and_embeddings(ctx, ctx.x_candidates)
    norms = np.linalg.norm(np.asarray(bl.badge_embeddings(logits, h, "mse")), axis=1)
    assert sel.indices[0] == np.argmax(norms)
    assert np.unique(sel.indices).size == 8
    np.testing.assert_allclose(sel.scores, norms, rtol=1e-5)


def test_kmeans_pp_samples_proportional_to_squared_distance():
    # 1-D embeddings e = h·g = [10, 0, 1, 2]: first centre 10, then P ∝ (10 - e)²
    g = jnp.ones((4, 1))
    h = jnp.array([[10.0], [0.0], [1.0], [2.0]])
    keys = jax.random.split(jax.random.key(0), 3000)
    picks = np.asarray(jax.vmap(lambda k: bl.kmeans_pp_outer(g, h, k, 2))(keys))
    assert np.all(picks[:, 0] == 0)
    freq = np.bincount(picks[:, 1], minlength=4)[1:] / len(keys)
    np.testing.assert_allclose(freq, np.array([100, 81, 64]) / 245, atol=0.03)
    # all remaining points coincide with a centre: the first unchosen one, no NaN
    same = bl.kmeans_pp_outer(jnp.ones((3, 1)), jnp.ones((3, 1)), jax.random.key(1), 3)
    assert sorted(np.asarray(same).tolist()) == [0, 1, 2]


# ============================================================================ core-set


def kcenter_twin(fu, fl, k):
    fu, fl = np.asarray(fu, np.float64), np.asarray(fl, np.float64)
    centres = list(fl)
    picks = []
    for _ in range(k):
        d = np.array([min(np.sum((u - c) ** 2) for c in centres) for u in fu])
        d[picks] = -np.inf
        j = int(np.argmax(d))
        picks.append(j)
        centres.append(fu[j])
    d0 = np.array([min(np.sqrt(np.sum((u - c) ** 2)) for c in fl) for u in fu])
    return picks, d0


def test_kcenter_greedy_equals_brute_force():
    rng = np.random.default_rng(0)
    fu, fl = rng.normal(size=(40, 5)), rng.normal(size=(9, 5))
    idx, dist = bl.kcenter_greedy(jnp.asarray(fu, jnp.float32), jnp.asarray(fl, jnp.float32),
                                  7, chunk=4)   # 3 labeled blocks, the last one padded
    picks, d0 = kcenter_twin(fu, fl, 7)
    assert np.asarray(idx).tolist() == picks
    np.testing.assert_allclose(dist, d0, rtol=1e-4)
    # a labeled buffer padded with junk rows (fixed shapes) gives the same answer
    padded = np.concatenate([fl, 100 * np.ones((5, 5))]).astype(np.float32)
    idx2, dist2 = bl.kcenter_greedy(jnp.asarray(fu, jnp.float32), jnp.asarray(padded), 7,
                                    chunk=4, num_labeled=jnp.int32(9))
    assert np.asarray(idx2).tolist() == picks
    np.testing.assert_allclose(dist2, d0, rtol=1e-4)


def test_coreset_strategy_picks_farthest_points_of_the_embedding():
    ctx = dataclasses.replace(tiny_ctx(U=20, query_size=5), labeled_capacity=16)
    sel = acq.get_strategy("coreset")(ctx)
    _, hu = bl.logits_and_embeddings(ctx, ctx.x_candidates)
    _, hl = bl.logits_and_embeddings(ctx, ctx.x_labeled)
    picks, d0 = kcenter_twin(hu, hl, 5)
    assert sel.indices.tolist() == picks
    np.testing.assert_allclose(sel.scores, d0, rtol=1e-3, atol=1e-5)


# ============================================================================ BALD


def test_bald_scores_equal_numpy_mutual_information():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 9, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ent = lambda q: -np.sum(q * np.log(q), -1)  # noqa: E731
    want = ent(p.mean(0)) - ent(p).mean(0)
    np.testing.assert_allclose(bl.bald_scores(jnp.asarray(p, jnp.float32)), want, rtol=1e-4,
                               atol=1e-6)
    agree = np.broadcast_to(p[:1], p.shape)
    np.testing.assert_allclose(bl.bald_scores(jnp.asarray(agree, jnp.float32)), 0.0, atol=1e-6)


def test_bald_strict_refuses_a_model_without_dropout_and_falls_back_otherwise():
    with pytest.raises(ValueError, match="dropout_rate>0"):
        acq.get_strategy("bald")(tiny_ctx(options={"strict": True}))
    sel = acq.get_strategy("bald")(tiny_ctx(options={"mc_samples": 8}))
    assert sel.info["fallback"] == 1.0 and sel.info["dropout_rate"] == 0.5
    assert np.all(sel.scores >= 0)


def test_bald_head_path_matches_model_mc_dropout_in_distribution():
    m = models.create_model("mlp", 3, widths=(16,), dropout_rate=0.5)
    ctx = tiny_ctx(model=m, U=5)
    _, h = bl.logits_and_embeddings(ctx, ctx.x_candidates)
    ro = bl.readout_params(ctx.params)
    T = 4000
    head = bl.mc_head_probabilities(h, ro["kernel"], ro["bias"], jnp.float32(0.5), ctx.key, T)
    fwd = bl._MCForward(m, {})
    full = bl._mc_model_probs(fwd, ctx.params, ctx.x_candidates, jax.random.key(7), T)
    np.testing.assert_allclose(head.mean(0), full.mean(0), atol=0.02)
    np.testing.assert_allclose(bl.bald_scores(head), bl.bald_scores(full), atol=0.02)
    sel = acq.get_strategy("bald")(dataclasses.replace(ctx, options={"strict": True}))
    assert sel.info == {"dropout_rate": 0.5, "fallback": 0.0}
    sel2 = acq.get_strategy("bald")(dataclasses.replace(ctx, options={"mc_forward": "model"}))
    assert np.unique(sel2.indices).size == ctx.query_size


# ============================================================================ LL4AL


def test_ranking_loss_equals_hand_formula():
    pred = jnp.array([0.3, 2.0, -1.0, 0.5, 0.1])
    target = jnp.array([1.0, 0.2, 0.2, 3.0, 0.7])
    # pairs (0,4), (1,3); B = 5 leaves index 2 unpaired
    dp = np.array([0.3 - 0.1, 2.0 - 0.5])
    sign = np.array([1.0, -1.0])          # 1.0 > 0.7; 0.2 < 3.0
    want = np.mean(np.maximum(0.0, 1.0 - sign * dp))
    np.testing.assert_allclose(bl.ranking_loss(pred, target), want, rtol=1e-6)
    # equal targets count as "not greater": sign -1 (as Yoo & Kweon's code)
    np.testing.assert_allclose(bl.ranking_loss(jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0])),
                               1.0)
    w = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(bl.ranking_loss(pred, target, weights=w),
                               max(0.0, 1.0 - 0.2), rtol=1e-6)


@pytest.mark.parametrize("name,kw", [("mlp", dict(widths=(8, 6))),
                                     ("wide_resnet", dict(num_groups=1, widen_factor=1))])
def test_wrapped_model_logits_equal_base_logits(name, kw):
    base = models.create_model(name, 3, **kw)
    wrapped = bl.ll4al_wrap_model(base)
    wv = models.init_variables(wrapped, jax.random.key(0), (6, 6, 1))
    bv = {"params": wv["params"]["base"]}
    if "batch_stats" in wv:
        bv["batch_stats"] = wv["batch_stats"]["base"]
    x = jax.random.normal(jax.random.key(1), (5, 6, 6, 1))
    np.testing.assert_array_equal(wrapped.apply(wv, x), base.apply(bv, x))
    assert set(wv["params"]) == {"base", "loss_module"}
    assert wrapped.apply(wv, x, method=bl.LL4ALModel.predict_loss).shape == (5,)


def _ll4al_setup(epochs=25, n=48):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3, 3, 1)).astype(np.float32)
    y = (x.reshape(n, -1)[:, :3].sum(1) > 0).astype(np.int32)
    model = bl.ll4al_wrap_model(models.create_model("mlp", 2, widths=(16, 16)))
    v = models.init_variables(model, jax.random.key(0), (3, 3, 1))
    cfg = train.TrainConfig(epochs=epochs, batch_size=16, learning_rate=0.05)
    return model, v, cfg, x, y


def _eval_ranking(model, variables, x, y):
    pred = model.apply(variables, x, method=bl.LL4ALModel.predict_loss)
    true = bl.per_example_loss(model.apply(variables, x), jnp.asarray(y), "mse")
    return float(bl.ranking_loss(pred, true))


def test_ll4al_training_lowers_the_ranking_loss():
    model, v, cfg, x, y = _ll4al_setup()
    state = train.create_train_state(model, v, cfg)
    before = _eval_ranking(model, v, x, y)
    state, loss = bl.make_ll4al_fit(detach_fraction=1.0)(state, x, y, cfg, seed=0)
    after = _eval_ranking(model, state.variables, x, y)
    assert np.isfinite(loss) and after < before - 0.1, (before, after)


def test_ll4al_detaches_features_after_the_switch(monkeypatch):
    model, v, cfg, x, y = _ll4al_setup(epochs=5)
    state = train.create_train_state(model, v, cfg)

    def rank_grads(detach):
        obj = lambda p: bl.ll4al_objective(  # noqa: E731
            p, state, jnp.asarray(x[:16]), jnp.asarray(y[:16]), jnp.ones(16),
            jax.random.key(0), loss="mse", detach=detach, margin=1.0, weight=1.0)[1][2]
        return jax.grad(obj)(state.params)

    g = rank_grads(True)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g["base"]))
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g["loss_module"]))
    g = rank_grads(False)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(g["base"]))
    # the fit hook switches at round(0.6 · epochs) = epoch 3 of 5
    seen = []
    orig = bl.ll4al_train_step

    def spy(*args, detach, **kw):
        seen.append(detach)
        return orig(*args, detach=detach, **kw)

    monkeypatch.setattr(bl, "ll4al_train_step", spy)
    bl.make_ll4al_fit()(state, x, y, cfg, seed=0)
    assert seen == [False] * 9 + [True] * 6    # 3 batches of 16 per epoch


def test_ll4al_in_the_loop_queries_the_highest_predicted_loss(tiny_dataset):
    cfg = loop.LoopConfig(dataset="digits", model="mlp", model_kwargs=(("widths", (16,)),),
                          strategy="ll4al", cycles=2, initial_size=20, query_size=5,
                          subset_size=40, seed=1, train=train.TrainConfig(epochs=3,
                                                                          batch_size=16))
    res = loop.run(cfg, None, dataset=tiny_dataset, log=lambda s: None)
    assert len(res.queries) == 1 and len(res.queries[0]["indices"]) == 5
    wrap, fit = acq.strategy_hooks("ll4al")
    assert wrap is bl.ll4al_wrap_model and fit is bl.ll4al_fit
    # the strategy on a wrapped model ranks by predict_loss
    model, v, _, x, y = _ll4al_setup(epochs=1)
    ctx = tiny_ctx(model=model)
    sel = acq.get_strategy("ll4al")(ctx)
    want = model.apply(ctx.variables, ctx.x_candidates, method=bl.LL4ALModel.predict_loss)
    np.testing.assert_allclose(sel.scores, want, rtol=1e-5)
    assert sel.info["posthoc"] == 0.0


# ============================================================================ SGD look-ahead


def test_naive_retraining_vmapped_equals_sequential_sgd_loop():
    ctx = tiny_ctx(L=7, U=6, options={"epochs": 3, "batch_size": 4, "lr": 0.1, "chunk": 4})
    L = 7
    idx, w = bl.sgd_schedule(L + 1, 4, 3, seed=5)
    assert idx.shape == (6, 4) and np.all((idx >= 0) & (idx <= L))
    scores = bl.sgd_lookahead_scores(ctx, idx, w, 0.1, chunk=4)   # 2 chunks, last padded
    f_u = np.asarray(ctx.apply_fn(ctx.params, ctx.x_candidates))
    sgd_step = jax.jit(lambda p, xb, yb, wb: jax.tree.map(
        lambda a, b: a - 0.1 * b, p,
        jax.grad(lambda q: train.loss_fn(ctx.apply_fn(q, xb), yb, wb, "mse"))(p)))
    x_l, y_l = np.asarray(ctx.x_labeled), np.asarray(ctx.y_labeled)
    for j in (0, 5):
        xs = np.concatenate([x_l, np.asarray(ctx.x_candidates[j:j + 1])])
        ys = np.concatenate([y_l, [np.argmax(f_u[j])]]).astype(np.int32)
        p = ctx.params
        for i, wb in zip(idx, w):          # one plain SGD step at a time, on host batches
            p = sgd_step(p, xs[i], ys[i], wb)
        want = np.sum(np.linalg.norm(np.asarray(ctx.apply_fn(p, ctx.x_candidates)) - f_u,
                                     axis=-1))
        np.testing.assert_allclose(scores[j], want, rtol=1e-4)
    sel = acq.get_strategy("naive_lookahead")(ctx)
    assert sel.info["sgd_steps"] == 6.0


def test_naive_lookahead_padded_to_capacity_matches_and_compiles_once():
    """Padding L to the run's capacity and the schedule to its longest length leaves the
    scores unchanged, and a growing L reuses one compiled retraining loop."""
    opts = {"epochs": 2, "batch_size": 4, "lr": 0.1, "chunk": 3}
    ctxs = [tiny_ctx(L=L, U=6, options=opts) for L in (5, 9)]
    plain = [acq.get_strategy("naive_lookahead")(c).scores for c in ctxs]
    bl._sgd_lookahead_chunk.clear_cache()
    for c, want in zip(ctxs, plain):
        padded = acq.get_strategy("naive_lookahead")(dataclasses.replace(c, labeled_capacity=12))
        np.testing.assert_allclose(padded.scores, want, rtol=1e-5)
    assert bl._sgd_lookahead_chunk._cache_size() == 1


def test_onestep_lookahead_equals_one_optax_sgd_step():
    ctx = tiny_ctx(U=7, options={"lr": 0.3, "chunk": 5})
    sel = acq.get_strategy("onestep_lookahead")(ctx)
    f_u = ctx.apply_fn(ctx.params, ctx.x_candidates)
    tx = optax.sgd(0.3)
    for j in range(ctx.num_candidates):
        xj = ctx.x_candidates[j:j + 1]
        yj = jnp.argmax(f_u[j:j + 1], -1)
        g = jax.grad(lambda p: 0.5 * jnp.sum((jax.nn.one_hot(yj, 3) - ctx.apply_fn(p, xj)) ** 2))(
            ctx.params)
        upd, _ = tx.update(g, tx.init(ctx.params), ctx.params)
        p = optax.apply_updates(ctx.params, upd)
        want = jnp.sum(jnp.linalg.norm(ctx.apply_fn(p, ctx.x_candidates) - f_u, axis=-1))
        np.testing.assert_allclose(sel.scores[j], want, rtol=1e-4)


# ============================================================================ kernel look-ahead


def _kernels64(ctx, widths, which="ntk"):
    x = jnp.concatenate([ctx.x_labeled, ctx.x_candidates])
    nngp, ntk = infinite.infinite_mlp_kernels(x, widths=widths, w_std=1.0, b_std=0.0)
    return np.asarray(ntk if which == "ntk" else nngp, np.float64)


@pytest.mark.parametrize("reference", ["network", "kernel"])
def test_infinite_ntk_lookahead_equals_explicit_augmented_solve(reference):
    ctx = tiny_ctx(U=9, options={"reference": reference, "jitter": 1e-4, "chunk_size": 4})
    sel = acq.get_strategy("infinite_ntk_lookahead")(ctx)
    L, U, C = 10, 9, 3
    K = _kernels64(ctx, (16, 8, 3))
    v0 = models.init_variables(ctx.model, jax.random.fold_in(ctx.key, 0), (3, 3, 1))
    x_all = jnp.concatenate([ctx.x_labeled, ctx.x_candidates])
    f0 = np.asarray(ctx.model.apply(v0, x_all), np.float64)
    Y = np.eye(C)[np.asarray(ctx.y_labeled)]
    lam = 1e-4 * np.mean(np.diag(K[:L, :L]))
    iL, iU = np.arange(L), np.arange(L, L + U)

    def fit(train_idx, targets):
        Kt = K[np.ix_(train_idx, train_idx)] + lam * np.eye(len(train_idx))
        return f0[iU] + K[np.ix_(iU, train_idx)] @ np.linalg.solve(Kt, targets - f0[train_idx])

    f_inf_l = fit(iL, Y)
    ref = (np.asarray(ctx.apply_fn(ctx.params, ctx.x_candidates), np.float64)
           if reference == "network" else f_inf_l)
    for j in range(U):
        yj = np.eye(C)[np.argmax(ref[j])]
        f_plus = fit(np.r_[iL, L + j], np.vstack([Y, yj]))
        want = np.sum(np.linalg.norm(ref - f_plus, axis=-1))
        np.testing.assert_allclose(sel.scores[j], want, rtol=2e-3)


def test_kernel_lookaheads_refuse_non_mlp_models():
    cnn = models.create_model("cnn", 3, channels=(4,))
    for name in ("infinite_ntk_lookahead", "gp_lookahead"):
        with pytest.raises(ValueError, match="only|not supported"):
            acq.get_strategy(name)(tiny_ctx(model=cnn))


def test_gp_emoc_equals_refitting_the_gp_per_candidate_and_label():
    ctx = tiny_ctx(U=8, options={"noise": 0.05, "chunk_size": 3})
    sel = acq.get_strategy("gp_lookahead")(ctx)
    L, U, C = 10, 8, 3
    K = _kernels64(ctx, (16, 8, 3))
    s2 = 0.05 * np.mean(np.diag(K[:L, :L]))
    Y = np.eye(C)[np.asarray(ctx.y_labeled)]
    iL, iU = np.arange(L), np.arange(L, L + U)

    def mean(train_idx, targets):
        Kt = K[np.ix_(train_idx, train_idx)] + s2 * np.eye(len(train_idx))
        return K[np.ix_(iU, train_idx)] @ np.linalg.solve(Kt, targets)

    mu = mean(iL, Y)
    for j in range(U):
        p = np.exp(mu[j] - mu[j].max())
        p /= p.sum()
        want = sum(p[y] * np.sum(np.linalg.norm(
            mean(np.r_[iL, L + j], np.vstack([Y, np.eye(C)[y]])) - mu, axis=-1))
            for y in range(C))
        np.testing.assert_allclose(sel.scores[j], want, rtol=2e-3)
