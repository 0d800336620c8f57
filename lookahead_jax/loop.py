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

State (:class:`~lookahead_jax.state.ALState`) is an immutable pytree over the *fixed*
pool: a labeled mask and the labels revealed so far, so shapes never change across
cycles. Running the same config on the same workdir resumes after the last finished cycle
and reproduces the queried indices and accuracies of an uninterrupted run. Randomness
comes from one key tree (:mod:`lookahead_jax.rng`).

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
from lookahead_jax.config import LoopConfig, validate_config
from lookahead_jax.models import Model, Variables
from lookahead_jax.oracles import LabelsNeeded, Oracle, RecordingOracle
from lookahead_jax.resume import _commit, _open, _open_together, _save_pending
from lookahead_jax.run_setup import RunSetup, init_variables, load_config_dataset, setup
from lookahead_jax.state import ALState, draw_candidates
from lookahead_jax.workdir import Workdir, WorkdirError

__all__ = ["LoopConfig", "Oracle", "RunResult", "run", "run_strategies", "run_cycle"]


class RunResult(struct.PyTreeNode):
    """What :func:`run` returns: the metric rows, the queries and the final state."""

    metrics: list = struct.field(pytree_node=False)
    queries: list = struct.field(pytree_node=False)
    state: ALState
    stopped: Optional[dict] = struct.field(pytree_node=False, default=None)


def train_cycle(run: RunSetup, state: ALState, variables: Variables
                ) -> tuple[Variables, dict]:
    """Trains f_L on the labeled set and evaluates it: ``(variables, metrics row)``.

    ``test_accuracy`` is ``None`` for a pool without an evaluation split.
    """
    config, cycle = run.config, state.cycle
    labeled_idx = np.flatnonzero(state.labeled)
    t0 = time.perf_counter()
    start = variables
    from_init = cycle == 0 or not config.train.warm_start
    if not config.train.warm_start and cycle > 0:
        start = init_variables(run, cycle)
    tstate = train_lib.create_train_state(run.model, start, config.train)
    tstate, train_loss = train_lib.fit(tstate, run.dataset.x_train[labeled_idx],
                                       state.labels[labeled_idx],
                                       train_lib.cycle_config(run.train, from_init),
                                       key=rng.key(config.seed, "train", cycle),
                                       aux_loss=run.aux_loss)
    variables = tstate.variables
    seconds_train = time.perf_counter() - t0
    test_acc = None
    if run.dataset.has_test:
        test_acc = train_lib.accuracy(run.model, variables, run.dataset.x_test,
                                      run.dataset.y_test, config.train.eval_batch_size)
    return variables, {"cycle": cycle, "num_labeled": int(labeled_idx.size),
                       "test_accuracy": test_acc, "train_loss": train_loss,
                       "seconds_train": seconds_train, "seconds_score": 0.0,
                       "seconds_select": 0.0}


def check_stop(run: RunSetup, phase: str, state: ALState, variables: Variables, row: dict,
               memory: dict, selection_info=None) -> tuple[Optional[dict], dict]:
    """Evaluates the criteria of ``phase``; records each value in ``row`` (``stop_<name>``).

    Returns ``(stopped, memory)``: ``stopped`` names the first criterion that fired.
    """
    chosen = [(c, o) for c, o in run.criteria if c.phase == phase]
    if not chosen:
        return None, memory
    probs = unlabeled = None
    if run.stop_set is not None and phase == "model":
        logits = train_lib.predict(run.model, variables, run.dataset.x_train[run.stop_set],
                                   run.config.train.eval_batch_size)
        probs = np.asarray(jax.device_get(jax.nn.softmax(logits, -1)), np.float64)
        unlabeled = ~state.labeled[run.stop_set]
    obs = stopping.Observation(cycle=state.cycle, num_labeled=int(state.labeled.sum()),
                               stop_probs=probs, stop_unlabeled=unlabeled,
                               selection_info=selection_info)
    stopped, memory = None, dict(memory)
    for crit, opts in chosen:
        fired, value, memory[crit.name] = crit.check(opts, obs, memory.get(crit.name, {}))
        row[f"stop_{crit.name}"] = value
        if fired and stopped is None:
            stopped = {"cycle": state.cycle, "by": crit.name, "value": value}
            row["stopped_by"] = crit.name
    return stopped, memory


