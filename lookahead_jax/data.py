"""Image-classification datasets as normalised NHWC numpy arrays.

Datasets (canonical name: images, train / test sizes, classes):

  * ``digits``: scikit-learn's bundled handwritten digits, 8x8x1, 1,437 / 360 (a fixed
    stratified split of the 1,797 images, ``random_state=0``), 10 classes. Ships with
    scikit-learn: needs no network and no TensorFlow.
  * ``mnist``: 28x28x1, 60,000 / 10,000, 10 classes.
  * ``fashion_mnist``: 28x28x1, 60,000 / 10,000, 10 classes.
  * ``svhn_cropped`` (alias ``svhn``): 32x32x3, 73,257 / 26,032, 10 classes (the
    ``extra`` split is not used).
  * ``cifar10``: 32x32x3, 50,000 / 10,000, 10 classes.
  * ``cifar100``: 32x32x3, 50,000 / 10,000, 100 (fine) classes.

Every loader returns a :class:`Dataset`: images ``(N, H, W, C)`` float32, scaled to
[0, 1] and then standardised per channel with the mean and standard deviation of the
training split (of the subsample, when ``max_train`` is given); the test split uses the
same training statistics. Labels are ``(N,)`` int32 in ``[0, num_classes)``.

Offline story. All datasets but ``digits`` come from tensorflow-datasets (tfds), which
needs TensorFlow (``pip install 'lookahead-jax[tf]'``). :func:`load_dataset` never
waits on the network unless asked to:

  1. if the dataset is already prepared in ``data_dir`` (default: ``$TFDS_DATA_DIR``,
     else tfds' default ``~/tensorflow_datasets``), it is read from there;
  2. else, if ``manual_dir`` (default: ``$TFDS_MANUAL_DIR``) is given, tfds builds the
     dataset into ``data_dir`` from the original archives in that folder, with no
     download (missing archives are reported before the build starts);
  3. else, if ``download=True``, tfds downloads and prepares it;
  4. else :class:`DatasetUnavailableError` says where it looked and how to provide the
     files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DATASETS: tuple[str, ...] = (
    "digits",
    "mnist",
    "fashion_mnist",
    "svhn_cropped",
    "cifar10",
    "cifar100",
)
ALIASES: dict[str, str] = {"svhn": "svhn_cropped"}
SOURCE_PREFIXES: tuple[str, ...] = ()  # a user's own data: "npz:PATH", "folder:PATH"

_TF_HINT = "building/loading tfds datasets needs TensorFlow: pip install 'lookahead-jax[tf]'"
_EXTRA_HINTS = {
    "fashion_mnist": (
        "Debian's package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) "
        "ships the four archives in /usr/share/datasets/fashion-mnist/, but re-compressed: "
        "their sha256 sums differ from the ones tfds registers, so tfds rejects that "
        "folder as a manual_dir (NonMatchingChecksumError)."
    ),
}
_READ_BATCH = 4096  # examples per tf.data batch when reading a tfds split
_STATS_CHUNK = 1 << 20  # rows of the (N*H*W, C) view summed at once by _channel_stats


class DatasetUnavailableError(ValueError):
    """The dataset is neither prepared locally nor buildable without a download."""


class Dataset(NamedTuple):
    """A normalised train/test split.

    Attributes:
      name: canonical dataset name (see :data:`DATASETS`).
      x_train: ``(N, H, W, C)`` float32, standardised with the train statistics.
      y_train: ``(N,)`` int32 in ``[0, num_classes)``.
      x_test: ``(M, H, W, C)`` float32, standardised with the train statistics.
      y_test: ``(M,)`` int32 in ``[0, num_classes)``.
      num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])


