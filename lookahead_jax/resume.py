"""Persistence and resuming: a workdir's commit points, a cycle waiting for labels, and
the state rebuilt from the records.

Resuming is restoring the loop's state (:class:`~lookahead_jax.state.LoopState`) from
the workdir. A finished cycle is recorded by :func:`commit` (``state.json`` written
last: the commit point); a cycle that trained and then waited for people's labels is
kept by :func:`save_pending` so the rerun does not train again. :func:`open_run` checks
a workdir and restores the state from it (:func:`restore`: the state after its last
finished cycle, the queries cross-checked against the label ledger, a pending cycle
with its network); :func:`open_together` does the same in a multi-process run, every
process from process 0's records. Nothing here runs a cycle: the drivers in
:mod:`lookahead_jax.loop` take the restored state on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Mapping, Optional

import jax
import numpy as np

from lookahead_jax import distributed as distributed_lib
from lookahead_jax import records
from lookahead_jax.config import LoopConfig
from lookahead_jax.models import Variables
from lookahead_jax.oracles import RecordingOracle
from lookahead_jax.run_setup import RunSetup, init_variables, pool_info
from lookahead_jax.state import ALState, LoopState, initial_indices
from lookahead_jax.workdir import Workdir, WorkdirError


def restore(run: RunSetup, wd: Workdir, oracle: RecordingOracle,
            log: Callable[[str], None]) -> LoopState:
    """The state after the workdir's last finished cycle (a fresh one for a new run),
    with the queries cross-checked against the label ledger.

    A cycle that trained and then waited for people's labels comes back pending (its
    network and metrics row, so it does not train again); the last cycle of a finished
    run now given more cycles comes back pending and recorded (it trained, its row is in
    the workdir; it acquires next).
    """
    config, ds = run.config, run.dataset
    pool = int(ds.x_train.shape[0])
    ledger = ALState(labeled=np.zeros(pool, bool), labels=np.full(pool, -1, np.int32))
    check_initial_set(wd, run.initial)
    if run.given:
        oracle.record_given(run.initial, ds.y_train[run.initial])
        labels0 = ds.y_train[run.initial]
    else:
        labels0 = oracle(run.initial, cycle=-1, tag="initial")
    ledger = ledger.reveal(run.initial, labels0)
    done = wd.cycle_done()
    queries = wd.rows("queries")
    check_queries(queries, oracle.known, pool, ds.num_classes, done, wd)
    for q in queries:
        ledger = ledger.reveal(q["indices"], q["labels"])
    fresh = init_variables(run)
    variables = fresh
    if done >= 0:
        variables = Variables(*wd.load_variables(done, fresh))
        log(f"resuming {wd.path} after cycle {done + 1} ({int(ledger.labeled.sum())} labels)")
    for note in wd.notes:
        log(f"repaired {note}")
    memory = records.read_json(wd.file("stopping.json")) if wd.persistent and \
        os.path.exists(wd.file("stopping.json")) else {}
    state = LoopState(pool=ledger.replace(cycle=done + 1), variables=variables,
                      queries=tuple(queries), memory=memory, stopped=wd.stopped())
    if state.stopped is None and 0 <= done < config.cycles - 1 and len(queries) == done:
        # the last cycle of a finished run, given more cycles: it acquires now
        wd.clear_pending()
        return state.replace(pool=state.pool.replace(cycle=done),
                             pending={"row": dict(wd.rows("metrics")[-1]), "recorded": True})
    return _with_pending(wd, state)


def check_initial_set(wd: Workdir, initial: np.ndarray) -> None:
    """Refuses a starting set that is not the one the workdir's run started from (the
    pool's given labels edited while a request is out): its queries were drawn from it."""
    rows = wd.rows("labels")
    start = {int(r["index"]) for r in rows if r.get("cycle") == -1}
    now = set(np.asarray(initial).tolist())
    later = any(r.get("cycle", -1) >= 0 for r in rows) or wd.cycle_done() >= 0 or \
        wd.pending() is not None
    if not start or start == now or (start < now and not later):   # a batch cut short
        return
    new, gone = sorted(now - start), sorted(start - now)
    what = (f"pool item {new[0]} is newly labeled" if new else
            f"pool item {gone[0]} is no longer labeled")
    raise records.RecordError(
        f"the pool's starting labels changed under the run: {wd.file('labels.jsonl')} "
        f"started from {len(start)} labeled items, the pool now gives {len(now)} ({what}); "
        "the run's queries were drawn from its starting set: undo the edit (label the "
        "requested items in labels/ instead) or use a new --workdir")