def acquire(run: RunSetup, state: ALState, variables: Variables, row: dict,
            oracle: RecordingOracle, memory: dict
            ) -> tuple[ALState, Optional[dict], Optional[dict], dict]:
    """One acquisition step: candidates → strategy → (selection-phase stop) → oracle.

    Returns ``(state, query, stopped, memory)``; ``row`` (the cycle's metrics) gains the
    seconds of scoring and selection and the strategy's logged scalars (``info_*``).
    """
    config, cycle = run.config, state.cycle
    if distributed_lib.is_multiprocess():       # the NTK engine's inputs: equal everywhere
        variables = Variables(*distributed_lib.broadcast_from_first(tuple(variables)))
    labeled_idx = np.flatnonzero(state.labeled)
    cand = draw_candidates(state, config, run.subset)
    x_pool = run.dataset.x_train
    ctx = strategies.AcquisitionContext(
        model=run.model, params=variables.params, state=variables.state,
        x_labeled=x_pool[labeled_idx], y_labeled=state.labels[labeled_idx],
        x_candidates=x_pool[cand], num_classes=run.dataset.num_classes,
        query_size=config.query_size, key=rng.key(config.seed, "acquire", cycle),
        loss=config.train.loss,
        label_fn=_label_fn(oracle, cand, cycle) if config.sequential else None,
        labeled_capacity=run.capacity, options=run.options)
    t1 = time.perf_counter()
    selection = run.strategy(ctx)
    t2 = time.perf_counter()
    row.update(seconds_score=t2 - t1,
               **{f"info_{k}": float(v) for k, v in dict(selection.info).items()})
    stopped, memory = check_stop(run, "selection", state, variables, row, memory,
                                 selection.info)
    if stopped is not None:
        return state, None, stopped, memory
    chosen = cand[_check_selection(selection, config, run.subset)]
    labels = oracle(chosen, cycle=cycle, tag=f"cycle_{cycle}")
    if selection.revealed is not None and not np.array_equal(
            np.asarray(selection.revealed), labels):
        raise RuntimeError("the strategy's revealed labels disagree with the oracle")
    state = state.reveal(chosen, labels)
    row["seconds_select"] = time.perf_counter() - t2
    return state, {"cycle": cycle, "indices": chosen.tolist(), "labels": labels.tolist()}, \
        None, memory


def run_cycle(run: RunSetup, state: ALState, variables: Variables, oracle: RecordingOracle,
              memory: dict, trained: Optional[tuple] = None):
    """One cycle of Algorithm 1: train, evaluate, check the stopping criteria, and (but in
    the last cycle) acquire.

    ``trained``: ``(variables, row)`` of a cycle whose training already ran (it waited for
    people's labels). Returns ``(state, variables, row, query or None, stopped or None,
    memory)``; nothing is recorded.
    """
    variables, row = trained if trained is not None else train_cycle(run, state, variables)
    stopped, memory = check_stop(run, "model", state, variables, row, memory)
    query = None
    if stopped is None and state.cycle < run.config.cycles - 1:
        try:
            state, query, stopped, memory = acquire(run, state, variables, row, oracle, memory)
        except LabelsNeeded as e:
            e.trained = (variables, row)
            raise
    return state.replace(cycle=state.cycle + 1), variables, row, query, stopped, memory


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
    with Workdir.open(workdir) as wd:
        if distributed_lib.is_multiprocess():
            opened = _open_together(run_, wd, log)
        else:
            opened = _open(run_, wd, log)
        rec, old_cycles, state, variables, queries, memory, stopped, trained = opened
        bar = tqdm(total=run_.config.cycles, initial=min(state.cycle, run_.config.cycles),
                   desc=run_.config.strategy, unit="cycle", disable=None, leave=False)
        writer = _tensorboard(wd)
        try:
            if stopped is None and old_cycles is not None and state.cycle == old_cycles:
                state, queries, stopped, memory = _extend(run_, wd, rec, state, variables,
                                                          queries, memory)
            while stopped is None and state.cycle < run_.config.cycles:
                cycle = state.cycle
                try:
                    state, variables, row, query, stopped, memory = run_cycle(
                        run_, state, variables, rec, memory, trained)
                except LabelsNeeded as e:
                    if getattr(e, "trained", None) is not None:
                        _save_pending(wd, cycle, *e.trained)
                    raise
                trained = None
                _commit(wd, cycle, variables, row, query, stopped, memory, writer)
                if query is not None:
                    queries.append(query)
                log(_progress_line(row, run_.config))
                bar.update(1)
                if wd.persistent:
                    _plot(wd, run_.config)
                if stop_after_cycle is not None and cycle >= stop_after_cycle:
                    break
            if stopped is not None:
                log(f"[{run_.config.strategy}] stopped at cycle {stopped['cycle'] + 1}: "
                    f"criterion {stopped['by']} fired (value {stopped['value']:.4g})")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return RunResult(metrics=wd.rows("metrics"), queries=queries, state=state,
                         stopped=stopped)


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


def _extend(run: RunSetup, wd: Workdir, oracle: RecordingOracle, state: ALState,
            variables: Variables, queries: list, memory: dict):
    """A finished run given more cycles: its last cycle acquires now (it trained already)."""
    last = state.replace(cycle=state.cycle - 1)
    row = dict(wd.rows("metrics")[-1])
    new_state, query, stopped, memory = acquire(run, last, variables, row, oracle, memory)
    if query is not None:
        wd.append("queries", query)
        queries.append(query)
    wd.commit(last.cycle, stopped)
    return new_state.replace(cycle=state.cycle), queries, stopped, memory


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
    configs = {s: dataclasses.replace(config, strategy=s, strategy_options=_options_for(
        s, config.strategy_options, names)) for s in names}
    for c in configs.values():
        validate_config(c, model=model)
    if dataset is None:
        dataset = load_config_dataset(config)
    for s, c in configs.items():
        setup(c, os.path.join(workdir, s) if workdir else None, dataset=dataset,
              model=model, oracle=oracle)
    results = {}
    for s, c in configs.items():
        sub = os.path.join(workdir, s) if workdir else None
        results[s] = run(c, sub, dataset=dataset, model=model, oracle=oracle, log=log)
    if workdir:
        curves = {s: ([m["num_labeled"] for m in r.metrics],
                      [m["test_accuracy"] for m in r.metrics]) for s, r in results.items()}
        name = model.name if model is not None else config.model
        plots.plot_learning_curves(curves, os.path.join(workdir, "learning_curves.png"),
                                   title=f"{config.dataset} / {name}, seed {config.seed}")
    return results
