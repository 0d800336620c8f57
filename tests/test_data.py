"""Tests of lookahead_jax.data: digits, validation, offline tfds builds, mocked tfds loaders."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from lookahead_jax import data

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_MEAN, MNIST_STD = 0.1306605, 0.3081078  # training pixels scaled to [0, 1]


def assert_standardised(x: np.ndarray) -> None:
    """Per-channel mean ~0 and std ~1 over (N, H, W)."""
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2), dtype=np.float64), 1.0, atol=1e-4)


def run_python(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def no_network(monkeypatch):
    """Any Python-level network access fails the test at once."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- digits ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_dataset("digits")


def test_digits_shapes_and_dtypes(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape == (1437, 8, 8, 1)
    assert digits.x_test.shape == (360, 8, 8, 1)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int32 and digits.y_test.dtype == np.int32
    assert digits.num_classes == 10
    assert digits.input_shape == (8, 8, 1)


def test_digits_labels_and_stratified_split(digits):
    assert digits.y_train.min() == 0 and digits.y_train.max() == 9
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    assert test_counts.sum() == 360 and np.all(np.abs(test_counts - 36) <= 1)
    np.testing.assert_allclose(train_counts / 1437, test_counts / 360, atol=0.01)


def test_digits_normalised_with_train_statistics(digits):
    assert_standardised(digits.x_train)
    assert np.isfinite(digits.x_test).all()
    # Pixels were 0..16: zero maps to -mean/std, so the minimum is the same in both splits.
    assert digits.x_train.min() == pytest.approx(digits.x_test.min())


def test_digits_deterministic(digits):
    again = data.load_dataset("digits")
    for a, b in zip(digits, again):
        np.testing.assert_array_equal(a, b)


def test_subsample_is_seeded_and_renormalised():
    a = data.load_dataset("digits", max_train=200, max_test=50, seed=1)
    b = data.load_dataset("digits", max_train=200, max_test=50, seed=1)
    c = data.load_dataset("digits", max_train=200, max_test=50, seed=2)
    assert a.x_train.shape == (200, 8, 8, 1) and a.x_test.shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    assert_standardised(a.x_train)  # statistics of the subsample actually used
    assert data.load_dataset("digits", max_train=10_000).x_train.shape[0] == 1437


def test_digits_does_not_import_tensorflow():
    result = run_python(
        """
        import sys
        from lookahead_jax import data
        data.load_dataset("digits")
        loaded = sorted(m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules)
        print("LOADED", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


# --- names -------------------------------------------------------------------------------


def test_canonical_names_and_aliases():
    for name in data.DATASETS:
        assert data.canonical_name(name) == name
    assert data.canonical_name("svhn") == "svhn_cropped"
    assert data.canonical_name("CIFAR10") == "cifar10"
    assert data.canonical_name("fashion-mnist") == "fashion_mnist"


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        data.canonical_name("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    for name in (*data.DATASETS, *data.ALIASES):
        assert name in message
    with pytest.raises(ValueError, match="known datasets"):
        data.load_dataset("imagenet")


# --- validate_dataset --------------------------------------------------------------------


def make_dataset(**overrides) -> data.Dataset:
    rng = np.random.default_rng(0)
    fields = dict(
        name="toy",
        x_train=rng.normal(size=(6, 4, 4, 2)).astype(np.float32),
        y_train=np.array([0, 1, 2, 0, 1, 2], np.int32),
        x_test=rng.normal(size=(3, 4, 4, 2)).astype(np.float32),
        y_test=np.array([2, 1, 0], np.int32),
        num_classes=3,
    )
    fields.update(overrides)
    return data.Dataset(**fields)


def test_validate_accepts_valid_dataset():
    data.validate_dataset(make_dataset())


def test_validate_catches_nan_with_count_and_index():
    x = make_dataset().x_test.copy()
    x[1, 2, 3, 0] = np.nan
    x[2, 0, 0, 1] = np.nan
    expected = r"x_test has 2 non-finite .*first at index \(1, 2, 3, 0\)"
    with pytest.raises(ValueError, match=expected):
        data.validate_dataset(make_dataset(x_test=x))


def test_validate_catches_inf():
    x = make_dataset().x_train.copy()
    x[4, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"x_train has 1 non-finite .*\(4, 0, 0, 0\)"):
        data.validate_dataset(make_dataset(x_train=x))


@pytest.mark.parametrize("bad", [-2, 3])
def test_validate_catches_labels_out_of_range(bad):
    y = np.array([0, 1, bad, 0, bad, 2], np.int32)
    expected = r"y_train has 2 labels outside \[0, 3\) or -1 \(unknown\), first at index 2"
    with pytest.raises(ValueError, match=expected):
        data.validate_dataset(make_dataset(y_train=y))
    # the pool may hold unknown labels (-1); the evaluation split may not
    data.validate_dataset(make_dataset(y_train=np.array([0, 1, -1, 0, -1, 2], np.int32)))
    with pytest.raises(ValueError, match=r"y_test has 1 labels outside \[0, 3\), first"):
        data.validate_dataset(make_dataset(y_test=np.array([2, -1, 0], np.int32)))


def test_validate_catches_length_mismatch():
    with pytest.raises(ValueError, match="x_test has 3 examples but y_test has 2"):
        data.validate_dataset(make_dataset(y_test=np.array([0, 1], np.int32)))


def test_validate_catches_empty_split():
    empty = make_dataset(
        x_test=np.zeros((0, 4, 4, 2), np.float32), y_test=np.zeros((0,), np.int32)
    )
    with pytest.raises(ValueError, match="x_test is empty"):
        data.validate_dataset(empty)


def test_validate_catches_image_shape_mismatch():
    with pytest.raises(ValueError, match=r"x_train examples are \(4, 4, 2\) but x_test"):
        data.validate_dataset(make_dataset(x_test=np.zeros((3, 5, 5, 2), np.float32)))


def test_validate_catches_wrong_rank_and_label_dtype():
    with pytest.raises(ValueError, match="x_train must have an example axis"):
        data.validate_dataset(make_dataset(x_train=np.zeros((6,), np.float32)))
    with pytest.raises(ValueError, match="x_train must hold floats .* uint8"):
        data.validate_dataset(make_dataset(x_train=np.zeros((6, 4, 4, 2), np.uint8)))
    tabular = make_dataset(x_train=np.zeros((6, 32), np.float32),
                           x_test=np.zeros((3, 32), np.float32))
    data.validate_dataset(tabular)          # (n, d) inputs are fine
    with pytest.raises(ValueError, match="y_test must hold integers"):
        data.validate_dataset(make_dataset(y_test=np.array([0.0, 1.0, 2.0])))


# --- tfds: offline behaviour -------------------------------------------------------------


def test_unavailable_dataset_fails_fast_without_network(tmp_path, no_network):
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_dataset("cifar10", data_dir=tmp_path, manual_dir=None)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "'cifar10'" in message
    assert str(tmp_path) in message
    assert "no manual_dir was given" in message
    for hint in ("--data_dir", "--manual_dir", "--download", "cifar-10-binary.tar.gz"):
        assert hint in message
    assert elapsed < 30, f"took {elapsed:.1f} s (TensorFlow import included)"


def test_unavailable_uses_env_dirs_and_mentions_debian_package(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TFDS_MANUAL_DIR", raising=False)
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_dataset("fashion_mnist")
    assert str(tmp_path) in str(info.value)
    assert "dataset-fashion-mnist" in str(info.value)


def test_manual_dir_missing_archives_is_reported_before_any_download(tmp_path, no_network):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(data.DatasetUnavailableError, match="lacks t10k-images-idx3-ubyte.gz"):
        data.load_dataset("mnist", data_dir=tmp_path / "tfds", manual_dir=manual)


def test_manual_dir_with_wrong_files_reraises_build_error(tmp_path, no_network):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (manual / name).write_bytes(b"not an archive")
    with pytest.raises(data.DatasetUnavailableError, match="NonMatchingChecksumError"):
        data.load_dataset("mnist", data_dir=tmp_path / "tfds", manual_dir=manual)


def test_missing_tensorflow_gives_install_hint():
    result = run_python(
        """
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
        from lookahead_jax import data
        try:
            data.load_dataset("cifar10")
        except ImportError as err:
            print("IMPORT ERROR:", err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "needs TensorFlow: pip install 'lookahead-jax[tf]'" in result.stdout


# --- tfds: MNIST built offline from the original archives --------------------------------


@pytest.fixture(scope="module")
def mnist_data_dir(tmp_path_factory) -> Path:
    """A tfds data_dir with MNIST built from shared/data/mnist (once per module)."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the original MNIST archives are not at {MNIST_DIR} (shared/ is absent)")
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def mnist(mnist_data_dir) -> data.Dataset:
    return data.load_dataset("mnist", data_dir=mnist_data_dir, manual_dir=MNIST_DIR)


@pytest.mark.slow
def test_mnist_offline_build(mnist, mnist_data_dir):
    assert (mnist_data_dir / "mnist").is_dir()
    assert mnist.x_train.shape == (60_000, 28, 28, 1)
    assert mnist.x_test.shape == (10_000, 28, 28, 1)
    assert mnist.input_shape == (28, 28, 1) and mnist.num_classes == 10
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int32
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.y_test).tolist() == MNIST_TEST_COUNTS


@pytest.mark.slow
def test_mnist_normalised_with_train_statistics(mnist):
    assert_standardised(mnist.x_train)
    # Black pixels (0) map to -mean/std and white ones (1) to (1 - mean)/std.
    assert mnist.x_train.min() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-4)
    assert mnist.x_test.max() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-4)


@pytest.mark.slow
def test_mnist_prepared_dir_loads_without_manual_dir(mnist, mnist_data_dir, no_network):
    small = data.load_dataset(
        "mnist", data_dir=mnist_data_dir, manual_dir=None, max_train=500, max_test=100, seed=3
    )
    assert small.x_train.shape == (500, 28, 28, 1) and small.x_test.shape == (100, 28, 28, 1)
    assert_standardised(small.x_train)


# --- tfds: SVHN and CIFAR through tfds.testing.mock_data ---------------------------------


@pytest.fixture
def mock_tfds():
    """Random tfds data (5 examples a split) for any builder, treated as prepared.

    ``mock_data`` redirects every builder to a metadata-less data_dir, so the real
    ``is_prepared`` would say False; patching it exercises the loader's prepared path.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5), mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    ):
        yield


@pytest.mark.parametrize(
    "name, canonical, num_classes",
    [
        ("svhn_cropped", "svhn_cropped", 10),
        ("svhn", "svhn_cropped", 10),
        ("cifar10", "cifar10", 10),
        ("cifar100", "cifar100", 100),
    ],
)
def test_mocked_tfds_loaders(mock_tfds, tmp_path, no_network, name, canonical, num_classes):
    ds = data.load_dataset(name, data_dir=tmp_path)
    assert ds.name == canonical and ds.num_classes == num_classes
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.x_test.shape == (5, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() < num_classes
    assert_standardised(ds.x_train)
