"""Shared fixtures. ``shared/`` (golden values, MNIST archives) sits beside the repo."""

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

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