class _Raw(NamedTuple):
    """Unscaled splits as stored: images ``(N, H, W, C)`` with values in [0, max_value]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    max_value: float


def canonical_name(name: str) -> str:
    """Returns the canonical dataset name for ``name`` (case-insensitive, aliases resolved).

    Raises:
      ValueError: unknown name; the message lists the known names and aliases.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        aliases = ", ".join(f"{a} -> {c}" for a, c in ALIASES.items())
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            f"(aliases: {aliases})"
        )
    return key


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Loads ``name`` as a normalised, validated :class:`Dataset`.

    Args:
      name: a name from :data:`DATASETS` or :data:`ALIASES`.
      data_dir: tfds data directory (default ``$TFDS_DATA_DIR``, else tfds' default).
        Ignored for ``digits``.
      manual_dir: folder with the dataset's original archives, to build it offline
        (default ``$TFDS_MANUAL_DIR``). Ignored for ``digits``.
      download: let tfds download the dataset when it is not prepared.
      max_train: keep a random subsample of at most this many training examples.
      max_test: keep a random subsample of at most this many test examples.
      seed: seed of the subsampling (``np.random.default_rng``); the digits split
        itself is fixed.

    Raises:
      ValueError: unknown name, or the loaded arrays fail :func:`validate_dataset`.
      DatasetUnavailableError: the dataset is not available without a download.
      ImportError: TensorFlow is missing for a tfds dataset.
    """
    name = canonical_name(name)
    if name == "digits":
        raw = _load_digits()
    else:
        raw = _load_tfds(
            name,
            data_dir=data_dir or os.environ.get("TFDS_DATA_DIR"),
            manual_dir=manual_dir or os.environ.get("TFDS_MANUAL_DIR"),
            download=download,
        )
    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(raw.x_train, raw.y_train, max_train, rng)
    x_test, y_test = _subsample(raw.x_test, raw.y_test, max_test, rng)
    x_train, x_test = _standardise(
        _scale(x_train, raw.max_value), _scale(x_test, raw.max_value)
    )
    ds = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train.astype(np.int32),
        x_test=x_test,
        y_test=y_test.astype(np.int32),
        num_classes=int(raw.num_classes),
    )
    validate_dataset(ds)
    return ds


def validate_dataset(ds: Dataset) -> None:
    """Checks shapes, finiteness and label ranges of ``ds``.

    Raises:
      ValueError: listing every problem found (non-finite images with their count and
        first index, labels out of ``[0, num_classes)``, length or shape mismatches,
        empty splits).
    """
    problems = []
    if ds.num_classes < 1:
        problems.append(f"num_classes must be >= 1, got {ds.num_classes}")
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        problems += _input_problems(f"x_{split}", np.asarray(x))
        problems += _label_problems(f"y_{split}", np.asarray(y), ds.num_classes)
        if len(x) != len(y):
            problems.append(f"x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    if np.ndim(ds.x_train) >= 2 and np.ndim(ds.x_test) >= 2:
        if np.shape(ds.x_train)[1:] != np.shape(ds.x_test)[1:]:
            problems.append(
                f"x_train examples are {np.shape(ds.x_train)[1:]} but x_test examples are "
                f"{np.shape(ds.x_test)[1:]}"
            )
    if problems:
        raise ValueError(f"invalid dataset {ds.name!r}: " + "; ".join(problems))


def _input_problems(label: str, x: np.ndarray) -> list[str]:
    if x.ndim < 2:
        return [f"{label} must have an example axis and at least one feature axis "
                f"((n, d), (n, H, W, C), ...), got shape {x.shape}"]
    if not np.issubdtype(x.dtype, np.floating):
        return [f"{label} must hold floats (scale integer images, e.g. uint8 0-255, to "
                f"[0, 1] first), got dtype {x.dtype}"]
    if len(x) == 0:
        return [f"{label} is empty"]
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        return []
    first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), x.shape))
    return [f"{label} has {count} non-finite values (NaN/inf), first at index {first}"]


def _label_problems(label: str, y: np.ndarray, num_classes: int) -> list[str]:
    if y.ndim != 1:
        return [f"{label} must be 1-D (N,), got shape {y.shape}"]
    if len(y) == 0:
        return [f"{label} is empty"]
    if not np.issubdtype(y.dtype, np.integer):
        return [f"{label} must hold integers, got dtype {y.dtype}"]
    bad = (y < 0) | (y >= num_classes)
    count = int(bad.sum())
    if count == 0:
        return []
    first = int(np.argmax(bad))
    return [
        f"{label} has {count} labels outside [0, {num_classes}), first at index {first} "
        f"(value {y[first]})"
    ]


def _subsample(
    x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` random examples, kept in their original order."""
    if limit is None or limit >= len(x):
        return x, y
    if limit < 1:
        raise ValueError(f"max_train/max_test must be >= 1, got {limit}")
    keep = np.sort(rng.choice(len(x), size=limit, replace=False))
    return x[keep], y[keep]


def _scale(x: np.ndarray, max_value: float) -> np.ndarray:
    """``x / max_value`` as a new float32 array."""
    return np.divide(x, max_value, dtype=np.float32)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``(N, H, W, C)`` ``x``, accumulated in float64."""
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0, dtype=np.float64)
    sq = np.zeros_like(mean)
    for start in range(0, len(flat), _STATS_CHUNK):
        sq += np.square(flat[start : start + _STATS_CHUNK] - mean).sum(axis=0)
    std = np.sqrt(sq / len(flat))
    return mean, np.where(std > 0, std, 1.0)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardises both float32 arrays in place with ``x_train``'s channel statistics."""
    mean, std = (s.astype(np.float32) for s in _channel_stats(x_train))
    for x in (x_train, x_test):
        x -= mean
        x /= std
    return x_train, x_test


def _load_digits() -> _Raw:
    """scikit-learn's 8x8 digits, values 0..16, with a fixed stratified 1,437/360 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=360, stratify=digits.target, random_state=0
    )
    return _Raw(x_train, y_train, x_test, y_test, num_classes=10, max_value=16.0)


def _import_tfds() -> Any:
    """Imports tensorflow_datasets, failing clearly when TensorFlow is missing."""
    try:
        import tensorflow  # noqa: F401  (tfds builds and reads datasets with it)
    except ImportError as err:
        raise ImportError(f"{_TF_HINT} ({err})") from err
    import tensorflow_datasets as tfds

    return tfds


def _load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None,
    manual_dir: str | os.PathLike | None,
    download: bool,
) -> _Raw:
    """Reads both splits of a tfds dataset into memory (uint8 images, int labels)."""
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
    _ensure_prepared(tfds, builder, manual_dir=manual_dir, download=download)
    x_train, y_train = _read_split(tfds, builder, "train")
    x_test, y_test = _read_split(tfds, builder, "test")
    num_classes = builder.info.features["label"].num_classes
    return _Raw(x_train, y_train, x_test, y_test, num_classes, max_value=255.0)


def _read_split(tfds: Any, builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in file order: images ``(N, H, W, C)`` uint8, labels ``(N,)``.

    Reads fixed-size batches rather than ``batch_size=-1``: under
    ``tfds.testing.mock_data`` the split sizes are unknown and ``batch_size=-1`` makes
    TensorFlow reserve ``sys.maxsize`` elements and abort the process.
    """
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH, as_supervised=True)
    images, labels = zip(*tfds.as_numpy(ds))
    return np.concatenate(images), np.concatenate(labels)


