"""Datasets and pools as normalised numpy arrays: benchmarks, or a user's own data.

A :class:`Dataset` is a *pool* of inputs of any per-example shape (images NHWC, tabular
``(n, d)``, precomputed embeddings) whose labels may be unknown (−1), with optional class
names, ids people find the items by, labels given with the pool (the starting labeled
set) and an optional labeled evaluation split (without one there is no test accuracy and
nothing breaks).

A user's own data (:func:`load_dataset` with a source prefix, or :func:`from_arrays`):

  * ``npz:PATH``: an ``.npz`` with key ``x`` (the pool) and optionally ``y`` (the labels
    known now, −1 for unknown: the starting labeled set), ``y_true`` (complete labels a
    simulated oracle answers from), ``x_test``/``y_test``, ``class_names``, ``items``,
    ``num_classes``. The archive is checked before anything is read (:func:`read_npz`):
    each array's header (shape × dtype) must match the bytes the archive holds for it, so
    a damaged or lying file is refused in one line instead of allocating what it claims;
    archives are never unpickled (object arrays are refused).
  * ``folder:PATH``: an image folder, ``PATH/<class_name>/*.png|jpg`` labeled,
    ``PATH/unlabeled/*`` unlabeled, optionally ``PATH/test/<class_name>/*``; decoded with
    Pillow and resized to the most common size (RGB if any image has colour, else grey).
    EXIF orientation is applied (the network sees what a viewer shows); 16-bit greyscale
    (``I;16``, ``I``) is scaled by 65535, 8-bit by 255, float (``F``) images are taken as
    they are. Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) and tool
    folders (``__MACOSX``) are skipped and counted in one line (:attr:`Dataset.notes`);
    symbolic links are followed only when they lead inside ``PATH``, and an image reached
    twice is refused. A file Pillow cannot decode (truncated, a decompression bomb) is
    refused naming it.

Normalisation statistics come from the whole pool (no labels needed): per channel for
images, per feature for tabular inputs; integer images (uint8) are first scaled to [0, 1].

Benchmark datasets (canonical name: images, train / test sizes, classes):

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

import collections
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

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
SOURCE_PREFIXES: tuple[str, ...] = ("npz:", "folder:")  # a user's own data
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNKNOWN = -1  # the label of a pool item nobody has labeled

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
    """A normalised pool and an optional evaluation split.

    Attributes:
      name: the dataset's name (a canonical name of :data:`DATASETS`, or the source).
      x_train: the pool, ``(N, ...)`` float32, standardised with the pool's statistics.
      y_train: ``(N,)`` int32: the label an informed oracle answers, in
        ``[0, num_classes)``, or −1 (:data:`UNKNOWN`) where nobody knows it yet.
      x_test: ``(M, ...)`` float32 evaluation inputs (same statistics), or ``None``.
      y_test: ``(M,)`` int32 evaluation labels, or ``None``.
      num_classes: C.
      class_names: ``C`` names, or ``None``.
      items: per pool item, what a person finds it by (a file path, an id), or ``None``.
      given: ``(N,)`` bool, labels that came with the pool (the starting labeled set), or
        ``None`` (benchmarks: the initial set is a seeded random draw).
      notes: what loading had to say about the data (files it skipped), one line each;
        the loop logs them.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    num_classes: int
    class_names: Optional[tuple] = None
    items: Optional[Sequence[str]] = None
    given: Optional[np.ndarray] = None
    notes: tuple = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, e.g. ``(H, W, C)`` or ``(d,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def has_test(self) -> bool:
        return self.x_test is not None

    def item(self, i: int) -> str:
        """What a person finds pool item ``i`` by."""
        return str(self.items[i]) if self.items is not None else f"{self.name}[{i}]"


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
        own = "npz" if name.lower().endswith(".npz") else \
            "folder" if os.path.isdir(name) else None
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            f"(aliases: {aliases}); your own data: npz:PATH (an .npz archive) or folder:PATH "
            f"(image sub-folders, one per class)" + (f", e.g. {own}:{name}" if own else "")
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
      name: a name from :data:`DATASETS` or :data:`ALIASES`, or a user's own data:
        ``npz:PATH`` (:func:`load_npz`) or ``folder:PATH`` (:func:`load_folder`).
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
    if name.startswith("npz:"):
        return load_npz(name[len("npz:"):])
    if name.startswith("folder:"):
        return load_folder(name[len("folder:"):])
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
      ValueError: listing every problem found (non-finite inputs with their count and
        first index, labels out of ``[0, num_classes)`` (−1 allowed in the pool: unknown),
        length or shape mismatches, empty splits, a test split without labels, class
        names or items of the wrong length, given labels that are unknown).
    """
    problems = []
    if isinstance(ds.num_classes, bool) or not isinstance(ds.num_classes, (int, np.integer)) \
            or ds.num_classes < 2:
        problems.append(f"num_classes must be an integer >= 2 (a classifier needs two "
                        f"classes), got {ds.num_classes!r}")
    splits = [("train", ds.x_train, ds.y_train, True)]
    if (ds.x_test is None) != (ds.y_test is None):
        problems.append("x_test and y_test go together: give both or neither")
    elif ds.x_test is not None:
        splits.append(("test", ds.x_test, ds.y_test, False))
    for split, x, y, pool in splits:
        problems += _input_problems(f"x_{split}", np.asarray(x))
        problems += _label_problems(f"y_{split}", np.asarray(y), int(ds.num_classes), pool)
        if len(x) != len(y):
            problems.append(f"x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    if ds.x_test is not None and np.ndim(ds.x_train) >= 2 and np.ndim(ds.x_test) >= 2:
        if np.shape(ds.x_train)[1:] != np.shape(ds.x_test)[1:]:
            problems.append(
                f"x_train examples are {np.shape(ds.x_train)[1:]} but x_test examples are "
                f"{np.shape(ds.x_test)[1:]}"
            )
    n = len(ds.x_train)
    if ds.class_names is not None:
        names = [str(c) for c in ds.class_names]
        if len(names) != ds.num_classes or len(set(names)) != len(names):
            problems.append(f"class_names must be {ds.num_classes} distinct names, got "
                            f"{names}")
    if ds.items is not None and len(ds.items) != n:
        problems.append(f"items has {len(ds.items)} entries for a pool of {n}")
    if ds.given is not None:
        given = np.asarray(ds.given)
        if given.shape != (n,) or given.dtype != bool:
            problems.append(f"given must be a ({n},) bool mask, got {given.dtype} "
                            f"{given.shape}")
        elif np.any(np.asarray(ds.y_train)[given] < 0):
            problems.append("given marks items whose label is unknown (-1)")
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


def _label_problems(label: str, y: np.ndarray, num_classes: int,
                    unknown_ok: bool = False) -> list[str]:
    if y.ndim != 1:
        return [f"{label} must be 1-D (N,), got shape {y.shape}"]
    if len(y) == 0:
        return [f"{label} is empty"]
    if not np.issubdtype(y.dtype, np.integer):
        return [f"{label} must hold integers, got dtype {y.dtype}"]
    lo = UNKNOWN if unknown_ok else 0
    bad = (y < lo) | (y >= num_classes)
    count = int(bad.sum())
    if count == 0:
        return []
    first = int(np.argmax(bad))
    allowed = f"[0, {num_classes})" + (" or -1 (unknown)" if unknown_ok else "")
    return [
        f"{label} has {count} labels outside {allowed}, first at index {first} "
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


def _standardise(x_train: np.ndarray, x_test: Optional[np.ndarray]
                 ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Standardises both float32 arrays in place with ``x_train``'s statistics along the last
    axis (channels of images, features of tabular inputs)."""
    mean, std = (s.astype(np.float32) for s in _channel_stats(x_train))
    for x in (x_train, x_test):
        if x is not None:
            x -= mean
            x /= std
    return x_train, x_test


# ============================================================================ own data


def _as_float_inputs(x, what: str) -> np.ndarray:
    """``x`` as a new float32 array; uint8 images are scaled to [0, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return _scale(x, 255.0)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_):
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must hold numbers, got dtype {x.dtype}")
    return np.array(x, dtype=np.float32)


def _shape_problems(x: np.ndarray, y, y_true, x_test, y_test, class_names,
                    items) -> list[str]:
    """Shapes that cannot make a pool, each naming the array (before any arithmetic)."""
    problems = []
    for key, a in (("x", x), ("x_test", x_test)):
        if a is not None and np.ndim(a) < 2:
            hint = (f"; for one feature per example use {key}[:, None]" if np.ndim(a) == 1
                    else "")
            problems.append(f"{key} must be (N, ...) with an example axis and at least one "
                            f"feature axis, got shape {np.shape(a)}{hint}")
    if problems:
        return problems
    n = len(x)
    if x_test is not None and np.shape(x_test)[1:] != np.shape(x)[1:]:
        problems.append(f"x holds examples of shape {np.shape(x)[1:]} but x_test "
                        f"{np.shape(x_test)[1:]}: both must be the same per example")
    for key, a, want in (("y", y, n), ("y_true", y_true, n),
                         ("y_test", y_test, None if x_test is None else len(x_test))):
        if a is None:
            continue
        shape = np.shape(a)
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
        if len(shape) != 1:
            problems.append(f"{key} must be 1-D, one label per example, got shape "
                            f"{np.shape(a)}")
        elif want is not None and shape[0] != want:
            of = "x" if key != "y_test" else "x_test"
            problems.append(f"{key} has {shape[0]} labels for the {want} examples of {of}")
    if y_test is not None and x_test is None:
        problems.append("y_test needs x_test (give both or neither)")
    if class_names is not None and np.ndim(class_names) != 1:
        problems.append(f"class_names must be 1-D (one name per class), got shape "
                        f"{np.shape(class_names)}")
    if items is not None and (np.ndim(items) != 1 or len(items) != n):
        problems.append(f"items must hold one id per example of x ({n}), got shape "
                        f"{np.shape(items)}")
    return problems


def _ranges(values) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2, 5, 7-8``."""
    out, values = [], sorted(int(v) for v in values)
    start = prev = values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def _unnamed_class_gap(labels: Sequence[Optional[np.ndarray]]) -> Optional[str]:
    """With no class names or count, C is guessed as the largest label + 1: a class that
    never occurs below it (one stray 7 among 0-2) makes that guess unsafe."""
    known = [np.asarray(a)[np.asarray(a) >= 0] for a in labels if a is not None]
    present = np.unique(np.concatenate(known)) if known else np.zeros(0, np.int64)
    if present.size == 0 or present.size == int(present[-1]) + 1:
        return None
    top = int(present[-1])
    missing = sorted(set(range(top + 1)) - set(present.tolist()))
    return (f"the labels are {_ranges(present)}: class{'es' if len(missing) > 1 else ''} "
            f"{_ranges(missing)} never occur{'s' if len(missing) == 1 else ''}, so the "
            f"number of classes is unclear; if {top} is a mistake correct it, else give "
            f"class_names (or num_classes) for all {top + 1} classes")


def from_arrays(x, y=None, *, y_true=None, x_test=None, y_test=None,
                class_names: Optional[Sequence[str]] = None,
                items: Optional[Sequence[str]] = None,
                num_classes: Optional[int] = None, name: str = "arrays",
                notes: Sequence[str] = ()) -> Dataset:
    """A user's own pool as a normalised :class:`Dataset`.

    Args:
      x: ``(N, ...)`` pool inputs (images NHWC, tabular ``(N, d)``, embeddings); uint8
        images are scaled to [0, 1]; then standardised with the pool's own statistics.
      y: ``(N,)`` labels known now, −1 where unknown (default: all unknown). Known ones are
        the starting labeled set.
      y_true: ``(N,)`` complete labels for a simulated run (a simulated oracle answers from
        them); must agree with ``y`` where ``y`` is known.
      x_test, y_test: an optional labeled evaluation split.
      class_names: optional names of the C classes.
      items: optional per-item ids people find items by (default ``"<name>[i]"``).
      num_classes: C (default: ``len(class_names)``, else the largest label + 1, which
        every class below it must then have a label of: a stray label is refused).
      name: the dataset's name in records.
      notes: lines loading had to say (:attr:`Dataset.notes`).

    Raises:
      ValueError: one line naming the array and what to fix: a shape that cannot be a
        pool (0-d or 1-D inputs, ``x_test`` examples shaped unlike ``x``'s, label arrays
        of the wrong length), labels that are not integers or out of range, a class
        count that cannot be told from unnamed labels.
    """
    shapes = _shape_problems(np.asarray(x), y, y_true, x_test, y_test, class_names,
                             items)
    if shapes:
        raise ValueError(f"invalid dataset {name!r}: " + "; ".join(shapes))
    x = _as_float_inputs(x, "x")
    n = len(x)
    y_known = np.full(n, UNKNOWN, np.int64) if y is None else _int_labels(y, "y")
    if y_true is not None:
        y_true = _int_labels(y_true, "y_true")
        known = y_known >= 0
        if np.any(y_true[known] != y_known[known]):
            i = int(np.flatnonzero(known & (y_true != y_known))[0])
            raise ValueError(f"y and y_true disagree at pool item {i} ({y_known[i]} vs "
                             f"{y_true[i]})")
    if y_test is not None:
        y_test = _int_labels(y_test, "y_test")
    if class_names is not None:
        class_names = tuple(str(c) for c in np.asarray(class_names).tolist())
    if num_classes is None and class_names is None:
        gap = _unnamed_class_gap([y_known, y_true, y_test])
        if gap:
            raise ValueError(f"invalid dataset {name!r}: {gap}")
    if num_classes is None:
        labels = [a for a in (y_known, y_true, y_test) if a is not None]
        top = max((int(np.max(a)) for a in labels if np.size(a)), default=UNKNOWN)
        num_classes = len(class_names) if class_names is not None else top + 1
    elif np.ndim(num_classes) == 0 and np.issubdtype(np.asarray(num_classes).dtype,
                                                      np.integer):
        num_classes = int(num_classes)
    xt = None if x_test is None else _as_float_inputs(x_test, "x_test")
    x, xt = _standardise(x, xt)
    ds = Dataset(name=name, x_train=x,
                 y_train=(y_true if y_true is not None else y_known).astype(np.int32),
                 x_test=xt, y_test=None if y_test is None else y_test.astype(np.int32),
                 num_classes=num_classes, class_names=class_names,
                 items=None if items is None else [str(i) for i in items],
                 given=(y_known >= 0) if y is not None else None, notes=tuple(notes))
    validate_dataset(ds)
    return ds


def _int_labels(y, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{what} must hold integer labels, got non-integer values")
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must hold integer labels, got dtype {y.dtype}")
    return y.astype(np.int64).reshape(-1)


NPZ_KEYS = ("x", "y", "y_true", "x_test", "y_test", "class_names", "items", "num_classes")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_DEFLATE_MAX_RATIO = 1100   # deflate expands at most ~1032:1; a member claiming more lies


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3g} GB" if nbytes >= 1e8 else f"{nbytes} bytes"


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def read_npz(path: str, keys: Sequence[str] = NPZ_KEYS) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz``, each checked against the file before it is allocated.

    Never unpickles: an object array is refused. Before any array is read, its ``.npy``
    header (shape × dtype) must match the bytes the archive holds for it (a header that
    claims 480 GB in a small file is refused, not allocated), and all of them together
    must fit in this machine's memory.

    Raises:
      ValueError: one line starting ``npz:PATH:`` for a missing, empty, non-archive
        (a text file, a bare ``.npy``), truncated or damaged (bad CRC) file, a member that
        is not an array, an unknown key, an object array, a lying header.
    """
    where = f"npz:{path}"
    if not os.path.exists(path):
        raise ValueError(f"{where}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{where}: is a folder, not an .npz file (for a folder of images "
                         f"use folder:{path})")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{where}: the file is empty (0 bytes; it was not written "
                         "completely?): save the pool again with np.savez(path, x=...)")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{where}: is one .npy array, not an .npz archive: save the pool "
                         "with np.savez(path, x=array, ...)")
    if not head.startswith(_ZIP_MAGIC):
        text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        kind = "; it reads as text" if text else ""
        raise ValueError(f"{where}: not an .npz archive (a zip of .npy arrays{kind}, "
                         f"starting {head[:16]!r}): save the pool with np.savez(path, x=...)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"{where}: damaged .npz archive ({e}; truncated or not copied "
                         "completely?): save or copy it again") from None
    with zf:
        members = {}
        for info in zf.infolist():
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            members[key] = info
        unknown = sorted(set(members) - set(keys))
        if unknown or "x" not in members:
            raise ValueError(f"{where}: keys {sorted(members)}; it needs 'x' and may have "
                             f"{', '.join(k for k in keys if k != 'x')}"
                             + (f" (unknown: {unknown})" if unknown else ""))
        total = 0
        for key, info in members.items():
            total += _check_member(where, zf, key, info)
        memory = _physical_memory()
        if memory is not None and total > memory:
            raise ValueError(f"{where}: its arrays need {_gb(total)}, more than this "
                             f"machine's memory ({_gb(memory)}): use a smaller pool")
        arrays = {}
        for key, info in members.items():
            try:
                with zf.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
                    fh.read()           # to the member's end: the CRC is checked there
            except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError) as e:
                raise ValueError(f"{where}: array {key!r} cannot be read ({e}): the file "
                                 "is damaged; save or copy it again") from None
    return arrays


def _check_member(where: str, zf: zipfile.ZipFile, key: str, info: zipfile.ZipInfo) -> int:
    """The bytes member ``key`` will take once read, after checking its header against the
    archive (nothing but the header is read)."""
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = _read_npy_header(fh, version)
            header = fh.tell()
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{where}: array {key!r} cannot be read ({e}): the file is "
                         "damaged; save or copy it again") from None
    except ValueError as e:
        raise ValueError(f"{where}: member {info.filename!r} is not a .npy array ({e})") \
            from None
    if dtype.hasobject:
        raise ValueError(f"{where}: array {key!r} holds Python objects ({dtype}), which "
                         "only unpickling could read, and archives are never unpickled: "
                         "save it as numbers or strings (e.g. np.array(names, dtype=str))")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = info.file_size - header
    expands = info.file_size > max(info.compress_size, 1) * _DEFLATE_MAX_RATIO
    stored_lies = info.compress_type == zipfile.ZIP_STORED and \
        info.compress_size != info.file_size
    if nbytes != held or expands or stored_lies:
        raise ValueError(f"{where}: array {key!r} claims shape {tuple(shape)} {dtype} "
                         f"({_gb(nbytes)}) but the archive holds {_gb(max(held, 0))} for it "
                         f"({info.compress_size} bytes stored): the file is damaged or not "
                         "what it says; nothing was allocated")
    return nbytes


def _read_npy_header(fh, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    from numpy.lib import _format_impl   # version 3.0 (utf-8 field names)

    return _format_impl._read_array_header(fh, version)


def load_npz(path: str) -> Dataset:
    """A pool from an ``.npz`` (keys :data:`NPZ_KEYS`; only ``x`` is required), read by
    :func:`read_npz`."""
    arrays = read_npz(path)
    if "num_classes" in arrays:
        c = arrays["num_classes"]
        if c.ndim != 0 or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"npz:{path}: num_classes must be one integer, got "
                             f"{c.dtype} of shape {c.shape}")
    return from_arrays(**arrays, name=f"npz:{os.path.basename(path)}")


SKIPPED_NAMES = ("__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini")
_HIGH_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")   # decoded as floats, not clipped


def _skipped(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``, ``._x.png``) and
    the folders tools leave (``__MACOSX``): never part of a pool."""
    return name.startswith(".") or name in SKIPPED_NAMES


class _Tree:
    """Walks an image folder: links followed only inside it, each image file once."""

    def __init__(self, root: Path, where: str):
        self.root, self.real, self.where = root, root.resolve(), where
        self.skipped: list[str] = []
        self.others: list[str] = []
        self.seen: dict[Path, Path] = {}

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.root))

    def follow(self, p: Path) -> Path:
        """``p`` resolved; a link leading outside the folder (or nowhere) is refused."""
        real = p.resolve()
        if p.is_symlink():
            if not real.exists():
                raise ValueError(f"{self.where}: {self.rel(p)} is a broken symbolic link "
                                 f"(to {os.readlink(p)}): remove it or restore its target")
            if real != self.real and self.real not in real.parents:
                raise ValueError(f"{self.where}: {self.rel(p)} is a symbolic link to {real}, "
                                 f"outside the pool's folder {self.real}; links are followed "
                                 "only inside it: copy or move those files in")
        return real

    def images(self, folder: Path, above: frozenset = frozenset()) -> list[Path]:
        real = self.follow(folder)
        if real in above:
            raise ValueError(f"{self.where}: {self.rel(folder)} is a symbolic link to a "
                             "folder that contains it (a loop): remove the link")
        out = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            p = folder / entry.name
            if _skipped(entry.name):
                self.skipped.append(entry.name)
                continue
            target = self.follow(p)
            if target.is_dir():
                out += self.images(p, above | {real})
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                if target in self.seen:
                    raise ValueError(f"{self.where}: {self.rel(p)} and "
                                     f"{self.rel(self.seen[target])} are the same file "
                                     "(through a symbolic link); an image may be in the "
                                     "pool once: remove one")
                self.seen[target] = p
                out.append(p)
            else:
                self.others.append(p.suffix.lower() or entry.name)
        return out

    def note(self) -> Optional[str]:
        parts = []
        if self.skipped:
            names = sorted(set(self.skipped))
            parts.append(f"{len(self.skipped)} hidden or tool entr"
                         f"{'ies' if len(self.skipped) != 1 else 'y'} ("
                         f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        if self.others:
            kinds = sorted(set(self.others))
            parts.append(f"{len(self.others)} file{'s' if len(self.others) != 1 else ''} "
                         f"that {'are' if len(self.others) != 1 else 'is'} not an image ("
                         f"{', '.join(kinds[:4])}{', ...' if len(kinds) > 4 else ''})")
        return f"{self.where}: skipped {' and '.join(parts)}" if parts else None


def check_workdir(dataset: str, workdir: Optional[str]) -> None:
    """Refuses a workdir inside the image folder ``dataset`` (``folder:PATH``) names: the
    run's own files (plots, records) would join the pool on the next run."""
    if not workdir or not dataset.startswith("folder:"):
        return
    root = Path(os.path.realpath(dataset[len("folder:"):]))
    wd = Path(os.path.realpath(workdir))
    if wd == root or root in wd.parents:
        raise ValueError(f"workdir {workdir} is inside the image folder {dataset}: the run's "
                         "own files would join the pool; choose a --workdir outside it")


def load_folder(path: str) -> Dataset:
    """A pool from an image folder (see the module docstring), decoded with Pillow."""
    from PIL import Image, UnidentifiedImageError  # Pillow is only needed for folders

    where = f"folder:{path}"
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{where}: not a folder")
    tree = _Tree(root, where)

    def folders(parent: Path) -> list[Path]:
        out = []
        for entry in sorted(os.scandir(parent), key=lambda e: e.name):
            p = parent / entry.name
            if _skipped(entry.name):
                tree.skipped.append(entry.name)
            elif tree.follow(p).is_dir():
                out.append(p)
            elif parent == root:
                tree.others.append(p.suffix.lower() or entry.name)
        return out

    top = folders(root)
    classes = [d.name for d in top if d.name not in ("unlabeled", "test")]
    if len(classes) < 2:
        raise ValueError(f"{where}: needs at least two class folders "
                         f"({path}/<class_name>/*.png), found {classes}")
    pool = [(p, k) for k, c in enumerate(classes) for p in tree.images(root / c)]
    if "unlabeled" in {d.name for d in top}:
        pool += [(p, UNKNOWN) for p in tree.images(root / "unlabeled")]
    test = []
    if "test" in {d.name for d in top}:
        for d in folders(root / "test"):
            if d.name not in classes:
                raise ValueError(f"{where}: test class {d.name!r} is not one of the pool's "
                                 f"classes {classes}")
            test += [(p, classes.index(d.name)) for p in tree.images(d)]
    if not pool:
        raise ValueError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def cannot(p: Path, e: BaseException):
        if isinstance(e, Image.DecompressionBombError):
            return ValueError(f"{where}: image {tree.rel(p)} is too large to decode safely "
                              f"({e}); if it is genuine, shrink it (or raise "
                              "PIL.Image.MAX_IMAGE_PIXELS)")
        why = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        return ValueError(f"{where}: cannot read image {tree.rel(p)} ({why}): replace or "
                          "remove it")

    opened = {}
    for p, _ in pool + test:
        try:
            with Image.open(p) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):   # EXIF: turned 90°
                    w, h = h, w
                opened[p] = ((w, h), im.mode)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError,
                SyntaxError, ValueError, EOFError) as e:
            raise cannot(p, e) from None
    size = collections.Counter(opened[p][0] for p, _ in pool).most_common(1)[0][0]
    colour = any(m not in ("1", "L", "LA") + _HIGH_BIT for _, m in opened.values())

    def decode(entries):
        out = np.empty((len(entries), size[1], size[0], 3 if colour else 1), np.float32)
        for i, (p, _) in enumerate(entries):
            try:
                with Image.open(p) as im:
                    out[i] = _pixels(im, colour, size, where, tree.rel(p))
            except ValueError as e:
                if str(e).startswith(where):
                    raise
                raise cannot(p, e) from None
            except (OSError, Image.DecompressionBombError, SyntaxError, EOFError) as e:
                raise cannot(p, e) from None
        return out

    y = np.array([k for _, k in pool], np.int64)
    return from_arrays(decode(pool), y, x_test=decode(test) if test else None,
                       y_test=np.array([k for _, k in test]) if test else None,
                       class_names=classes, items=[tree.rel(p) for p, _ in pool],
                       num_classes=len(classes), name=f"folder:{root.name}",
                       notes=[n for n in (tree.note(),) if n])


def _pixels(im, colour: bool, size: tuple, where: str, name: str) -> np.ndarray:
    """One image as ``(H, W, 1 or 3)`` float32 in [0, 1], EXIF orientation applied.

    8-bit images are scaled by 255; 16-bit greyscale (``I;16``, or ``I`` holding 0-65535)
    by 65535, never clipped; float images (``F``) are taken as they are.
    """
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in _HIGH_BIT:
        scale = 1.0 if im.mode == "F" else 65535.0
        if im.mode == "I":
            lo, hi = im.getextrema()
            if lo < 0 or hi > 65535:
                raise ValueError(f"{where}: image {name} holds 32-bit values ({lo} to {hi}); "
                                 "convert it to 8 or 16 bits per pixel")
        f = im.convert("F")
        if f.size != size:
            f = f.resize(size, Image.BILINEAR)
        a = (np.asarray(f, np.float32) / np.float32(scale))[..., None]
        return np.repeat(a, 3, axis=-1) if colour else a
    c = im.convert("RGB" if colour else "L")
    if c.size != size:
        c = c.resize(size, Image.BILINEAR)
    a = np.asarray(c, np.float32) / np.float32(255.0)
    return a.reshape(size[1], size[0], 3 if colour else 1)


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
