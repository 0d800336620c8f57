"""A run's workdir: the only copy of what people answered, kept whole and tamper-evident.

Files (all under the workdir):

==========================  ============================================================
``config.json``             the run's settings (a rerun must match; only ``cycles`` may
                            grow, which extends a finished or partial run)
``dataset.json``            the pool's shape, classes and a fingerprint of its contents
``labels.jsonl``            the label ledger: one row per label, given with the pool or
                            answered by the oracle, appended and fsync'ed the moment it is
                            known (after it was checked), never asked again
``queries.jsonl``           one row per finished acquisition (pool indices, labels)
``metrics.jsonl``           one row per finished cycle
``checkpoints/<cycle>/``    the trained network (orbax), the last two cycles
``state.json``              the commit point of a cycle: its number, whether a stopping
                            criterion fired, and the row count and last checksum of
                            each ledger at that moment
``pending.json``            a cycle waiting for people's labels (files oracle)
``to_label/``, ``labels/``  the files oracle's requests and people's answers
``tensorboard/``            event files (TensorBoard)
``learning_curve.png``      accuracy against labels
``.lock``                   held by the one process running the workdir
==========================  ============================================================

The three ledgers carry a hash chain (:func:`lookahead_jax.records.append_chained`). When
a workdir is opened, :meth:`Workdir.recover` repairs torn last lines (saying so), checks
every chain, checks the ledgers against ``state.json`` (rows deleted, state edited),
drops the rows of a cycle that did not finish, and the loop then checks queries against
labels; any disagreement is refused naming the file and the row. Only one process may
run a workdir: a second one is refused naming the first (:meth:`Workdir.open`).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import socket
from typing import Optional

import jax
import numpy as np

from lookahead_jax import records
from lookahead_jax.records import RecordError

LEDGERS = ("labels", "queries", "metrics")


def _parents(path: str) -> list:
    """``path``'s ancestors, nearest last (``a/b/c`` -> ``a``, ``a/b``)."""
    parts, out = os.path.normpath(path).split(os.sep), []
    for k in range(1, len(parts)):
        out.append(os.sep.join(parts[:k]) or os.sep)
    return out


class WorkdirError(ValueError):
    """The workdir cannot be used (not a folder, not writable, in use, ...)."""