def check_queries(queries: list, known: Mapping[int, int], pool: int, num_classes: int,
                  done: int, wd: Workdir) -> None:
    """Queries must be one row per finished cycle, in range, unique, and agree with the
    label ledger; a disagreement is refused naming the row."""
    path = wd.file("queries.jsonl") if wd.persistent else "queries"
    seen: set = set()
    for n, q in enumerate(queries, start=1):
        idx = np.asarray(q.get("indices", []), np.int64)
        lab = np.asarray(q.get("labels", []), np.int64)
        if q.get("cycle") != n - 1 or q["cycle"] > done:
            raise records.RecordError(f"{path} row {n} is for cycle {q.get('cycle')}, "
                                      f"expected {n - 1} (cycles finished: {done + 1})")
        if idx.size != lab.size or np.any((idx < 0) | (idx >= pool)):
            raise records.RecordError(f"{path} row {n} holds pool indices outside "
                                      f"[0, {pool}) or a label count that does not match")
        if np.any((lab < 0) | (lab >= num_classes)):
            raise records.RecordError(f"{path} row {n} holds a label outside "
                                      f"[0, {num_classes})")
        for i, y in zip(idx.tolist(), lab.tolist()):
            if i in seen:
                raise records.RecordError(f"{path} row {n}: pool item {i} was queried twice")
            seen.add(i)
            if known.get(i) != y:
                raise records.RecordError(
                    f"{path} row {n}: pool item {i} has label {y} but labels.jsonl says "
                    f"{known.get(i, 'nothing')}; the two ledgers disagree")


def _recorded(config: LoopConfig) -> dict:
    """What ``config.json`` holds: the config without how the run is launched."""
    return {k: v for k, v in config.to_dict().items() if k not in LoopConfig.LAUNCH_FIELDS}


def open_run(run: RunSetup, wd: Workdir, log: Callable[[str], None]
             ) -> tuple[RunSetup, LoopState]:
    """Checks the workdir and restores the run from it (a new run: its start): the setup
    with its oracle recording into the workdir (``run.ledger``), and the state."""
    wd.check_config(_recorded(run.config))
    wd.check_pool(pool_info(run.dataset))
    wd.recover()
    run = dataclasses.replace(run, ledger=RecordingOracle(run.oracle, wd,
                                                          run.dataset.num_classes))
    changed = getattr(run.oracle, "changed_answers", None)
    for note in list(run.dataset.notes) + (changed(run.ledger.known) if changed else []):
        log(note)
    if run.train.batch_size < run.config.train.batch_size:
        log(f"[{run.config.strategy}] train.batch_size {run.config.train.batch_size} is "
            f"more than the most labels this run will have: batches of "
            f"{run.train.batch_size} (the same steps, without the padding)")
    return run, restore(run, wd, run.ledger, log)


