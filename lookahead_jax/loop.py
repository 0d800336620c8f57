"""The pool-based active-learning loop (the paper's Algorithm 1), resumable.

One cycle (:func:`run_cycle`): train f_L on the labeled set (warm or cold start),
evaluate it, check the stopping criteria, draw a random candidate subset of the
unlabeled pool, score it with the strategy, select ``query_size`` points, reveal their
labels through the oracle, record. The last cycle trains and evaluates only, so
``cycles`` cycles reveal ``(cycles - 1) · query_size`` labels. :func:`run` sets a run up
(:func:`~lookahead_jax.run_setup.setup`: everything validated before any training or any
question to the oracle), opens its workdir (:mod:`lookahead_jax.workdir`: locked,
checked, repaired; :mod:`lookahead_jax.resume`: resumed) and drives the cycles;
:func:`run_strategies` runs one setting once per strategy and compares them.

Any :class:`~lookahead_jax.models.Model` runs here: pass ``model=`` (a Flax NNX or linen
module through its adapter, an Equinox model, a plain function), or name a built-in
network in ``LoopConfig.model`` (:mod:`lookahead_jax.config`). The pool may be a
benchmark or a user's own data whose labels are partly unknown (:mod:`lookahead_jax.data`);
people answer through files or a notebook (:mod:`lookahead_jax.oracles`,
:mod:`lookahead_jax.labeler`).

The run's state is one immutable pytree (:class:`~lookahead_jax.state.LoopState`, as
Flax's ``TrainState``): the pool ledger (a labeled mask and the labels revealed so far
over the *fixed* pool, so shapes never change across cycles), the network, the query
rows, the stopping memory, the cycle waiting for its acquisition and the stopped flag.
Every step takes a state and returns a new one: :func:`train_cycle`, :func:`check_stop`
and :func:`acquire` return ``(state, row)`` and leave their arguments alone, and
:func:`run_cycle` is ``(setup, state) -> (state, row)``. Resuming is restoring the state
from the workdir (:func:`lookahead_jax.resume.restore`): running the same config on the
same workdir continues after the last finished cycle and reproduces the queried indices
and accuracies of an uninterrupted run. Randomness comes from one key tree
(:mod:`lookahead_jax.rng`).

The public API re-exported here: :class:`LoopConfig`, :class:`Oracle`, :func:`run`,
:func:`run_strategies` (and what they return, :class:`RunResult`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from flax import struct
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from lookahead_jax import plots, rng, stopping, strategies
from lookahead_jax import distributed as distributed_lib
from lookahead_jax import train as train_lib
from lookahead_jax.config import LoopConfig
from lookahead_jax.models import Model, Variables
from lookahead_jax.oracles import LabelsNeeded, Oracle, RecordingOracle
from lookahead_jax.resume import (commit, commit_acquisition, open_run, open_together,
                                  save_pending)
from lookahead_jax.run_setup import RunSetup, init_variables, setup
from lookahead_jax.state import ALState, LoopState, draw_candidates
from lookahead_jax.workdir import Workdir, WorkdirError

__all__ = ["LoopConfig", "Oracle", "RunResult", "run", "run_strategies", "run_cycle"]


class RunResult(struct.PyTreeNode):
    """What :func:`run` returns: the metric rows, the queries and the final state."""

    metrics: list = struct.field(pytree_node=False)
    queries: list = struct.field(pytree_node=False)
    state: ALState
    stopped: Optional[dict] = struct.field(pytree_node=False, default=None)


def train_cycle(run: RunSetup, state: LoopState) -> LoopState:
    """Trains f_L on the labeled set and evaluates it: ``state`` with the trained network
    and the cycle's metrics row pending (``state.pending["row"]``).

    ``test_accuracy`` is ``None`` for a pool without an evaluation split.
    """
    pool, cycle, tcfg = state.pool, state.cycle, run.train
    labeled_idx = np.flatnonzero(pool.labeled)
    t0 = time.perf_counter()
    start = state.variables
    from_init = cycle == 0 or not tcfg.warm_start
    if not tcfg.warm_start and cycle > 0:
        start = init_variables(run, cycle)
    tstate = train_lib.create_train_state(run.model, start, tcfg)
    tstate, train_loss = train_lib.fit(tstate, run.dataset.x_train[labeled_idx],
                                       pool.labels[labeled_idx],
                                       train_lib.cycle_config(tcfg, from_init),
                                       key=rng.key(run.config.seed, "train", cycle),
                                       aux_loss=run.aux_loss)
    variables = tstate.variables
    seconds_train = time.perf_counter() - t0
    test_acc = None
    if run.dataset.has_test:
        test_acc = train_lib.accuracy(run.model, variables, run.dataset.x_test,
                                      run.dataset.y_test, tcfg.eval_batch_size)
    row = {"cycle": cycle, "num_labeled": int(labeled_idx.size), "test_accuracy": test_acc,
           "train_loss": train_loss, "seconds_train": seconds_train, "seconds_score": 0.0,
           "seconds_select": 0.0}
    return state.replace(variables=variables, pending={"row": row, "recorded": False})


def check_stop(run: RunSetup, phase: str, state: LoopState, row: dict,
               selection_info=None) -> tuple[LoopState, dict]:
    """Evaluates the criteria of ``phase``: ``(state, row)``, the state with the criteria's
    memory and ``stopped`` (the first criterion that fired), the row with each value
    (``stop_<name>``, and ``stopped_by``)."""
    chosen = [(c, o) for c, o in run.criteria if c.phase == phase]
    if not chosen:
        return state, row
    pool = state.pool
    probs = unlabeled = None
    if run.stop_set is not None and phase == "model":
        logits = train_lib.predict(run.model, state.variables,
                                   run.dataset.x_train[run.stop_set], run.train.eval_batch_size)
        probs = np.asarray(jax.device_get(jax.nn.softmax(logits, -1)), np.float64)
        unlabeled = ~pool.labeled[run.stop_set]
    obs = stopping.Observation(cycle=pool.cycle, num_labeled=int(pool.labeled.sum()),
                               stop_probs=probs, stop_unlabeled=unlabeled,
                               selection_info=selection_info)
    stopped, memory, row = None, dict(state.memory), dict(row)
    for crit, opts in chosen:
        fired, value, memory[crit.name] = crit.check(opts, obs, memory.get(crit.name, {}))
        row[f"stop_{crit.name}"] = value
        if fired and stopped is None:
            stopped = {"cycle": pool.cycle, "by": crit.name, "value": value}
            row["stopped_by"] = crit.name
    return state.replace(memory=memory, stopped=stopped), row


def acquire(run: RunSetup, state: LoopState, row: dict) -> tuple[LoopState, dict]:
    """One acquisition step: candidates → strategy → (selection-phase stop) → oracle.

    Returns ``(state, row)``: the state with the revealed labels and the query row
    appended (or ``stopped``), the cycle's metrics row with the seconds of scoring and
    selection and the strategy's logged scalars (``info_*``). The labels come from
    ``run.ledger``, which records each answer in the workdir at once.
    """
    config, pool, cycle = run.config, state.pool, state.cycle
    variables = state.variables
    if distributed_lib.is_multiprocess():       # the NTK engine's inputs: equal everywhere
        variables = Variables(*distributed_lib.broadcast_from_first(tuple(variables)))
    labeled_idx = np.flatnonzero(pool.labeled)
    cand = draw_candidates(pool, config, run.subset)
    x_pool = run.dataset.x_train
    ctx = strategies.AcquisitionContext(
        model=run.model, params=variables.params, state=variables.state,
        x_labeled=x_pool[labeled_idx], y_labeled=pool.labels[labeled_idx],
        x_candidates=x_pool[cand], num_classes=run.dataset.num_classes,
        query_size=config.query_size, key=rng.key(config.seed, "acquire", cycle),
        loss=run.train.loss,
        label_fn=_label_fn(run.ledger, cand, cycle) if config.sequential else None,
        labeled_capacity=run.capacity, options=run.options)
    t1 = time.perf_counter()
    selection = run.strategy(ctx)
    t2 = time.perf_counter()
    row = {**row, "seconds_score": t2 - t1,
           **{f"info_{k}": float(v) for k, v in dict(selection.info).items()}}
    state, row = check_stop(run, "selection", state, row, selection.info)
    if state.stopped is not None:
        return state, row
    chosen = cand[_check_selection(selection, config, run.subset)]
    labels = run.ledger(chosen, cycle=cycle, tag=f"cycle_{cycle}")
    if selection.revealed is not None and not np.array_equal(
            np.asarray(selection.revealed), labels):
        raise RuntimeError("the strategy's revealed labels disagree with the oracle")
    query = {"cycle": cycle, "indices": chosen.tolist(), "labels": labels.tolist()}
    return state.replace(pool=pool.reveal(chosen, labels),
                         queries=state.queries + (query,)), \
        {**row, "seconds_select": time.perf_counter() - t2}


def run_cycle(run: RunSetup, state: LoopState) -> tuple[LoopState, dict]:
    """One cycle of Algorithm 1: train, evaluate, check the stopping criteria, and (but in
    the last cycle) acquire. Returns ``(state, row)``: the state after the cycle (the
    next cycle's, its query in ``state.queries``, or ``state.stopped``) and the cycle's
    metrics row; nothing is recorded.

    A pending ``state`` (:func:`train_cycle` ran, or the workdir held the cycle: it waited
    for people's labels) is not trained again; one whose row is recorded already (the
    last cycle of a finished run given more cycles) goes straight to its acquisition.
    """
    if state.pending is None:
        state = train_cycle(run, state)
    row, recorded = state.pending["row"], state.pending["recorded"]
    if not recorded:
        state, row = check_stop(run, "model", state, row)
    if state.stopped is None and state.cycle < run.config.cycles - 1:
        state, row = acquire(run, state, row)
    return state.replace(pool=state.pool.replace(cycle=state.cycle + 1), pending=None), row


def run(config: LoopConfig, workdir: Optional[str] = None, *, dataset=None,
        model: Optional[Model] = None, oracle: Optional[Oracle] = None,
        log: Callable[[str], None] = print,
        stop_after_cycle: Optional[int] = None) -> RunResult:
    """Runs (or resumes) an active-learning experiment.

    Args:
      config: the run; validated before any training.
      workdir: where records go; ``None`` keeps them in memory (no resume).
      dataset: a preloaded ``data.Dataset`` (else loaded from ``config``).
      model: any :class:`~lookahead_jax.models.Model` (else the built-in
        ``config.model``); it needs ``init``. ``config.model`` is set to its name.
      oracle: label source (default: ``config.oracle``: the dataset's own labels, or
        people through files).
      log: progress sink, one line per cycle.
      stop_after_cycle: finish this cycle and return (tests of resumption).

    Returns:
      a :class:`RunResult`; the same rows are in ``workdir``.

    Raises:
      LabelsNeeded: people must answer a request file first (the files oracle); every
        finished cycle is kept and the same call continues once the answers are there.
    """
    if not join(config):                    # processes > 0: records in memory, quiet
        workdir, log = None, _quiet
    run_ = setup(config, workdir, dataset=dataset, model=model, oracle=oracle)
    return _drive(run_, workdir, log, stop_after_cycle)


def _drive(run_: RunSetup, workdir: Optional[str], log: Callable[[str], None],
           stop_after_cycle: Optional[int] = None) -> RunResult:
    """Opens the workdir of a set-up run, restores its state and runs its cycles, each
    recorded as it finishes."""
    config = run_.config
    with Workdir.open(workdir) as wd:
        opener = open_together if distributed_lib.is_multiprocess() else open_run
        run_, state = opener(run_, wd, log)
        done = state.cycle + (state.pending is not None and state.pending["recorded"])
        bar = tqdm(total=config.cycles, initial=min(done, config.cycles),
                   desc=config.strategy, unit="cycle", disable=None, leave=False)
        writer = _tensorboard(wd)
        try:
            while state.stopped is None and state.cycle < config.cycles:
                cycle, before = state.cycle, state
                if before.pending is None:
                    before = train_cycle(run_, before)
                recorded = before.pending["recorded"]
                try:
                    state, row = run_cycle(run_, before)
                except LabelsNeeded:
                    if not recorded:          # trained: kept, the rerun does not train
                        save_pending(wd, before)
                    raise
                query = state.queries[-1] if len(state.queries) > len(before.queries) \
                    else None
                if recorded:                  # its training and row are in the workdir
                    commit_acquisition(wd, cycle, state, query)
                    continue
                commit(wd, cycle, state, row, query, writer)
                log(_progress_line(row, config))
                bar.update(1)
                if wd.persistent:
                    _plot(wd, config)
                if stop_after_cycle is not None and cycle >= stop_after_cycle:
                    break
            if state.stopped is not None:
                stopped = state.stopped
                log(f"[{config.strategy}] stopped at cycle {stopped['cycle'] + 1}: "
                    f"criterion {stopped['by']} fired (value {stopped['value']:.4g})")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return RunResult(metrics=wd.rows("metrics"), queries=list(state.queries),
                         state=state.pool, stopped=state.stopped)


def join(config: LoopConfig) -> bool:
    """Joins the multi-process run ``config.distributed`` asks for (:mod:`~lookahead_jax.
    distributed`; a no-op without it, or once joined): whether this process writes the
    records (process 0, or the only one). Call before anything uses JAX."""
    if not config.distributed:
        return True
    distributed_lib.initialize(config.coordinator_address, config.num_processes,
                               config.process_id, timeout_s=config.join_timeout_s or 300.0)
    return jax.process_index() == 0


def _quiet(line: str) -> None:
    del line


def _tensorboard(wd: Workdir):
    return SummaryWriter(logdir=wd.file("tensorboard")) if wd.persistent else None


def _label_fn(oracle: RecordingOracle, cand: np.ndarray, cycle: int):
    """``label_fn(j)``: the true label of candidate position ``j``, persisted at once.

    The t-th call of a cycle asks under the tag ``cycle_<k>_step_<t>`` (the files oracle
    asks for one item at a time)."""
    step = [0]

    def label_fn(j: int) -> int:
        tag = f"cycle_{cycle}_step_{step[0]}"
        step[0] += 1
        return int(oracle(cand[[int(j)]], cycle=cycle, tag=tag)[0])

    return label_fn


def _check_selection(selection: strategies.Selection, config: LoopConfig,
                     subset: int) -> np.ndarray:
    idx = np.asarray(selection.indices, dtype=np.int64).reshape(-1)
    if idx.size != config.query_size or np.unique(idx).size != idx.size:
        raise RuntimeError(f"strategy {config.strategy!r} returned {idx.size} indices "
                           f"({np.unique(idx).size} distinct), expected {config.query_size}")
    if idx.min() < 0 or idx.max() >= subset:
        raise RuntimeError(f"strategy {config.strategy!r} returned an index outside the "
                           f"candidate subset [0, {subset})")
    return idx


def _progress_line(row: dict, config: LoopConfig) -> str:
    acc = row["test_accuracy"]
    acc = f"{100 * acc:6.2f}%" if acc is not None else "   n/a "
    return (f"[{config.strategy}] cycle {row['cycle'] + 1}/{config.cycles}  "
            f"labeled {row['num_labeled']:>6d}  test acc {acc}  "
            f"loss {row['train_loss']:.2e}  train {row['seconds_train']:.1f}s  "
            f"score {row['seconds_score']:.2f}s")


def _plot(wd: Workdir, config: LoopConfig) -> None:
    rows = wd.rows("metrics")
    curve = ([r["num_labeled"] for r in rows], [r["test_accuracy"] for r in rows])
    plots.plot_learning_curves({config.strategy: curve}, wd.file("learning_curve.png"),
                               title=f"{config.dataset} / {config.model}")


def _options_for(name: str, options: tuple, names: Sequence[str]) -> tuple:
    """The options of ``options`` that strategy ``name`` knows, when several strategies
    share one set; an option no strategy knows is refused naming every known option."""
    if len(names) == 1:
        return options
    known = {s: set(strategies.get(s).options.names()) for s in names}
    for key, _ in options:
        if not any(key in k for k in known.values()):
            listing = ", ".join(sorted(set().union(*known.values()))) or "none"
            raise ValueError(f"no strategy of {', '.join(names)} has an option {key!r}; "
                             f"their options: {listing}")
    return tuple((k, v) for k, v in options if k in known[name])


def run_strategies(config: LoopConfig, names: Sequence[str], workdir: Optional[str],
                   *, log: Callable[[str], None] = print, dataset=None,
                   model: Optional[Model] = None, oracle: Optional[Oracle] = None
                   ) -> dict[str, RunResult]:
    """Runs the same setting once per strategy (``workdir/<strategy>/``) and compares.

    ``config.strategy_options`` are shared: each strategy gets the options it knows, and
    an option none of them knows is refused. Every config is validated before the first
    run starts. Writes ``workdir/learning_curves.png`` with one line per strategy and
    returns ``{strategy: RunResult}``.
    """
    if not names:
        raise ValueError("no strategy given")
    if len(set(names)) != len(names):
        dup = sorted({s for s in names if list(names).count(s) > 1})
        raise ValueError(f"strategy {dup[0]!r} is given twice; each strategy runs once")
    if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} is a file, not a folder; choose another "
                           "--workdir")
    if not join(config):                    # processes > 0: records in memory, quiet
        workdir, log = None, _quiet
    subdirs = {s: os.path.join(workdir, s) if workdir else None for s in names}
    setups = {}
    for s in names:                         # every run set up (validated) before the first
        c = dataclasses.replace(config, strategy=s, strategy_options=_options_for(
            s, config.strategy_options, names))
        setups[s] = setup(c, subdirs[s], dataset=dataset, model=model, oracle=oracle)
        dataset = setups[s].dataset         # loaded once, by the first
    results = {s: _drive(setups[s], subdirs[s], log) for s in names}
    if workdir:
        curves = {s: ([m["num_labeled"] for m in r.metrics],
                      [m["test_accuracy"] for m in r.metrics]) for s, r in results.items()}
        name = model.name if model is not None else config.model
        plots.plot_learning_curves(curves, os.path.join(workdir, "learning_curves.png"),
                                   title=f"{config.dataset} / {name}, seed {config.seed}")
    return results