def _ensure_prepared(
    tfds: Any, builder: Any, *, manual_dir: str | os.PathLike | None, download: bool
) -> None:
    """Makes sure ``builder``'s data exist in its data_dir, without an unasked download."""
    if builder.is_prepared():
        return
    if manual_dir:
        _build_from_manual_dir(tfds, builder, Path(manual_dir), download=download)
    elif download:
        builder.download_and_prepare()
    else:
        raise DatasetUnavailableError(
            f"dataset {builder.name!r} is not prepared in the tfds data_dir "
            f"{builder.data_dir_root} (looked for {builder.data_dir}), no manual_dir was "
            f"given and downloading is off.\n{_how_to_provide(builder)}"
        )


def _build_from_manual_dir(tfds: Any, builder: Any, manual_dir: Path, *, download: bool) -> None:
    """Builds the dataset from the original archives in ``manual_dir``.

    Without ``download`` the archives must all be there: tfds would otherwise fetch
    the missing ones from the network.
    """
    missing = [f for f in _archive_names(builder) if not (manual_dir / f).is_file()]
    if missing and not download:
        raise DatasetUnavailableError(
            f"cannot build {builder.name!r} offline: manual_dir {manual_dir} lacks "
            f"{', '.join(missing)}.\n{_how_to_provide(builder)}"
        )
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=download
    )
    try:
        builder.download_and_prepare(download_config=config)
    except ImportError:
        raise
    except Exception as err:  # tfds raises many types: checksum, archive, IO errors
        raise DatasetUnavailableError(
            f"building {builder.name!r} from manual_dir {manual_dir} into "
            f"{builder.data_dir_root} failed: {type(err).__name__}: {err}\n"
            f"{_how_to_provide(builder)}"
        ) from err


def _archive_names(builder: Any) -> list[str]:
    """File names of the original archives tfds expects for ``builder``."""
    return sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})


def _how_to_provide(builder: Any) -> str:
    archives = ", ".join(_archive_names(builder)) or "the original archives"
    lines = [
        f"To provide {builder.name!r}, either:",
        f"  * pass --data_dir (or set TFDS_DATA_DIR) to a tfds data_dir in which "
        f"{builder.name} {builder.version} is already prepared;",
        f"  * pass --manual_dir (or set TFDS_MANUAL_DIR) to a folder holding the original "
        f"archives ({archives}); tfds then builds the dataset offline into the data_dir;",
        "  * pass --download on a machine with internet access.",
    ]
    if builder.name in _EXTRA_HINTS:
        lines.append(_EXTRA_HINTS[builder.name])
    return "\n".join(lines)
