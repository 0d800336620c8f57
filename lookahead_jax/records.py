"""File primitives for run records: atomic writes, checked JSON lines.

* Whole-file writes go to a temporary file in the same folder, are fsync'ed and renamed
  over the target (atomic on POSIX), with the permissions a plain ``open`` would give
  (the umask), so a shared results folder stays readable.
* JSON-lines ledgers are appended one fsync'ed row at a time. A row may carry ``sha``, a
  hash chain over the rows before it (:func:`append_chained`): a row changed, deleted or
  reordered after it was written no longer matches (:func:`verify_chain`).
* A torn last line (a crash mid-append) is cut off by :func:`repair_jsonl`, which says
  so, instead of joining the next append onto the fragment.
* Every read error names the file (and the row) it comes from: :class:`RecordError`.

What a run's workdir holds, and how it is checked, is :mod:`lookahead_jax.workdir`;
its plots are :mod:`lookahead_jax.plots`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Iterable, Optional, Sequence

import numpy as np


class RecordError(ValueError):
    """A record file is damaged, edited or inconsistent (the message names file and row)."""


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default, sort_keys=True)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temp file, fsync, rename, fsync dir).

    On failure (a full disk, say) the temporary file is removed and the target is left as
    it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
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
    """The JSON in ``path``; a damaged file is a :class:`RecordError` naming it."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is damaged: not valid JSON ({e.msg} at line {e.lineno})") \
            from None
    except UnicodeDecodeError:
        raise RecordError(f"{path} is damaged: not text") from None


def append_jsonl(path: str, row: Any) -> None:
    """Appends one JSON row and fsyncs it before returning."""
    with open(path, "a") as fh:
        fh.write(dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str, *, strict: bool = False) -> list[dict]:
    """Rows of a JSON-lines file; a missing file is empty.

    A torn last line (no newline: a crash mid-append) is skipped, or with ``strict``
    refused; any other unreadable row is a :class:`RecordError` naming the file and row.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RecordError(f"{path} is damaged: not UTF-8 text") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not strict:    # unterminated last line: torn
                break
            raise RecordError(f"{path} row {i + 1} is damaged (not valid JSON)") from None
    return rows


def repair_jsonl(path: str) -> Optional[str]:
    """Cuts a torn last line off ``path`` (a crash mid-append); returns what was done.

    A complete file ends with a newline after valid JSON; anything after the last newline
    is the fragment of an interrupted append and is removed, so the next append starts on
    a line of its own. Returns ``None`` when there was nothing to repair.
    """
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw or raw.endswith(b"\n"):
        return None
    keep = raw[:raw.rfind(b"\n") + 1]
    atomic_write_bytes(path, keep)
    return (f"{path}: removed a torn last line ({len(raw) - len(keep)} bytes of an append "
            "interrupted by a crash)")


def rewrite_jsonl(path: str, rows: Iterable[Any]) -> None:
    """Atomically replaces a JSON-lines file with ``rows``."""
    atomic_write_bytes(path, "".join(dumps(r) + "\n" for r in rows).encode())


GENESIS = "0" * 64


def row_digest(previous: str, row: dict) -> str:
    """sha256 of the previous row's digest and this row (its ``sha`` excluded)."""
    body = dumps({k: v for k, v in row.items() if k != "sha"})
    return hashlib.sha256((previous + body).encode()).hexdigest()


def chain_rows(rows: Sequence[dict], previous: str = GENESIS) -> list[dict]:
    """``rows`` with their ``sha`` fields (re)computed as one chain."""
    out = []
    for row in rows:
        previous = row_digest(previous, row)
        out.append({**{k: v for k, v in row.items() if k != "sha"}, "sha": previous})
    return out


def append_chained(path: str, row: dict, previous: str) -> str:
    """Appends ``row`` with its chain digest; returns the digest (the next ``previous``)."""
    digest = row_digest(previous, row)
    append_jsonl(path, {**row, "sha": digest})
    return digest


def verify_chain(path: str, rows: Sequence[dict]) -> str:
    """Checks every row's ``sha``; returns the last digest.

    Raises:
      RecordError: naming the first row that was changed, inserted, deleted or reordered
        after it was written.
    """
    previous = GENESIS
    for i, row in enumerate(rows):
        want = row_digest(previous, row)
        if row.get("sha") != want:
            raise RecordError(f"{path} row {i + 1} was changed after it was written (its "
                              "checksum does not match the rows before it); the workdir's "
                              "records cannot be trusted: restore the file or use a new "
                              "workdir")
        previous = want
    return previous