def fingerprint(x: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and bytes (which pool a workdir belongs to)."""
    h = hashlib.sha256(f"{x.shape}|{x.dtype}|".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


class Workdir:
    """The records of one run (``path=None``: in memory, nothing persists)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._memory: dict[str, list] = {k: [] for k in LEDGERS}
        self._heads = {k: records.GENESIS for k in LEDGERS}
        self._lock_fd: Optional[int] = None
        self._checkpointer = None
        self.notes: list[str] = []

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Optional[str]) -> "Workdir":
        """Creates (or reuses) the folder and takes its lock for the life of the run.

        Raises:
          WorkdirError: one line naming the problem: the path is a file or under one,
            cannot be created or written, or another process runs it.
        """
        wd = cls(path)
        if path is None:
            return wd
        if os.path.exists(path) and not os.path.isdir(path):
            raise WorkdirError(f"workdir {path} is a file, not a folder; choose another "
                               "--workdir")
        try:
            os.makedirs(path, exist_ok=True)
        except NotADirectoryError:
            blocker = next((p for p in _parents(path) if os.path.isfile(p)), None)
            where = f"the file {blocker}" if blocker else "a file"
            raise WorkdirError(f"workdir {path} is under {where}, not a folder; choose "
                               "another --workdir") from None
        except OSError as e:
            raise WorkdirError(f"workdir {path} cannot be created: {e.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise WorkdirError(f"workdir {path} is not writable by this user")
        wd._lock()
        return wd

    def _lock(self) -> None:
        lock = os.path.join(self.path, ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise WorkdirError(f"workdir {self.path}: cannot create its lock file "
                               f"({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.read(fd, 4096).decode() or "{}")
            except (ValueError, OSError):
                owner = {}
            os.close(fd)
            who = (f"process {owner.get('pid')} on {owner.get('host')} (since "
                   f"{owner.get('since')})") if owner else "another process"
            raise WorkdirError(f"workdir {self.path} is in use by {who}; wait for it to "
                               "finish or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": _now()}).encode())
        os.fsync(fd)
        self._lock_fd = fd

    def close(self) -> None:
        """Releases the lock (and flushes the checkpointer)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def persistent(self) -> bool:
        return self.path is not None

    # ------------------------------------------------------------------ config / pool

    def check_config(self, config: dict) -> Optional[int]:
        """Writes ``config.json``, or checks the one there equals ``config``.

        Only ``cycles`` may differ, and only grow (nothing recorded changes): the file is
        then updated and the old number of cycles returned (else ``None``).
        """
        if not self.persistent:
            return None
        path = self.file("config.json")
        new = json.loads(records.dumps(config))
        if not os.path.exists(path):
            records.atomic_write_json(path, new)
            return None
        old = records.read_json(path)
        if not isinstance(old, dict):
            raise RecordError(f"{path} is damaged: not a JSON object")
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff == ["cycles"] and isinstance(old.get("cycles"), int) \
                and new["cycles"] > old["cycles"]:
            records.atomic_write_json(path, new)
            return int(old["cycles"])
        if diff:
            extra = (" (cycles may only grow: the run has more cycles recorded)"
                     if diff == ["cycles"] else "")
            raise WorkdirError(f"workdir {self.path} holds a run with a different config "
                               f"(fields {', '.join(diff)} differ{extra}); use a new "
                               "--workdir or the same settings")
        return None

    def check_pool(self, info: dict) -> None:
        """Writes ``dataset.json``, or refuses a pool that is not the one recorded."""
        if not self.persistent:
            return
        path = self.file("dataset.json")
        new = json.loads(records.dumps(info))
        if not os.path.exists(path):
            records.atomic_write_json(path, new)
            return
        old = records.read_json(path)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise WorkdirError(f"workdir {self.path} belongs to another pool: "
                               f"{', '.join(diff)} of the data differ from dataset.json; the "
                               "data changed under the run (use a new --workdir)")

    # ------------------------------------------------------------------ ledgers

    def rows(self, kind: str) -> list[dict]:
        if not self.persistent:
            return list(self._memory[kind])
        return [{k: v for k, v in r.items() if k != "sha"}
                for r in records.read_jsonl(self.file(f"{kind}.jsonl"), strict=True)]

    def append(self, kind: str, row: dict) -> None:
        if not self.persistent:
            self._memory[kind].append(row)
            return
        self._heads[kind] = records.append_chained(self.file(f"{kind}.jsonl"), row,
                                                   self._heads[kind])

    def _state(self) -> dict:
        path = self.file("state.json")
        if not os.path.exists(path):
            return {}
        state = records.read_json(path)
        for key in ("cycle_done", "ledgers"):
            if not isinstance(state, dict) or key not in state:
                raise RecordError(f"{path} is damaged: the key {key!r} is missing")
        if not isinstance(state["cycle_done"], int) or state["cycle_done"] < 0:
            raise RecordError(f"{path} is damaged: cycle_done is {state['cycle_done']!r}")
        return state

    def cycle_done(self) -> int:
        """The last cycle committed (−1: none)."""
        if not self.persistent:
            return -1
        return int(self._state().get("cycle_done", -1))

    def stopped(self) -> Optional[dict]:
        """The stopping criterion that ended the run, if one did."""
        return self._state().get("stopped") if self.persistent else None

    def recover(self) -> list[str]:
        """Repairs torn tails, verifies the ledgers against ``state.json``, and drops the
        query and metric rows of a cycle that did not finish. Returns notes of what was
        repaired; raises :class:`RecordError` naming the file and row of any damage."""
        if not self.persistent:
            return []
        notes = [n for n in (records.repair_jsonl(self.file(f"{k}.jsonl")) for k in LEDGERS)
                 if n]
        state = self._state()
        committed = state.get("ledgers", {})
        for kind in LEDGERS:
            path = self.file(f"{kind}.jsonl")
            rows = records.read_jsonl(path, strict=True)
            head = records.verify_chain(path, rows)
            want = committed.get(kind, {"rows": 0, "sha": records.GENESIS})
            n = int(want.get("rows", 0))
            if len(rows) < n:
                what = "is missing" if not os.path.exists(path) else f"holds {len(rows)} rows"
                raise RecordError(f"{path} {what} but the last finished cycle "
                                  f"(state.json, cycle {state.get('cycle_done')}) recorded "
                                  f"{n}: rows were deleted")
            if n and rows[n - 1].get("sha") != want.get("sha"):
                raise RecordError(f"{path} row {n} is not the row state.json committed "
                                  "(rows were replaced)")
            if kind != "labels" and len(rows) > n:      # a cycle that did not finish
                rows = rows[:n]
                records.rewrite_jsonl(path, rows)
                head = rows[-1]["sha"] if rows else records.GENESIS
            self._heads[kind] = head
        if state and len(records.read_jsonl(self.file("metrics.jsonl"))) != \
                state["cycle_done"] + 1:
            raise RecordError(f"{self.file('state.json')} says cycle {state['cycle_done']} "
                              "finished but metrics.jsonl holds "
                              f"{len(records.read_jsonl(self.file('metrics.jsonl')))} rows")
        self.notes = notes
        return notes

    def commit(self, cycle: int, stopped: Optional[dict] = None) -> None:
        """Writes ``state.json``: cycle ``cycle`` is finished (after its checkpoint)."""
        if not self.persistent:
            return
        ledgers = {k: {"rows": len(records.read_jsonl(self.file(f"{k}.jsonl"))),
                       "sha": self._heads[k]} for k in LEDGERS}
        records.atomic_write_json(self.file("state.json"), {
            "cycle_done": cycle, "stopped": stopped, "ledgers": ledgers})

    # ------------------------------------------------------------------ checkpoints

    def _manager(self):
        ocp = _ocp()
        if self._checkpointer is None:
            folder = os.path.abspath(self.file("checkpoints"))
            options = dict(max_to_keep=2, create=True, enable_async_checkpointing=False)
            if jax.process_count() > 1:
                # A multi-process run: only this process (the one that writes the
                # workdir) checkpoints. Orbax's barriers then span it alone; by default
                # they wait for every process, and the run hangs. Orbax does not create
                # the folder in this mode.
                me = jax.process_index()
                os.makedirs(folder, exist_ok=True)
                options.update(create=False, multiprocessing_options=(
                    ocp.options.MultiprocessingOptions(primary_host=me,
                                                       active_processes={me})))
            self._checkpointer = ocp.CheckpointManager(
                folder, options=ocp.CheckpointManagerOptions(**options))
        return self._checkpointer

    def save_variables(self, step: int, variables) -> None:
        """Checkpoints the network's variables as step ``step`` (orbax; last two kept)."""
        if not self.persistent:
            return
        ocp = _ocp()
        leaves = [np.asarray(a) for a in jax.device_get(jax.tree.leaves(variables))]
        mngr = self._manager()
        if step in mngr.all_steps():
            return
        mngr.save(step, args=ocp.args.StandardSave({"leaves": leaves}))
        mngr.wait_until_finished()
        _make_readable(self.file("checkpoints"))

    def load_variables(self, step: int, template):
        """The variables checkpointed at ``step``, in the structure of ``template``."""
        ocp = _ocp()
        mngr = self._manager()
        if step not in mngr.all_steps():
            if not mngr.all_steps():
                raise RecordError(
                    f"{self.file('checkpoints')} holds no network checkpoint, but state.json "
                    f"says cycle {step} finished: the checkpoints were deleted, or a "
                    "multi-process run of an older lookahead-jax wrote the workdir (those "
                    "saved none); it cannot resume: use a new --workdir")
            raise RecordError(f"{self.file('checkpoints')}/{step} is missing: the network of "
                              f"cycle {step} was deleted (state.json says it finished)")
        flat, treedef = jax.tree.flatten(template)
        target = {"leaves": [np.asarray(a) for a in jax.device_get(flat)]}
        try:
            got = mngr.restore(step, args=ocp.args.StandardRestore(target))["leaves"]
        except Exception as e:  # noqa: BLE001  (orbax raises many kinds)
            raise RecordError(f"{self.file('checkpoints')}/{step} cannot be read ({e})") \
                from None
        return jax.tree.unflatten(treedef, list(got))

    # ------------------------------------------------------------------ pending

    def save_pending(self, pending: dict) -> None:
        if self.persistent:
            records.atomic_write_json(self.file("pending.json"), pending)

    def pending(self) -> Optional[dict]:
        if not self.persistent or not os.path.exists(self.file("pending.json")):
            return None
        return records.read_json(self.file("pending.json"))

    def clear_pending(self) -> None:
        if self.persistent and os.path.exists(self.file("pending.json")):
            os.unlink(self.file("pending.json"))


def _make_readable(folder: str) -> None:
    """orbax writes some files 0600: give the checkpoint the umask's permissions, like
    every other record (a shared results folder stays readable)."""
    file_mode = records._umask_mode()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)          # r → x for folders
    os.chmod(folder, dir_mode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(root, f), file_mode)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_OCP = None


def _ocp():
    """``orbax.checkpoint``, imported when the first checkpoint is touched (its import
    takes about a second, which runs that never checkpoint should not pay)."""
    global _OCP
    if _OCP is None:
        import orbax.checkpoint as ocp
        _OCP = ocp
    return _OCP