def open_together(run: RunSetup, wd: Workdir, log: Callable[[str], None]
                  ) -> tuple[RunSetup, LoopState]:
    """:func:`open_run` in a multi-process run: every process restores process 0's state.

    Process 0 holds the workdir (the others' records are in memory, empty). It sends
    the finished cycles, queries, metric rows, stopping memory, the pending cycle and the
    network of its last finished cycle; the others rebuild the same state from them. A
    workdir process 0 refuses is refused on every process at once, each saying so in one
    line (not in a collective that times out later).
    """
    try:
        opened, failed = open_run(run, wd, log), None
    except Exception as e:  # noqa: BLE001  (re-raised below)
        opened, failed = None, e
    shared = {}
    if jax.process_index() == 0 and failed is not None:
        shared = {"error": str(failed).splitlines()[0] if str(failed) else
                  type(failed).__name__, "refused": isinstance(failed, ValueError)}
    elif jax.process_index() == 0:
        state = opened[1]
        shared = json.loads(records.dumps(dict(
            done=wd.cycle_done(), cycle=state.cycle, queries=list(state.queries),
            metrics=wd.rows("metrics"), memory=state.memory, stopped=state.stopped,
            pending=state.pending)))
    shared = distributed_lib.broadcast_json(shared)
    if failed is not None:
        raise failed
    if "error" in shared:
        kind = WorkdirError if shared["refused"] else RuntimeError
        raise kind(f"process 0 refused the workdir: {shared['error']}")
    run, state = opened
    if shared["done"] >= 0:              # process 0's network of its last finished cycle
        state = state.replace(variables=Variables(
            *distributed_lib.broadcast_from_first(tuple(state.variables))))
    if jax.process_index() != 0:
        ledger = state.pool
        for q in shared["queries"]:
            ledger = ledger.reveal(q["indices"], q["labels"])
        for kind in ("queries", "metrics"):
            for row in shared[kind]:
                wd.append(kind, row)
        state = state.replace(pool=ledger.replace(cycle=shared["cycle"]),
                              queries=tuple(shared["queries"]), memory=shared["memory"],
                              stopped=shared["stopped"], pending=shared["pending"])
    return run, state


def commit(wd: Workdir, cycle: int, state: LoopState, row: dict, query: Optional[dict],
           writer) -> None:
    """Records finished cycle ``cycle`` (``state``: the state after it, ``row`` its
    metrics, ``query`` its query row or ``None``); ``state.json`` is written last (the
    commit point)."""
    if query is not None:
        wd.append("queries", query)
    wd.append("metrics", row)
    wd.save_variables(cycle, state.variables)      # a multi-process run: process 0 alone
    if wd.persistent and state.memory:
        records.atomic_write_json(wd.file("stopping.json"), state.memory)
    wd.commit(cycle, state.stopped)
    wd.clear_pending()
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "cycle":
                writer.add_scalar(k, v, global_step=row["num_labeled"])
        writer.flush()


def commit_acquisition(wd: Workdir, cycle: int, state: LoopState,
                       query: Optional[dict]) -> None:
    """Records the acquisition of a cycle whose training was recorded already (the last
    cycle of a finished run, given more cycles)."""
    if query is not None:
        wd.append("queries", query)
    wd.commit(cycle, state.stopped)


def save_pending(wd: Workdir, state: LoopState) -> None:
    """A trained cycle waiting for people: kept so the rerun does not train again."""
    wd.save_variables(state.cycle, state.variables)
    wd.save_pending({"cycle": state.cycle, "row": state.pending["row"]})


def _with_pending(wd: Workdir, state: LoopState) -> LoopState:
    """``state`` with the cycle that waited for labels, if it is the next one (its network
    and metrics row); a stale pending record is cleared."""
    pending = wd.pending()
    if pending is None or pending.get("cycle") != state.cycle:
        wd.clear_pending()
        return state
    return state.replace(variables=Variables(*wd.load_variables(state.cycle,
                                                                state.variables)),
                         pending={"row": dict(pending["row"]), "recorded": False})


def labeled_indices_from_records(workdir: str, config: LoopConfig, dataset) -> np.ndarray:
    """Rebuilds the labeled set of a workdir exactly: initial set + every query row."""
    init = initial_indices(config, dataset)
    queried = [i for q in records.read_jsonl(os.path.join(workdir, "queries.jsonl"))
               for i in q["indices"]]
    return np.sort(np.concatenate([init, np.asarray(queried, dtype=np.int64)]))
