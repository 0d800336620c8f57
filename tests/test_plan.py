"""``--plan``'s estimates (lookahead_jax/plan.py) against small measured CPU runs.

Memory: the plan's feature bytes equal the bytes of the features the engine returns, and
its kernel + look-ahead buffer bytes are within 2x of the arrays ``build_system`` holds
(the plan counts Θ(X, X) and the Cholesky factor at the real N; the state pads U to the
chunk and keeps f, f^lin, κ, u beside them). FLOPs: the plan's look-ahead FLOPs are within
a factor 4 of XLA's own count of the compiled programs (XLA counts a loop body once, so the
chunked scores are scaled by the number of chunks, and it does not count the Cholesky and
triangular-solve library calls, added as N³/3 + N²U; the plan counts the U²-sized sums as
6 FLOPs per entry). Time: the estimate is FLOPs / the measured matmul rate, a lower bound; the check
is one-sided (estimate ≤ 2 × measured), with no upper bound, so a busy machine cannot
fail it.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import lookahead as la
from lookahead_jax import loop, models, ntk, plan


def _config(**kw):
    base = dict(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                strategy="mlmoc", cycles=2, initial_size=40, query_size=10, subset_size=200)
    base.update(kw)
    return loop.LoopConfig(**base)


def _system(L, U, C):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(L + U, 50)).astype(np.float32)
    k = jnp.asarray(z @ z.T)
    return la.build_system(k[:L, :L], k[L:, :L], jnp.zeros(L, jnp.int32),
                           jnp.zeros((L, C), jnp.float32), jnp.zeros((U, C), jnp.float32),
                           num_classes=C, k_uu=k[L:, L:], chunk_size=64)


def test_memory_estimates_match_the_arrays():
    config = _config()
    plans = plan.plan_config(config)
    p = plans[0]
    assert (p.labeled, p.candidates) == (40, 200)
    model = models.get_model("mlp", 10, widths=(32,))
    var = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    x = jnp.zeros((p.labeled + p.candidates, 8, 8, 1))
    feats = ntk.ntk_features(model.bind(var.state), var.params, x)
    measured = sum(a.nbytes for a in jax.tree.leaves(feats))
    assert p.feature_bytes == measured
    state, _, _ = _system(p.labeled, p.candidates, 10)
    held = sum(a.nbytes for a in jax.tree.leaves(state))
    est = p.kernel_bytes + p.lookahead_bytes
    assert held / 2 <= est <= 2 * held, (est, held)


def test_lookahead_flops_and_seconds_against_a_measured_cycle():
    L, U, C = 300, 600, 10
    state, spec, _ = _system(L, U, C)
    flops, _, _ = plan.lookahead_cost(L, U, C, chunk=64)
    def xla_flops(lowered):
        a = lowered.compile().cost_analysis()
        return float((a[0] if isinstance(a, (list, tuple)) else a)["flops"])

    # XLA counts a loop's body once: the scores' lax.map over the chunks is scaled up
    num_chunks = state.kappa.shape[0] // spec.chunk
    # and does not count the Cholesky and triangular-solve library calls (N³/3 + N²U)
    xla = (xla_flops(la._batch_scores.lower("mlmoc", spec, state)) * num_chunks
           + L ** 3 / 3 + L * L * U)
    assert xla / 4 <= flops <= 4 * xla, (flops, xla)
    la.score_candidates("mlmoc", spec, state)[0].block_until_ready()      # compiled
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        s, spec2, _ = _system(L, U, C)
        la.score_candidates("mlmoc", spec2, s)[0].block_until_ready()
        times.append(time.perf_counter() - t0)
    estimate = flops / plan.matmul_rate()
    assert estimate <= 2 * min(times), (estimate, times)


def test_an_impossible_plan_is_refused_in_one_line():
    config = _config(subset_size=200)
    with pytest.raises(ValueError) as e:
        plan.check_fits(config, memory=200_000)
    msg = str(e.value)
    assert "\n" not in msg and "needs" in msg and "subset_size <=" in msg
    u = int(msg.split("subset_size <= ")[1].split(",")[0])
    plans = plan.plan_config(_config(subset_size=u), memory=200_000)
    assert plans[0].fits


class _FakeAccelerator:
    platform, device_kind = "gpu", "fake H200"

    def memory_stats(self):
        return {"bytes_limit": 100 << 30, "bytes_in_use": 20 << 30}


def test_budgets_come_from_memory_stats_where_the_backend_has_them(monkeypatch):
    from lookahead_jax.ntk import planner
    monkeypatch.setattr(jax, "devices", lambda *a: [_FakeAccelerator()])
    assert planner.memory_budget_bytes() == (80 << 30) // 2
    assert plan.device_memory() == (100 << 30, "gpu memory_stats bytes_limit")
