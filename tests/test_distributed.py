"""Two CPU processes joined by jax.distributed compute what one process computes.

The children run :func:`_worker` (this file, imported by path): 2 processes on localhost,
one CPU device each, coordinator on a free port. Every run is bounded: children get a
hard deadline and are SIGKILLed on it (a joined JAX process ignores SIGTERM: JAX's
preemption notifier catches it), and the test then fails with their output.

Cost, pinned to one core: each child ~17 s of CPU (mostly compiling; one process alone
needs ~11 s), the reference in this process ~6 s: ~40 s when the core is free.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

L, U, C, QUERY = 40, 200, 3, 4
CHUNK = 64
DEADLINE_S = 240         # both children, start to finish: ~35 s of CPU on one free core


def _problem():
    """A small MLP and inputs, identical in every process (fixed seeds)."""
    import jax
    import jax.numpy as jnp

    from lookahead_jax import models

    model = models.get_model("mlp", C, widths=(32,))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.RandomState(0)
    x = rng.randn(L + U, 4, 4, 1).astype(np.float32)
    y = rng.randint(0, C, L).astype(np.int32)
    return model, variables, x, y


def _compute() -> dict:
    """Θ_LL, Θ_UL, Θ_UU (``kernel_set``), streamed MLMOC scores ``(U,)`` and picks
    ``(QUERY,)``, as NumPy, plus ``[devices, local devices, processes]``."""
    import jax

    from lookahead_jax import distributed, ntk
    from lookahead_jax.strategies import AcquisitionContext, get_strategy

    model, variables, x, y = _problem()
    f = model.bind(variables.state)
    ks = ntk.kernel_set(f, variables.params, x[:L], x[L:], chunk_size=CHUNK)
    ctx = AcquisitionContext(
        model=model, params=variables.params, state=variables.state, x_labeled=x[:L],
        y_labeled=y, x_candidates=x[L:], num_classes=C, query_size=QUERY,
        key=jax.random.PRNGKey(1), labeled_capacity=L,
        options=dict(streaming=True, chunk_size=CHUNK, ntk_chunk_size=CHUNK))
    sel = get_strategy("mlmoc")(ctx)
    out = distributed.gather(dict(ll=ks.ll, ul=ks.ul, uu=ks.uu, scores=sel.scores))
    out["picks"] = np.asarray(sel.indices)
    out["devices"] = np.asarray([jax.device_count(), jax.local_device_count(),
                                 jax.process_count()])
    return out


def _worker(port: int, num: int, pid: int, out: str) -> None:
    from lookahead_jax import distributed

    distributed.initialize(f"localhost:{port}", num, pid, timeout_s=DEADLINE_S / 2)
    np.savez(out, **_compute())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return env


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_all(procs, deadline: float) -> list[str]:
    """Outputs of ``procs``; SIGKILLs every one and fails if any outlives ``deadline``."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [(p.communicate()[0] or "")[-1500:] for p in procs]
        pytest.fail("multi-process run did not finish in time; outputs:\n" +
                    "\n---\n".join(tails))
    return outs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port, t0 = _free_port(), time.monotonic()
    files = [tmp_path / f"p{i}.npz" for i in range(2)]
    procs = [_spawn(f"import sys; sys.path.insert(0, {HERE!r}); import test_distributed as t; "
                    f"t._worker({port}, 2, {i}, {str(files[i])!r})") for i in range(2)]
    outs = _wait_all(procs, t0 + DEADLINE_S)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{outs[i][-3000:]}"
    got = [dict(np.load(f)) for f in files]
    ref = _compute()                           # this process (one device: no mesh)
    for g in got:
        assert g["devices"].tolist() == [2, 1, 2]
    # Every process holds the same values, bit for bit (one global array each).
    for k in ref:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)
    # Against one process (float32). A kernel entry is the same dot product of two
    # examples' features whichever device holds the rows; only a different blocking of
    # the contraction (XLA:CPU picks it from the shapes, and a device now holds half the
    # rows) could change its summation order: allow 1e-6 of the kernel's scale (~8 ulps;
    # measured: bitwise equal). The scores come from SPMD-partitioned Cholesky solves and
    # sums over E = 200 candidates, reduced in another order: rtol 1e-5 (~80 ulps;
    # measured: 7e-7).
    for k in ("ll", "ul", "uu"):
        scale = np.abs(ref[k]).max()
        np.testing.assert_allclose(got[0][k], ref[k], rtol=0, atol=1e-6 * scale, err_msg=k)
    np.testing.assert_allclose(got[0]["scores"], ref["scores"], rtol=1e-5)
    s = np.sort(ref["scores"])[::-1]
    assert s[QUERY - 1] - s[QUERY] > 1e-4 * abs(s[QUERY]), "picks would hinge on a near-tie"
    np.testing.assert_array_equal(got[0]["picks"], ref["picks"])
    print(f"two processes: {time.monotonic() - t0:.1f} s; max |Δscore|/score "
          f"{np.max(np.abs(got[0]['scores'] - ref['scores']) / np.abs(ref['scores'])):.2e}")


def test_unreachable_coordinator_is_one_clear_error():
    port, t0 = _free_port(), time.monotonic()         # nobody listens there
    code = ("import sys, json\nfrom lookahead_jax import distributed\n"
            "try:\n"
            f"    distributed.initialize('localhost:{port}', 2, 1, timeout_s=3)\n"
            "except distributed.DistributedInitError as e:\n"
            "    print('CAUGHT', json.dumps([isinstance(e, RuntimeError), str(e)]))\n")
    (out,) = _wait_all([_spawn(code)], t0 + 30)
    line = next((s for s in out.splitlines() if s.startswith("CAUGHT ")), None)
    assert line is not None, out[-3000:]
    is_runtime, message = json.loads(line[len("CAUGHT "):])
    assert is_runtime and f"localhost:{port}" in message and "3 s" in message, message
    assert "\n" not in message
    assert time.monotonic() - t0 < 25
