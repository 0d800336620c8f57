"""features="projected" and eval_subset through the strategy API, sequential mode, greedy
batch mode, streaming, and one CLI run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cli
from lookahead_jax import records, strategies
from lookahead_jax.strategies import ntk_lookahead as nl
from lookahead_jax.strategies.options import OptionsError
from test_strategies import make_context

# The context's MLP 9-16-4 has blocks (9+1)×16 and (16+1)×4; projection_dim 400 gives
# each block ≥ 160 = its size, so every factor is the identity and the projected kernel
# IS the exact one: the two paths must agree up to float32 rounding. jitter 1e-2: the
# dense Schur complement κ + λ − ‖W‖² cancels to λ, losing log10(κ/λ) ≈ 2 digits of
# float32's 7, so scores agree to ~1e-4 relative (1e-3 asserted); picks exactly.
EXACT_K = dict(projection_dim=400, jitter=1e-2)


def _select(kind, opts, **ctx_kw):
    return strategies.get(kind)(make_context(options=opts, **ctx_kw))


# (streaming changes nothing on the projected path; its exact path is tested elsewhere)
@pytest.mark.parametrize("mode", [dict(), dict(batch_mode="greedy")])
def test_identity_projection_reproduces_the_exact_path(mode):
    exact = _select("mlmoc", dict(jitter=1e-2, **mode))
    proj = _select("mlmoc", dict(features="projected", **EXACT_K, **mode))
    np.testing.assert_array_equal(proj.indices, exact.indices)
    np.testing.assert_allclose(np.asarray(proj.scores), np.asarray(exact.scores), rtol=1e-3)
    assert proj.info["features"] == 160 + 68


def test_sequential_mode_with_projected_features():
    truth = lambda j: int(j) % 4                                  # noqa: E731
    exact = _select("emoc", dict(jitter=1e-2), label_fn=truth)
    proj = _select("emoc", dict(features="projected", **EXACT_K), label_fn=truth)
    np.testing.assert_array_equal(proj.indices, exact.indices)
    np.testing.assert_array_equal(proj.revealed, exact.revealed)


def test_a_small_projection_is_an_approximation_of_the_exact_picks():
    exact = _select("mlmoc", dict(jitter=1e-2))
    proj = _select("mlmoc", dict(features="projected", projection_dim=64, jitter=1e-2))
    assert not np.allclose(np.asarray(proj.scores), np.asarray(exact.scores), rtol=1e-3)
    rho = np.corrcoef(np.argsort(np.argsort(np.asarray(proj.scores))),
                      np.argsort(np.argsort(np.asarray(exact.scores))))[0, 1]
    assert rho > 0.3                   # correlated, not equal (k = 64 of P = 228)


def test_eval_subset_equals_that_subset_as_eval_x_rescaled():
    ctx = make_context(options=dict(eval_subset=12, jitter=1e-2))
    idx = nl.eval_subset_indices(ctx.key, 30, 12)
    assert len(set(np.asarray(idx).tolist())) == 12
    sub = strategies.get("mlmoc")(ctx)
    ref = _select("mlmoc", dict(eval_x=jnp.take(ctx.x_candidates, idx, axis=0), jitter=1e-2))
    np.testing.assert_allclose(np.asarray(sub.scores), np.asarray(ref.scores) * 30 / 12,
                               rtol=1e-5)
    np.testing.assert_array_equal(sub.indices, ref.indices)
    # and the same on the projected path (identity projection: the exact numbers again)
    proj = _select("mlmoc", dict(eval_subset=12, features="projected", **EXACT_K))
    np.testing.assert_array_equal(proj.indices, sub.indices)
    # m >= E: every point, no rescaling
    assert nl.eval_subset_indices(ctx.key, 30, 30) is None


@pytest.mark.parametrize("opts, message", [
    (dict(features="projected", kernel="full"), "takes a scalar kernel"),
    (dict(features="projected", jitter=0.0), "needs jitter > 0"),
    (dict(features="projected", block=False), "needs block=True"),
    (dict(projection_dim=0), "'projection_dim' must be positive"),
    (dict(eval_subset=0), "'eval_subset' must be positive"),
    (dict(features="sketched"), "'features' .* must be one of 'exact', 'projected'"),
    (dict(sketch="dense"), "'sketch' .* must be one of 'khatri_rao', 'kronecker'"),
])
def test_bad_options_are_one_clear_error(opts, message):
    with pytest.raises(OptionsError, match=message):
        strategies.get("mlmoc").parse_options(opts)


def test_cli_runs_projected_mlmoc(tmp_path):
    out = cli("--config=experiments/configs/default.py", "--strategy=mlmoc",
              "--config.strategy_options.features=projected",
              "--config.strategy_options.projection_dim=256",
              "--config.strategy_options.eval_subset=40", "--cycles=2", "--epochs=1",
              "--initial_size=20", "--subset_size=80", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = records.read_json(str(tmp_path / "mlmoc" / "config.json"))
    assert cfg["strategy_options"] == {"features": "projected", "projection_dim": 256,
                                       "eval_subset": 40}
    lines = (tmp_path / "mlmoc" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2
