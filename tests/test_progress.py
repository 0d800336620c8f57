"""Progress bars over long kernel computations: shown when asked, numbers unchanged."""

import jax.numpy as jnp
import numpy as np

from lookahead_jax import lookahead as la


def _system(L=6, U=40, C=3, k=8, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(L + U, 5))
    K = z @ z.T + 0.1 * np.eye(L + U)                      # a PSD Θ over L + U points
    y = rng.integers(0, C, L)
    f = 0.1 * rng.normal(size=(L + U, C))
    st, spec, _ = la.build_system(jnp.asarray(K[:L, :L]), jnp.asarray(K[L:, :L]),
                                  jnp.asarray(y), jnp.asarray(f[:L]), jnp.asarray(f[L:]),
                                  num_classes=C, kappa=jnp.asarray(np.diag(K)[L:]),
                                  capacity=L + 2, jitter=1e-5, chunk_size=k)
    rows = lambda s0, s1: jnp.asarray(K[L + s0:L + min(s1, U), L:])  # noqa: E731
    return st, spec, rows, K, L


def test_streaming_progress_bar_counts_every_block_and_changes_nothing(capsys, monkeypatch):
    import tqdm

    closed = []

    class Recording(tqdm.tqdm):
        def close(self):
            closed.append((self.n, self.total, self.disable))
            super().close()

    monkeypatch.setattr(la.tqdm, "tqdm", Recording)
    st, spec, rows, _, _ = _system()
    quiet, c0 = la.streaming_scores("mlmoc", spec, st, rows, progress=False)
    assert capsys.readouterr().err == ""
    shown, c1 = la.streaming_scores("mlmoc", spec, st, rows, progress=True)
    err = capsys.readouterr().err
    assert "mlmoc row blocks of 8" in err and "0/5" in err      # 40 candidates, 5 blocks
    assert (5, 5, False) in closed                      # shown, every block counted
    np.testing.assert_array_equal(np.asarray(quiet), np.asarray(shown))
    assert int(c0) == int(c1)
