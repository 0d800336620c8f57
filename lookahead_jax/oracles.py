"""Oracles: who answers the labels of queried pool items.

An oracle is ``oracle(pool_indices (k,)) -> labels (k,)`` ints in ``[0, C)``. The loop
wraps every oracle in :class:`RecordingOracle`, which checks each answer, persists it to
the workdir's label ledger before anything else happens, and never asks twice for a point.
An oracle may also define ``ask(pool_indices, tag)``: the loop then passes a name for the
request (``"initial"``, ``"cycle_3"``, ``"cycle_3_step_7"`` in sequential mode).

* :class:`DatasetOracle`: a simulation, answering from labels known in advance.
* :class:`FileOracle`: people, through files (works with any labeling tool): a request
  ``WORKDIR/to_label/<tag>.csv`` (header ``index,item``: the pool index and the file path
  or id a person finds the item by) is written and :class:`LabelsNeeded` is raised; the
  person writes ``WORKDIR/labels/<tag>.csv`` (header ``index,label``, the label as a class
  name or an integer) and runs the same command again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import typing
from typing import Optional, Protocol, Sequence

import numpy as np

from lookahead_jax import records

if typing.TYPE_CHECKING:
    from lookahead_jax.workdir import Workdir


class Oracle(Protocol):
    """Reveals true labels: ``oracle(pool_indices (k,)) -> labels (k,) int``.

    Implement this to plug in a labeler; the loop persists every answer before it goes
    on, and never asks twice for the same point of a workdir.
    """

    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        ...


class LabelsNeeded(Exception):
    """People must answer a request file before the run can go on (not an error).

    Attributes:
      request: the file listing the items to label.
      answer: the file the answers go to.
      count: how many items.
    """

    def __init__(self, request: str, answer: str, count: int, class_names=None):
        self.request, self.answer, self.count = request, answer, count
        self.class_names = class_names
        super().__init__(self.instructions())

    def instructions(self) -> str:
        names = (f" (one of: {', '.join(self.class_names)}, or its number 0-"
                 f"{len(self.class_names) - 1})" if self.class_names else " (an integer)")
        return (f"{self.count} item{'s' if self.count != 1 else ''} to label: listed in "
                f"{self.request}\nwrite {self.answer} with the header 'index,label' and one "
                f"row per item, the label{names}; then run the same command again")


@dataclasses.dataclass(frozen=True)
class DatasetOracle:
    """A simulated annotator: answers from ``labels`` known in advance (−1: unknown)."""

    labels: np.ndarray

    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        out = np.asarray(self.labels)[np.asarray(pool_indices, dtype=np.int64)]
        if np.any(out < 0):
            missing = np.asarray(pool_indices)[out < 0][:5].tolist()
            raise ValueError(f"the simulated oracle has no label for pool items {missing} "
                             "(their labels are unknown): use --oracle=files to have people "
                             "label them, or give complete labels (y_true) for a simulation")
        return out


@dataclasses.dataclass(frozen=True)
class FileOracle:
    """People answer through CSV files in the workdir (see the module docstring).

    Attributes:
      workdir: the run's folder.
      items: per pool index, what a person finds the item by (a path or an id).
      num_classes: C.
      class_names: optional names; answers may use them or the integer labels.
    """

    workdir: str
    items: Sequence[str]
    num_classes: int
    class_names: Optional[Sequence[str]] = None

    def request_path(self, tag: str) -> str:
        return os.path.join(self.workdir, "to_label", f"{tag}.csv")

    def answer_path(self, tag: str) -> str:
        return os.path.join(self.workdir, "labels", f"{tag}.csv")

    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        return self.ask(pool_indices, "request")

    def ask(self, pool_indices: np.ndarray, tag: str) -> np.ndarray:
        idx = [int(i) for i in np.asarray(pool_indices).reshape(-1)]
        answer = self.answer_path(tag)
        if os.path.exists(answer):
            return read_label_file(answer, idx, self.num_classes, self.class_names)
        request = self.request_path(tag)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "item"])
        for i in idx:
            w.writerow([i, self.items[i]])
        records.atomic_write_bytes(request, buf.getvalue().encode())
        os.makedirs(os.path.dirname(answer), exist_ok=True)
        raise LabelsNeeded(request, answer, len(idx), self.class_names)


def read_label_file(path: str, requested: Sequence[int], num_classes: int,
                    class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Labels for ``requested`` (in that order) from a people-written ``index,label`` CSV.

    Every problem is refused with one line naming the file: not UTF-8 text, empty, wrong
    columns, a row that is not ``index,label``, an index that is not an integer or was
    not asked for, a duplicate, a missing index, an unknown class. Nothing is changed.
    """
    def fail(msg):
        raise ValueError(f"{path}: {msg}")

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        fail("not a UTF-8 text file")
    if not rows:
        fail("the file is empty; it needs the header 'index,label' and one row per item")
    header = [c.strip().lower() for c in rows[0]]
    if header != ["index", "label"]:
        fail(f"the header must be 'index,label', found {','.join(rows[0])!r}")
    if len(rows) == 1:
        fail(f"no labels below the header; {len(requested)} items were asked for")
    names = {str(n).strip().lower(): k for k, n in enumerate(class_names or ())}
    want = set(int(i) for i in requested)
    got: dict[int, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            fail(f"line {line}: expected 2 columns 'index,label', found {len(row)}")
        raw_i, raw_y = row[0].strip(), row[1].strip()
        try:
            i = int(raw_i)
        except ValueError:
            fail(f"line {line}: index {raw_i!r} is not an integer")
        if i not in want:
            fail(f"line {line}: index {i} was not asked for (see the request file)")
        if i in got:
            fail(f"line {line}: index {i} is labeled twice")
        if raw_y.lower() in names:
            y = names[raw_y.lower()]
        else:
            try:
                y = int(raw_y)
            except ValueError:
                known = f"; classes: {', '.join(class_names)}" if class_names else ""
                fail(f"line {line}: unknown class {raw_y!r}{known}")
            if not 0 <= y < num_classes:
                fail(f"line {line}: label {y} is outside [0, {num_classes})")
        got[i] = y
    missing = sorted(want - set(got))
    if missing:
        fail(f"{len(missing)} requested item(s) have no label, e.g. index {missing[0]}")
    return np.asarray([got[int(i)] for i in requested], np.int32)


class RecordingOracle:
    """Wraps an oracle: checks each answer, persists it at once, never asks twice.

    Answers must be integers in ``[0, C)``, one per asked item; a bad batch is refused
    with one line before anything is written, so the workdir stays usable. ``tag`` names
    the request (``"initial"``, ``"cycle_3"``, ``"cycle_3_step_2"``) for oracles that
    define ``ask(pool_indices, tag)`` (the files oracle).
    """

    def __init__(self, oracle: Oracle, workdir: Workdir, num_classes: int):
        self.oracle = oracle
        self.workdir = workdir
        self.num_classes = num_classes
        self.known = {int(r["index"]): int(r["label"]) for r in workdir.rows("labels")}

    def record_given(self, pool_indices: np.ndarray, labels: np.ndarray) -> None:
        """Puts labels that came with the pool into the ledger (once)."""
        for i, y in zip(np.asarray(pool_indices).tolist(), np.asarray(labels).tolist()):
            if i in self.known:
                if self.known[i] != y:
                    raise records.RecordError(
                        f"labels.jsonl holds label {self.known[i]} for pool item {i} but the "
                        f"pool now gives {y}: the data changed under the run")
                continue
            self.workdir.append("labels", {"cycle": -1, "index": i, "label": y,
                                           "source": "given"})
            self.known[i] = y

    def __call__(self, pool_indices: np.ndarray, cycle: int, tag: str) -> np.ndarray:
        pool_indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
        missing = [int(i) for i in pool_indices if int(i) not in self.known]
        if missing:
            ask = getattr(self.oracle, "ask", None)
            raw = ask(np.asarray(missing), tag) if ask is not None else \
                self.oracle(np.asarray(missing))
            answers = check_answers(raw, len(missing), self.num_classes)
            for i, y in zip(missing, answers.tolist()):
                self.workdir.append("labels", {"cycle": cycle, "index": i, "label": y,
                                               "source": "oracle"})
                self.known[i] = y
        return np.asarray([self.known[int(i)] for i in pool_indices], dtype=np.int32)


def check_answers(raw, count: int, num_classes: int) -> np.ndarray:
    """An oracle's answers as ``(count,)`` ints in ``[0, C)``, or one clear error."""
    if raw is None:
        raise ValueError(f"the oracle returned None for {count} items; it must return "
                         f"{count} integer labels in [0, {num_classes})")
    arr = np.asarray(raw)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or
                                   (np.issubdtype(arr.dtype, np.floating) and
                                    np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
        raise ValueError(f"the oracle returned {raw!r}; labels must be integers in "
                         f"[0, {num_classes})")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.shape[0] != count:
        raise ValueError(f"the oracle returned {arr.shape[0]} labels for {count} items")
    bad = (arr < 0) | (arr >= num_classes)
    if np.any(bad):
        raise ValueError(f"the oracle answered {int(arr[bad][0])}, outside [0, {num_classes}) "
                         f"({int(np.sum(bad))} of {count} answers); nothing was recorded")
    return arr
