"""Shared fixtures and helpers. ``shared/`` (golden values, MNIST archives) sits beside the
repo. Test modules import the plain helpers (``from conftest import loop_config``)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

# Shape bugs fail loudly (as equinox's tests/conftest.py does): an implicit rank
# promotion, e.g. (n, C) + (C,), raises instead of broadcasting silently. Library code
# broadcasts explicitly (``b[None, :]``). Subprocesses started by tests do not inherit this.
jax.config.update("jax_numpy_rank_promotion", "raise")

# Modules whose networks are users' functions written with implicit broadcasting on
# purpose (the structured NTK must recognise code as people write it): promotion allowed.
USER_STYLE_MODULES = {"test_ntk_speed_paths"}

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"


def loop_config(strategy="entropy", epochs=4, **kw):
    """A quick LoopConfig: a 32-wide MLP, 4 cycles from 20 labels, 8 per query, seed 3."""
    from lookahead_jax import loop, train

    base = dict(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                strategy=strategy, cycles=4, initial_size=20, query_size=8, subset_size=60,
                seed=3, train=train.TrainConfig(epochs=epochs, batch_size=16))
    base.update(kw)
    return loop.LoopConfig(**base)


def margin_config(**kw):
    """``loop_config`` for the workdir, oracle and records tests: margin, 3 epochs."""
    return loop_config(**{"strategy": "margin", "epochs": 3, **kw})


def quiet_run(workdir, dataset, **kw):
    """``loop.run`` on ``workdir`` without log lines (``config=`` default margin_config())."""
    from lookahead_jax import loop

    return loop.run(kw.pop("config", margin_config()), str(workdir), dataset=dataset,
                    log=lambda s: None, **kw)


def run_summary(res):
    """(queried indices per cycle, test accuracy per cycle) of a RunResult."""
    return [q["indices"] for q in res.queries], [m["test_accuracy"] for m in res.metrics]


def _cli_command(args):
    return dict(args=[sys.executable, "-m", "experiments.main", *args], text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def cli(*args, cwd=REPO, timeout=900) -> subprocess.CompletedProcess:
    """``python -m experiments.main *args`` run to its end, its output captured."""
    return subprocess.run(**_cli_command(args), cwd=cwd, capture_output=True,
                          timeout=timeout)


def cli_start(*args, cwd=REPO) -> subprocess.Popen:
    """``python -m experiments.main *args`` started, not waited for (stdout/stderr piped)."""
    return subprocess.Popen(**_cli_command(args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_until(ready, timeout, what="the condition"):
    """Polls ``ready()`` every 0.2 s until it holds; fails the test after ``timeout`` s."""
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _rank_promotion(request):
    if request.module.__name__.rsplit(".", 1)[-1] in USER_STYLE_MODULES:
        with jax.numpy_rank_promotion("allow"):
            yield
    else:
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared/ not found beside the repository (looked in {SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def digits():
    from lookahead_jax import data

    return data.load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_dataset():
    """A 300/100-example random 6×6×1 problem with a learnable rule, for fast loops."""
    from lookahead_jax import data

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].sum(axis=(1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, 3:, :3].sum(axis=(1, 2, 3)) > 0)
    return data.Dataset("tiny", x[:300], y[:300].astype(np.int32), x[300:],
                        y[300:].astype(np.int32), 4)
