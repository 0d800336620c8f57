"""Two CPU processes joined by jax.distributed compute what one process computes.

The children run :func:`_worker` (this file, imported by path): 2 processes on localhost,
one CPU device each, coordinator on a free port. Every run is bounded: children get a
hard deadline and are SIGKILLed on it, and the test then fails with their output.

Cost, pinned to one core: each child ~17 s of CPU (mostly compiling; one process alone
needs ~11 s), the reference in this process ~6 s: ~40 s when the core is free.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli

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


def _tiny_dataset():
    """conftest's ``tiny_dataset`` (a fixture, which a child process cannot request)."""
    from lookahead_jax import data

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].sum(axis=(1, 2, 3)) > 0).astype(np.int32) + \
        2 * (x[:, 3:, :3].sum(axis=(1, 2, 3)) > 0)
    return data.Dataset("tiny", x[:300], y[:300].astype(np.int32), x[300:],
                        y[300:].astype(np.int32), 4)


def _loop_config(**kw):
    from lookahead_jax import loop, train

    base = dict(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                strategy="mlmoc", strategy_options=(("streaming", True),), cycles=3,
                initial_size=20, query_size=8, subset_size=60, seed=3,
                train=train.TrainConfig(epochs=3, batch_size=16))
    base.update(kw)
    return loop.LoopConfig(**base)


def _summary(res) -> dict:
    return {"queries": [q["indices"] for q in res.queries],
            "accuracy": [m["test_accuracy"] for m in res.metrics]}


def _loop_worker(port: int, num: int, pid: int, root: str, out: str) -> None:
    """Runs ``full`` uninterrupted, ``part`` stopped after cycle 0 and then resumed, and
    ``full`` again with another seed (refused); writes what each returned as JSON."""
    from lookahead_jax import loop

    launch = dict(distributed=True, coordinator_address=f"localhost:{port}",
                  num_processes=num, process_id=pid)
    cfg, ds = _loop_config(**launch), _tiny_dataset()
    quiet = dict(dataset=ds, log=lambda s: None)
    got = {"full": _summary(loop.run(cfg, os.path.join(root, "full"), **quiet))}
    loop.run(cfg, os.path.join(root, "part"), stop_after_cycle=0, **quiet)
    got["resumed"] = _summary(loop.run(cfg, os.path.join(root, "part"), **quiet))
    t0 = time.monotonic()
    try:
        loop.run(_loop_config(seed=4, **launch), os.path.join(root, "full"), **quiet)
    except ValueError as e:
        got["refused"] = [type(e).__name__, str(e), time.monotonic() - t0]
    with open(out, "w") as fh:
        json.dump(got, fh)


@pytest.mark.slow
def test_two_process_run_checkpoints_and_resumes(tmp_path):
    """Process 0 saves the network of every cycle (orbax, the last two); an interrupted
    two-process run resumes to the uninterrupted one's queries and accuracies, its
    checkpoints bit for bit the same; one process resumes it too. Cost, pinned to one
    core: ~16 s of CPU per child (mostly compiling), ~5 s here; ~40 s in all."""
    from lookahead_jax import loop, run_setup
    from lookahead_jax.workdir import Workdir

    port, t0 = _free_port(), time.monotonic()
    files = [tmp_path / f"p{i}.json" for i in range(2)]
    roots = [tmp_path / "p0", tmp_path / "p1"]     # process 1 writes nothing: in memory
    procs = [_spawn(f"import sys; sys.path.insert(0, {HERE!r}); import test_distributed as t; "
                    f"t._loop_worker({port}, 2, {i}, {str(roots[i])!r}, {str(files[i])!r})")
             for i in range(2)]
    outs = _wait_all(procs, t0 + DEADLINE_S)
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{outs[i][-3000:]}"
    got = [json.loads(f.read_text()) for f in files]
    assert not roots[1].exists()
    full, part = roots[0] / "full", roots[0] / "part"
    # Every process ends with the same records (process 1 rebuilt process 0's on resume).
    assert got[0]["full"] == got[1]["full"] and got[0]["resumed"] == got[1]["resumed"]
    assert len(got[0]["full"]["accuracy"]) == 3
    assert got[0]["resumed"] == got[0]["full"]
    assert sorted(os.listdir(full / "checkpoints")) == sorted(os.listdir(
        part / "checkpoints")) == ["1", "2"]
    cfg = _loop_config()
    template = run_setup.init_variables(run_setup.setup(cfg, None, dataset=_tiny_dataset()))
    with Workdir(str(full)) as a, Workdir(str(part)) as b:
        for x, y in zip(*(_leaves(w.load_variables(2, template)) for w in (a, b))):
            np.testing.assert_array_equal(x, y)
    # One process resumes the two-process workdir: nothing left to run, the same rows.
    alone = loop.run(cfg, str(part), dataset=_tiny_dataset(), log=lambda s: None)
    assert _summary(alone) == got[0]["full"]
    # Another seed: process 0 refuses the workdir, process 1 says so at once (one line).
    name0, msg0, s0 = got[0]["refused"]
    name1, msg1, s1 = got[1]["refused"]
    assert name0 == name1 == "WorkdirError" and "fields seed differ" in msg0, got
    assert msg1 == f"process 0 refused the workdir: {msg0}" and "\n" not in msg1
    assert max(s0, s1) < 10, got
    print(f"two processes, 3 runs: {time.monotonic() - t0:.1f} s")


