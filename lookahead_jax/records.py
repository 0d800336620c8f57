"""What a run leaves in its workdir, written so that a crash at any moment loses nothing.

Files (all under ``workdir``):
  * ``config.json``: the run's configuration (a resumed run must match it).
  * ``labels.jsonl``: one row per revealed label ``{"cycle", "index", "label"}``, appended
    and fsync'ed the moment the oracle answers (before the strategy goes on).
  * ``queries.jsonl``: one row per finished acquisition ``{"cycle", "indices",
    "labels"}`` (pool indices in the order chosen); the labeled set is the seeded
    initial draw plus these rows.
  * ``metrics.jsonl``: one row per finished cycle (accuracy, loss, seconds per phase).
  * ``checkpoint.msgpack``: the trained network of the last finished cycle.
  * ``state.json``: ``{"cycle_done": k}``, written last: the commit point of a cycle.
  * ``learning_curve.png``: accuracy against the number of labels.

Whole-file writes go to a temporary file in the same folder, are fsync'ed and then
renamed over the target (atomic on POSIX); appends are fsync'ed per row. A torn last
line (the process killed mid-append) is ignored when reading.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, sort_keys=True)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, default=_default, indent=2, sort_keys=True)
                              + "\n").encode())


def read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)


def append_jsonl(path: str, row: Any) -> None:
    """Appends one JSON row and fsyncs it before returning."""
    with open(path, "a") as fh:
        fh.write(dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSON-lines file; a missing file is empty, a torn last line is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # only the last (unterminated) line may be torn
                break
            raise
    return rows


def rewrite_jsonl(path: str, rows: Iterable[Any]) -> None:
    """Atomically replaces a JSON-lines file with ``rows``."""
    atomic_write_bytes(path, "".join(dumps(r) + "\n" for r in rows).encode())


def plot_learning_curves(curves: dict[str, tuple[Sequence[int], Sequence[float]]],
                         path: str, title: str = "") -> str:
    """Test accuracy against labeled-set size, one line per run; saves a PNG.

    Args:
      curves: ``{label: (num_labeled, accuracy)}``.
      path: output PNG path (written atomically).
    """
    import io

    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    for label, (n, acc) in curves.items():
        ax.plot(n, 100 * np.asarray(acc, dtype=float), marker="o", ms=3, label=label)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1 or any(curves):
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
