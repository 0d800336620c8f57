"""Shared fixtures. ``shared/`` (golden values, MNIST archives) sits beside the repo."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