def test_a_process_that_fails_ends_the_others_at_once(tmp_path):
    """Process 1's workdir is a file: it says so and leaves; process 0's next collective
    then fails at once, and it says so in one line too. (Before, the failed process
    waited in JAX's shutdown for the others, which waited in a collective: ~5 min, then
    a C++ abort with a stack trace on each.) Cost: ~6 s of CPU per process (imports,
    the data; no training)."""
    port, t0 = _free_port(), time.monotonic()
    (tmp_path / "file").write_text("")
    workdirs = [tmp_path / "w", tmp_path / "file"]
    logs = [open(tmp_path / f"out{i}.txt", "w+") for i in range(2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.main", f"--workdir={workdirs[i]}",
         "--strategy=mlmoc", "--cycles=2", "--distributed",
         f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=REPO, env=_env(), stdout=logs[i],
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    ended = [None, None]
    while None in ended and time.monotonic() < t0 + 180:
        ended = [e if e is not None or p.poll() is None else time.monotonic()
                 for e, p in zip(ended, procs)]
        time.sleep(0.1)
    for p in procs:
        p.kill()
        p.wait()
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read())
        log.close()
    assert None not in ended, f"still running after 180 s:\n{outs}"
    errors = [[line for line in out.splitlines() if line.startswith("error:")] for out in outs]
    assert [p.returncode for p in procs] == [1, 2], outs
    assert errors[1] == [f"error: workdir {workdirs[1]} is a file, not a folder; choose "
                         "another --workdir"], outs[1]
    assert len(errors[0]) == 1 and errors[0][0].startswith(
        "error: another process of the multi-process run stopped"), outs[0]
    for out in outs:
        assert "Traceback" not in out and "Check failure" not in out, out
    # Process 0 still loads the data and opens the run after process 1 left (measured:
    # 19 s on a shared core); JAX's heartbeat check would end it ~100 s after, with a
    # C++ abort, and its shutdown ~5 min after.
    assert ended[0] - ended[1] < 90, ended
    print(f"process 1 ended after {ended[1] - t0:.1f} s, process 0 {ended[0] - ended[1]:.1f} s "
          "later")


def test_a_workdir_without_checkpoints_says_why_it_cannot_resume(tmp_path):
    """Multi-process runs of older versions saved no checkpoints: resuming one is refused
    naming that cause (not "deleted" alone)."""
    from lookahead_jax.records import RecordError
    from lookahead_jax.workdir import Workdir

    with Workdir.open(str(tmp_path)) as wd:
        with pytest.raises(RecordError, match=r"holds no network checkpoint, but state.json "
                                              r"says cycle 1 finished: .* multi-process run "
                                              r"of an older lookahead-jax"):
            wd.load_variables(1, {"w": np.zeros(2, np.float32)})


def _leaves(tree) -> list:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


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


def test_cli_join_timeout_bounds_the_wait_for_an_absent_coordinator(tmp_path):
    # --join_timeout_s replaces the 300 s default: one line naming the address and the
    # timeout, exit 1, well within the limit
    port, t0 = _free_port(), time.monotonic()
    out = cli("--workdir", str(tmp_path / "w"), "--distributed",
              f"--coordinator_address=localhost:{port}", "--num_processes=2",
              "--process_id=1", "--join_timeout_s=3", timeout=60)
    err = out.stderr
    assert out.returncode == 1, err[-3000:]
    assert err.startswith("error: cannot reach the coordinator at "
                          f"localhost:{port} within 3 s"), err[-3000:]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert time.monotonic() - t0 < 45


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), True, "3"])
def test_join_timeout_must_be_a_positive_number(value):
    from lookahead_jax import loop, resume

    launch = dict(distributed=True, coordinator_address="localhost:1", num_processes=2,
                  process_id=1)
    with pytest.raises(ValueError, match="join_timeout_s must be a positive number"):
        loop.LoopConfig(**launch, join_timeout_s=value)
    with pytest.raises(ValueError, match="join_timeout_s set without distributed"):
        loop.LoopConfig(join_timeout_s=3.0)
    # how long to wait is how the run is launched: never in config.json
    assert "join_timeout_s" not in resume._recorded(loop.LoopConfig(**launch, join_timeout_s=3.0))


def test_sigterm_stops_a_joined_process_in_one_line(tmp_path):
    """SIGTERM (a scheduler's stop) to process 1 of a running two-process run: it says so
    in one line and exits 143 at once (JAX's preemption service used to take the signal,
    so only SIGKILL stopped it); process 0 then says another process stopped. Both share
    one workdir, as two processes on one machine would; the finished cycle is kept."""
    from lookahead_jax import records

    port, t0 = _free_port(), time.monotonic()
    logs = [open(tmp_path / f"out{i}.txt", "w+") for i in range(2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.main", f"--workdir={tmp_path / 'w'}",
         "--strategy=random", "--cycles=50", "--initial_size=30", "--query_size=10",
         "--subset_size=600", "--epochs=30", "--distributed",
         f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=REPO, env=_env(), stdout=logs[i],
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        state = tmp_path / "w" / "random" / "state.json"
        while not state.exists() and time.monotonic() < t0 + 180 and procs[1].poll() is None:
            time.sleep(0.2)
        assert state.exists(), "the first cycle did not finish within 180 s"
        procs[1].send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _wait_all(procs, sent + 90)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for log in logs:
            log.close()
    outs = [(tmp_path / f"out{i}.txt").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [1, 143], outs
    lines = [line for line in outs[1].splitlines() if line.startswith("terminated:")]
    assert lines == ["terminated: process 0 keeps the finished cycles in its --workdir; "
                     "the same commands, on every process, resume from there"], outs[1]
    assert [line for line in outs[0].splitlines() if line.startswith("error:")][0].startswith(
        "error: another process of the multi-process run stopped"), outs[0]
    for out in outs:
        assert "Traceback" not in out and "Check failure" not in out, out
    assert records.read_json(str(state))["cycle_done"] >= 0
