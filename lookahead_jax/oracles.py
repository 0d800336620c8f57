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
  name or an integer; or the request itself with a ``label`` column added,
  ``index,item,label``) and runs the same command again. The instructions are printed and
  written beside the request (``to_label/<tag>.txt``).

Labels are unambiguous: a label is a class name; a class *number* (0 to C − 1) is accepted
only when no class name is itself a number (class folders ``1/ 2/ 3/``: the label ``2`` is
the class named ``2``, always).

Every CSV written for people to open is neutralised against formula injection
(:func:`neutralise`, the OWASP rule: a cell starting with ``=``, ``+``, ``-``, ``@``, tab
or CR gets a leading ``'``, so a spreadsheet shows it as text), and every cell read back is
restored (:func:`restore`): answers round-trip unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import typing
from typing import Mapping, Optional, Protocol, Sequence

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


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell) -> str:
    """``cell`` as text a spreadsheet shows and never evaluates (CSV/formula injection).

    The OWASP rule: a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
    leading ``'``; so does one already starting with ``'`` (so :func:`restore` inverts this
    exactly). Everything else is unchanged.
    """
    text = str(cell)
    return "'" + text if text.startswith(_FORMULA_START + ("'",)) else text


def restore(cell: str) -> str:
    """The text :func:`neutralise` was given (``restore(neutralise(s)) == s``); a cell a
    person typed without the quote is unchanged."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START + ("'",)):
        return cell[1:]
    return cell


def names_are_numbers(class_names: Optional[Sequence[str]]) -> bool:
    """Whether some class name is itself an integer (then labels are names, never class
    numbers: the label ``2`` of classes ``1, 2, 3`` is the class named ``2``)."""
    for name in class_names or ():
        try:
            int(str(name).strip())
            return True
        except ValueError:
            continue
    return False


def label_rule(class_names: Optional[Sequence[str]], num_classes: Optional[int] = None
               ) -> str:
    """How a label is written, in words (the request's instructions)."""
    if not class_names:
        top = f" 0-{num_classes - 1}" if num_classes else ""
        return f"the class number{top}"
    names = ", ".join(class_names)
    if names_are_numbers(class_names):
        return (f"the class name, one of: {names} (the names are numbers, so a label is "
                "always a name, never a class's position)")
    return f"one of: {names}, or its number 0-{len(class_names) - 1}"


class LabelsNeeded(Exception):
    """People must answer a request file before the run can go on (not an error).

    Attributes:
      request: the file listing the items to label.
      answer: the file the answers go to.
      count: how many items.
    """

    def __init__(self, request: str, answer: str, count: int, class_names=None,
                 num_classes: Optional[int] = None):
        self.request, self.answer, self.count = request, answer, count
        self.class_names = class_names
        self.num_classes = num_classes
        super().__init__(self.instructions())

    def instructions(self) -> str:
        rule = label_rule(self.class_names, self.num_classes) if (
            self.class_names or self.num_classes) else "an integer"
        return (f"{self.count} item{'s' if self.count != 1 else ''} to label: listed in "
                f"{self.request}\nwrite {self.answer} with the header 'index,label' and one "
                f"row per item, the label {rule}; then run the same command again")


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
            return read_label_file(answer, idx, self.num_classes, self.class_names,
                                   self.items)
        request = self.request_path(tag)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(["index", "item"])
        for i in idx:
            w.writerow([i, neutralise(self.items[i])])
        records.atomic_write_bytes(request, buf.getvalue().encode())
        os.makedirs(os.path.dirname(answer), exist_ok=True)
        need = LabelsNeeded(request, answer, len(idx), self.class_names, self.num_classes)
        records.atomic_write_bytes(request[:-len(".csv")] + ".txt",
                                   (need.instructions() + "\n").encode())
        raise need

    def changed_answers(self, known: Mapping[int, int]) -> list[str]:
        """One line per answer file edited after its labels were taken in (the recorded
        labels stand: a correction there is never read again, so it is said here)."""
        folder = os.path.join(self.workdir, "labels")
        notes = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            path = os.path.join(folder, name)
            if not name.endswith(".csv") or not os.path.isfile(path):
                continue
            try:
                rows = _read_rows(path, None, self.num_classes, self.class_names, None)
            except ValueError as e:
                taken = None
                notes_line = str(e)
            else:
                taken = {i: y for i, y in rows.items() if i in known}
                notes_line = None
            if taken is None:
                notes.append(f"{path} no longer reads ({notes_line}); the labels taken from "
                             "it earlier are kept")
                continue
            diff = sorted(i for i, y in taken.items() if known[i] != y)
            if diff:
                i = diff[0]
                notes.append(f"{path} was changed after its labels were taken in: "
                             f"{len(diff)} label{'s differ' if len(diff) != 1 else ' differs'}"
                             " (index "
                             f"{i}: recorded {self._name(known[i])}, the file now says "
                             f"{self._name(taken[i])}); recorded labels are never changed: "
                             "to relabel, use a new --workdir")
        return notes

    def _name(self, y: int) -> str:
        return repr(self.class_names[y]) if self.class_names else str(y)


def read_label_file(path: str, requested: Sequence[int], num_classes: int,
                    class_names: Optional[Sequence[str]] = None,
                    items: Optional[Sequence[str]] = None) -> np.ndarray:
    """Labels for ``requested`` (in that order) from a people-written CSV.

    The header is ``index,label``, or ``index,item,label`` (the request with a label
    column added; each item, restored from its neutralised form, must then be the one the
    request listed for that index, given ``items``). A label is a class name, or a class
    number when no class name is a number (:func:`names_are_numbers`); cells are read
    back through :func:`restore`.

    Every problem is refused with one line naming the file: not UTF-8 text, not CSV (an
    oversized field, a NUL byte), empty, wrong columns, a row of the wrong width, an index
    that is not an integer or was not asked for, a duplicate, a missing index, an item that
    is not the requested one, an unknown class. Nothing is changed.
    """
    want = [int(i) for i in requested]
    got = _read_rows(path, set(want), num_classes, class_names, items)
    missing = sorted(set(want) - set(got))
    if missing:
        raise ValueError(f"{path}: {len(missing)} requested item(s) have no label, e.g. "
                         f"index {missing[0]}")
    return np.asarray([got[i] for i in want], np.int32)


def _read_rows(path: str, want: Optional[set], num_classes: int,
               class_names: Optional[Sequence[str]], items: Optional[Sequence[str]]
               ) -> dict[int, int]:
    """``{index: label}`` of an answer file (``want``: the indices asked for, or ``None``
    for any); every problem one ``ValueError`` line naming the file."""
    def fail(msg):
        raise ValueError(f"{path}: {msg}")

    limit = csv.field_size_limit()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
            except csv.Error as e:
                big = "field larger" in str(e)
                fail(f"line {reader.line_num}: not a CSV row ("
                     + (f"a field of more than {limit} characters: is this the label "
                        "file?" if big else str(e)) + ")")
    except UnicodeDecodeError:
        fail("not a UTF-8 text file")
    if not rows:
        fail("the file is empty; it needs the header 'index,label' and one row per item")
    header = [restore(c.strip()).lower() for c in rows[0][1]]
    if header not in (["index", "label"], ["index", "item", "label"]):
        fail(f"the header must be 'index,label' (or 'index,item,label'), found "
             f"{','.join(rows[0][1])!r}")
    width = len(header)
    if len(rows) == 1:
        fail("no labels below the header" + (f"; {len(want)} items were asked for" if want
                                              else ""))
    by_name = names_are_numbers(class_names)
    names = {str(n).strip().lower(): k for k, n in enumerate(class_names or ())}
    got: dict[int, int] = {}
    for line, row in rows[1:]:
        if len(row) != width:
            fail(f"line {line}: expected {width} columns '{','.join(header)}', found "
                 f"{len(row)}")
        raw_i, raw_y = restore(row[0].strip()), restore(row[-1].strip())
        try:
            i = int(raw_i)
        except ValueError:
            fail(f"line {line}: index {raw_i!r} is not an integer")
        if want is not None and i not in want:
            fail(f"line {line}: index {i} was not asked for (see the request file)")
        if i in got:
            fail(f"line {line}: index {i} is labeled twice")
        if width == 3 and items is not None and 0 <= i < len(items) and \
                restore(row[1]) != str(items[i]):
            fail(f"line {line}: index {i} is item {str(items[i])!r} in the request, not "
                 f"{restore(row[1])!r}: were the rows or columns changed?")
        if raw_y.lower() in names:
            y = names[raw_y.lower()]
        elif by_name:
            fail(f"line {line}: {raw_y!r} is not a class name; the classes are named "
                 f"{', '.join(class_names)} (numbers, so a label is always a name)")
        else:
            try:
                y = int(raw_y)
            except ValueError:
                known = f"; classes: {', '.join(class_names)}" if class_names else ""
                fail(f"line {line}: unknown class {raw_y!r}{known}")
            if not 0 <= y < num_classes:
                fail(f"line {line}: label {y} is outside [0, {num_classes})")
        got[i] = y
    return got


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
