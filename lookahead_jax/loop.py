"""The pool-based active-learning loop (the paper's Algorithm 1), resumable.

One cycle (:func:`run_cycle`): train f_L on the labeled set (warm or cold start),
evaluate on the test split, draw a random candidate subset of the unlabeled pool, score it
with the strategy, select ``query_size`` points, reveal their labels through the
:class:`Oracle`, record. The last cycle trains and evaluates only, so ``cycles`` cycles
reveal ``(cycles - 1) · query_size`` labels. :func:`run` sets a run up (validation before
any training, the model, the workdir) and drives the cycles.

Any :class:`~lookahead_jax.models.Model` runs here: pass ``model=`` (a Flax NNX or linen
module through its adapter, an Equinox model, a plain function), or name a built-in
network in ``LoopConfig.model``.

State (:class:`ALState`) is an immutable pytree over the *fixed* training pool: a
labeled mask and the labels revealed so far, so shapes never change across cycles.
Everything needed to continue lives in the workdir (see :mod:`lookahead_jax.records`):
running the same config on the same workdir resumes after the last finished cycle and
reproduces the queried indices and accuracies of an uninterrupted run. Randomness comes
from one key tree (:mod:`lookahead_jax.rng`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from flax import serialization, struct

from lookahead_jax import data, models, records, rng, strategies
from lookahead_jax import train as train_lib
from lookahead_jax.models import Model, Variables

PyTree = Any


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """An active-learning run (hashable; every field is JSON-serialisable).

    Attributes:
      dataset: a name from ``data.DATASETS`` (or an alias such as ``svhn``).
      model: a name from ``models.MODELS``, or the name of the ``Model`` given to
        :func:`run` (recorded so a workdir knows its network).
      model_kwargs: the built-in model's options as ``((name, value), ...)``.
      strategy: a registered strategy name (``strategies.names()``).
      strategy_options: the strategy's options as ``((name, value), ...)``, validated
        against its options type before any training.
      sequential: reveal labels one at a time inside the acquisition (needs a
        sequential-capable strategy, e.g. ``mlmoc``); SGD retraining happens once per cycle.
      cycles: train/evaluate rounds; a query follows every round but the last.
      initial_size: size of the seeded random initial labeled set.
      query_size: labels revealed per cycle.
      subset_size: size of the random candidate subset scored per cycle (capped at what
        the pool can still supply in the last acquisition, so it is fixed per run).
      seed: seeds the initial draw, the candidate subsets, initialisation and shuffling.
      data_dir, manual_dir, download: passed to ``data.load_dataset``.
      max_train, max_test: optional seeded subsampling of the splits (quick runs).
      train: the per-cycle training settings.
    """

    dataset: str = "digits"
    model: str = "mlp"
    model_kwargs: tuple = (("widths", (256, 256)),)
    strategy: str = "random"
    strategy_options: tuple = ()
    sequential: bool = False
    cycles: int = 5
    initial_size: int = 100
    query_size: int = 20
    subset_size: int = 4000
    seed: int = 0
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    download: bool = False
    max_train: Optional[int] = None
    max_test: Optional[int] = None
    train: train_lib.TrainConfig = train_lib.TrainConfig()

    def __post_init__(self):
        for key in ("model_kwargs", "strategy_options"):
            v = getattr(self, key)
            if isinstance(v, Mapping):
                object.__setattr__(self, key, tuple(sorted((k, _hashable(x))
                                                           for k, x in v.items())))
        for name in ("dataset", "model", "strategy"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got "
                                 f"{getattr(self, name)!r}")
        for name in ("cycles", "initial_size", "query_size", "subset_size", "seed",
                     "max_train", "max_test"):
            v = getattr(self, name)
            if v is None and name in ("max_train", "max_test"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if name == "seed" and v < 0:
                raise ValueError(f"seed must be a non-negative integer, got {v}")
            if name != "seed" and v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        for name in ("sequential", "download"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.train, train_lib.TrainConfig):
            raise ValueError("train must be a train.TrainConfig")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: _jsonable(v) for k, v in self.model_kwargs}
        d["strategy_options"] = {k: _jsonable(v) for k, v in self.strategy_options}
        return d

    def to_config_dict(self):
        """This config as an unlocked ``ml_collections.ConfigDict`` (what config files return).

        ``None`` fields become typed placeholders, so ``--config.<field>=...`` parses;
        ``model_kwargs`` and ``strategy_options`` are nested dicts that accept new keys.
        """
        def convert(obj, d):
            hints = typing.get_type_hints(type(obj))
            out = ml_collections.ConfigDict()
            for f in dataclasses.fields(obj):
                v = d[f.name]
                if dataclasses.is_dataclass(getattr(obj, f.name)):
                    v = convert(getattr(obj, f.name), v)
                elif isinstance(v, dict):
                    v = ml_collections.ConfigDict({k: _hashable(x) for k, x in v.items()})
                elif v is None:
                    inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
                    v = ml_collections.config_dict.placeholder(inner[0] if inner else str)
                setattr(out, f.name, v)
            return out

        return convert(self, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoopConfig":
        """Builds a config from a plain mapping (e.g. an ``ml_collections.ConfigDict``)."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
        if "train" in d and not isinstance(d["train"], train_lib.TrainConfig):
            t = dict(d["train"])
            tknown = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
            if set(t) - tknown:
                raise ValueError(f"unknown train field(s) {sorted(set(t) - tknown)}; "
                                 f"known: {sorted(tknown)}")
            d["train"] = train_lib.TrainConfig(**t)
        return cls(**d)


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def labeled_capacity(config: LoopConfig) -> int:
    """The largest labeled-set size the run reaches: initial + (cycles − 1) · query."""
    return config.initial_size + (config.cycles - 1) * config.query_size


def effective_subset_size(config: LoopConfig, pool_size: int) -> int:
    """Candidates scored per cycle: ``subset_size``, capped by the pool's last acquisition."""
    last_unlabeled = pool_size - config.initial_size - max(0, config.cycles - 2) * config.query_size
    return min(config.subset_size, last_unlabeled)


def validate_config(config: LoopConfig, pool_size: Optional[int] = None, *,
                    model: Optional[Model] = None) -> strategies.Options:
    """Raises ``ValueError`` naming the problem for any config that cannot run.

    Checks names (dataset, model and its options, strategy), the strategy's options
    (unknown keys, types, ranges), sequential capability, that the query fits in the
    subset and that the pool can supply every query; run before any training.

    Returns:
      the strategy's validated options.
    """
    if not config.dataset.startswith(data.SOURCE_PREFIXES):
        data.canonical_name(config.dataset)
    if model is None:
        models.create_model(config.model, 2, **dict(config.model_kwargs))
    strategy = strategies.get(config.strategy)
    options = strategy.parse_options(dict(config.strategy_options))
    if model is not None:
        strategy.check_model(model)
    if config.sequential and not strategy.sequential:
        raise ValueError(f"strategy {config.strategy!r} has no sequential mode; sequential "
                         f"strategies: {', '.join(strategies.sequential_names())}")
    if config.query_size > config.subset_size:
        raise ValueError(f"query_size ({config.query_size}) is larger than subset_size "
                         f"({config.subset_size}): cannot select more points than are scored")
    if pool_size is not None:
        need = labeled_capacity(config)
        if need > pool_size:
            raise ValueError(
                f"initial_size + (cycles - 1) * query_size = {config.initial_size} + "
                f"({config.cycles} - 1) * {config.query_size} = {need} exceeds the training "
                f"pool of {pool_size} examples")
        if config.cycles > 1 and effective_subset_size(config, pool_size) < config.query_size:
            raise ValueError("the pool cannot supply a candidate subset as large as the query")
    return options


# ----------------------------------------------------------------------------- oracle


class Oracle(Protocol):
    """Reveals true labels: ``oracle(pool_indices (k,)) -> labels (k,) int``.

    Implement this to plug in a human labeler; the loop persists every answer before it
    goes on, and never asks twice for the same point of a workdir.
    """

    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        ...


@dataclasses.dataclass(frozen=True)
class DatasetOracle:
    """The default oracle: reads the dataset's own training labels."""

    labels: np.ndarray

    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.labels)[np.asarray(pool_indices, dtype=np.int64)]


# ----------------------------------------------------------------------------- state


class ALState(struct.PyTreeNode):
    """Immutable active-learning state over a fixed pool of N examples.

    Attributes:
      labeled: ``(N,)`` bool mask of the labeled set.
      labels: ``(N,)`` int32 revealed labels, −1 where unknown.
      cycle: ``()`` the next cycle to run.
    """

    labeled: np.ndarray
    labels: np.ndarray
    cycle: int = struct.field(pytree_node=False, default=0)

    def reveal(self, pool_indices: np.ndarray, labels: np.ndarray) -> "ALState":
        pool_indices = np.asarray(pool_indices, dtype=np.int64)
        if np.any(self.labeled[pool_indices]):
            raise ValueError("a queried point is already labeled")
        return self.replace(labeled=_set(self.labeled, pool_indices, True),
                            labels=_set(self.labels, pool_indices, labels))


def _set(a: np.ndarray, idx, values) -> np.ndarray:
    out = a.copy()
    out[idx] = values
    return out


def initial_state(config: LoopConfig, pool_size: int, oracle: Oracle) -> ALState:
    """The seeded random initial labeled set, its labels revealed by the oracle."""
    gen = rng.numpy_rng(rng.key(config.seed, "initial_set"))
    init = np.sort(gen.choice(pool_size, config.initial_size, replace=False))
    state = ALState(labeled=np.zeros(pool_size, bool),
                    labels=np.full(pool_size, -1, np.int32), cycle=0)
    return state.reveal(init, np.asarray(oracle(init), np.int32))


def draw_candidates(state: ALState, config: LoopConfig, subset: int) -> np.ndarray:
    """Sorted pool indices of a seeded random subset of the unlabeled pool, ``(subset,)``."""
    gen = rng.numpy_rng(rng.key(config.seed, "candidates", state.cycle))
    unlabeled = np.flatnonzero(~state.labeled)
    return np.sort(gen.choice(unlabeled, subset, replace=False))


# ----------------------------------------------------------------------------- workdir


class RunStore:
    """The workdir of one run; ``None`` path keeps everything in memory."""

    def __init__(self, workdir: Optional[str]):
        self.workdir = workdir
        self._memory: dict[str, list] = {"labels": [], "queries": [], "metrics": []}
        if workdir:
            os.makedirs(workdir, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def append(self, kind: str, row: dict) -> None:
        if self.workdir:
            records.append_jsonl(self.path(f"{kind}.jsonl"), row)
        else:
            self._memory[kind].append(row)

    def rows(self, kind: str) -> list[dict]:
        if self.workdir:
            return records.read_jsonl(self.path(f"{kind}.jsonl"))
        return list(self._memory[kind])

    def check_config(self, config: LoopConfig) -> None:
        """Writes ``config.json``, or checks it equals the one already there."""
        if not self.workdir:
            return
        path = self.path("config.json")
        new = json.loads(records.dumps(config.to_dict()))
        if os.path.exists(path):
            old = records.read_json(path)
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"workdir {self.workdir} holds a run with a different config (fields "
                    f"{', '.join(diff)} differ); use a new --workdir or the same settings")
        else:
            records.atomic_write_json(path, new)

    def cycle_done(self) -> int:
        if self.workdir and os.path.exists(self.path("state.json")):
            return int(records.read_json(self.path("state.json"))["cycle_done"])
        return -1

    def truncate_after(self, cycle: int) -> None:
        """Drops query/metric rows of cycles after ``cycle`` (a cycle that did not finish)."""
        if not self.workdir:
            return
        for kind in ("queries", "metrics"):
            rows = self.rows(kind)
            keep = [r for r in rows if r["cycle"] <= cycle]
            if len(keep) != len(rows):
                records.rewrite_jsonl(self.path(f"{kind}.jsonl"), keep)

    def save_cycle(self, cycle: int, variables: Variables) -> None:
        if not self.workdir:
            return
        leaves = [np.asarray(leaf) for leaf in jax.device_get(jax.tree.leaves(variables))]
        records.atomic_write_bytes(self.path("checkpoint.msgpack"),
                                   serialization.msgpack_serialize(leaves))
        records.atomic_write_json(self.path("state.json"), {"cycle_done": cycle})

    def load_variables(self, template: Variables) -> Variables:
        """The checkpointed variables, in the structure (and shapes) of ``template``."""
        with open(self.path("checkpoint.msgpack"), "rb") as fh:
            leaves = serialization.msgpack_restore(fh.read())
        flat, treedef = jax.tree.flatten(template)
        leaves = [leaves[str(i)] if isinstance(leaves, dict) else leaves[i]
                  for i in range(len(flat))]
        return Variables(*jax.tree.unflatten(treedef, leaves))


class RecordingOracle:
    """Wraps an :class:`Oracle`: persists each answer at once, never asks twice."""

    def __init__(self, oracle: Oracle, store: RunStore):
        self.oracle = oracle
        self.store = store
        self.known = {int(r["index"]): int(r["label"]) for r in store.rows("labels")}

    def __call__(self, pool_indices: np.ndarray, cycle: int) -> np.ndarray:
        pool_indices = np.asarray(pool_indices, dtype=np.int64).reshape(-1)
        missing = [int(i) for i in pool_indices if int(i) not in self.known]
        if missing:
            answers = np.asarray(self.oracle(np.asarray(missing)), dtype=np.int64).reshape(-1)
            if answers.shape[0] != len(missing):
                raise ValueError(f"the oracle returned {answers.shape[0]} labels for "
                                 f"{len(missing)} points")
            for i, y in zip(missing, answers):
                self.store.append("labels", {"cycle": cycle, "index": i, "label": int(y)})
                self.known[i] = int(y)
        return np.asarray([self.known[int(i)] for i in pool_indices], dtype=np.int32)


# ----------------------------------------------------------------------------- the loop


class RunResult(struct.PyTreeNode):
    """What :func:`run` returns: the metric rows, the queries and the final state."""

    metrics: list = struct.field(pytree_node=False)
    queries: list = struct.field(pytree_node=False)
    state: ALState


def load_config_dataset(config: LoopConfig):
    """The ``data.Dataset`` named by ``config`` (its data_dir, manual_dir, subsampling)."""
    return data.load_dataset(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir, download=config.download,
                             max_train=config.max_train, max_test=config.max_test,
                             seed=config.seed)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """Everything fixed for the life of a run (built once by :func:`setup`)."""

    config: LoopConfig
    dataset: Any
    model: Model
    strategy: strategies.Strategy
    options: strategies.Options
    store: RunStore
    oracle: RecordingOracle
    aux_loss: Optional[Callable]
    subset: int
    capacity: int


def setup(config: LoopConfig, workdir: Optional[str], *, dataset=None,
          model: Optional[Model] = None, oracle: Optional[Oracle] = None) -> RunSetup:
    """Validates everything, loads the data, builds the model and opens the workdir.

    Nothing is trained and no label is asked for here.
    """
    if model is not None:
        config = dataclasses.replace(config, model=model.name, model_kwargs=())
    validate_config(config, model=model)
    if dataset is None:
        dataset = load_config_dataset(config)
    else:
        data.validate_dataset(dataset)
    pool = int(dataset.x_train.shape[0])
    options = validate_config(config, pool, model=model)
    strategy = strategies.get(config.strategy)
    if model is None:
        model = models.get_model(config.model, dataset.num_classes, **dict(config.model_kwargs))
    strategy.check_model(model)
    models.require(model, "init", "the active-learning loop")
    if strategy.wrap_model is not None:
        model = strategy.wrap_model(model, options)
    store = RunStore(workdir)
    store.check_config(config)
    return RunSetup(config=config, dataset=dataset, model=model, strategy=strategy,
                    options=options, store=store,
                    oracle=RecordingOracle(oracle or DatasetOracle(dataset.y_train), store),
                    aux_loss=strategy.aux_loss(options) if strategy.aux_loss else None,
                    subset=effective_subset_size(config, pool),
                    capacity=labeled_capacity(config))


def init_variables(run: RunSetup, cycle: Optional[int] = None) -> Variables:
    """Fresh network variables (``cycle``: a cold start's own key)."""
    x0 = np.asarray(run.dataset.x_train[:1])
    return Variables(*run.model.init(rng.key(run.config.seed, "init", cycle), x0))


def resume(run: RunSetup, log: Callable[[str], None]) -> tuple[ALState, Variables, list]:
    """The state after the workdir's last finished cycle (a fresh one for a new run)."""
    config, store = run.config, run.store
    pool = int(run.dataset.x_train.shape[0])
    state = initial_state(config, pool, lambda idx: run.oracle(idx, cycle=-1))
    done = store.cycle_done()
    store.truncate_after(done)
    queries = [q for q in store.rows("queries") if q["cycle"] <= done]
    for q in queries:
        state = state.reveal(q["indices"], q["labels"])
    fresh = init_variables(run)
    variables = store.load_variables(fresh) if done >= 0 else fresh
    if done >= 0:
        log(f"resuming {store.workdir} after cycle {done} ({int(state.labeled.sum())} labels)")
    return state.replace(cycle=done + 1), variables, queries


def train_cycle(run: RunSetup, state: ALState, variables: Variables
                ) -> tuple[Variables, dict]:
    """Trains f_L on the labeled set and evaluates it: ``(variables, metrics row)``."""
    config, cycle = run.config, state.cycle
    labeled_idx = np.flatnonzero(state.labeled)
    t0 = time.perf_counter()
    start = variables
    if not config.train.warm_start and cycle > 0:
        start = init_variables(run, cycle)
    tstate = train_lib.create_train_state(run.model, start, config.train)
    tstate, train_loss = train_lib.fit(tstate, run.dataset.x_train[labeled_idx],
                                       state.labels[labeled_idx], config.train,
                                       key=rng.key(config.seed, "train", cycle),
                                       aux_loss=run.aux_loss)
    variables = tstate.variables
    seconds_train = time.perf_counter() - t0
    test_acc = train_lib.accuracy(run.model, variables, run.dataset.x_test,
                                  run.dataset.y_test, config.train.eval_batch_size)
    return variables, {"cycle": cycle, "num_labeled": int(labeled_idx.size),
                       "test_accuracy": test_acc, "train_loss": train_loss,
                       "seconds_train": seconds_train, "seconds_score": 0.0,
                       "seconds_select": 0.0}


def acquire(run: RunSetup, state: ALState, variables: Variables, row: dict
            ) -> tuple[ALState, dict]:
    """One acquisition step: candidates → strategy → oracle. Returns the state and query.

    ``row`` (the cycle's metrics) gains the seconds of scoring and selection and the
    strategy's logged scalars (``info_*``).
    """
    config, cycle = run.config, state.cycle
    labeled_idx = np.flatnonzero(state.labeled)
    cand = draw_candidates(state, config, run.subset)
    x_pool = run.dataset.x_train
    ctx = strategies.AcquisitionContext(
        model=run.model, params=variables.params, state=variables.state,
        x_labeled=x_pool[labeled_idx], y_labeled=state.labels[labeled_idx],
        x_candidates=x_pool[cand], num_classes=run.dataset.num_classes,
        query_size=config.query_size, key=rng.key(config.seed, "acquire", cycle),
        loss=config.train.loss,
        label_fn=_label_fn(run.oracle, cand, cycle) if config.sequential else None,
        labeled_capacity=run.capacity, options=run.options)
    t1 = time.perf_counter()
    selection = run.strategy(ctx)
    t2 = time.perf_counter()
    chosen = cand[_check_selection(selection, config, run.subset)]
    labels = run.oracle(chosen, cycle=cycle)
    if selection.revealed is not None and not np.array_equal(
            np.asarray(selection.revealed), labels):
        raise RuntimeError("the strategy's revealed labels disagree with the oracle")
    state = state.reveal(chosen, labels)
    row.update(seconds_score=t2 - t1, seconds_select=time.perf_counter() - t2,
               **{f"info_{k}": float(v) for k, v in dict(selection.info).items()})
    return state, {"cycle": cycle, "indices": chosen.tolist(), "labels": labels.tolist()}


def run_cycle(run: RunSetup, state: ALState, variables: Variables
              ) -> tuple[ALState, Variables, dict, Optional[dict]]:
    """One cycle of Algorithm 1: train, evaluate, and (but in the last cycle) acquire.

    Returns ``(state, variables, metrics row, query or None)``; nothing is recorded.
    """
    variables, row = train_cycle(run, state, variables)
    query = None
    if state.cycle < run.config.cycles - 1:
        state, query = acquire(run, state, variables, row)
    return state.replace(cycle=state.cycle + 1), variables, row, query


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
      oracle: label source (default: the dataset's own labels).
      log: progress sink, one line per cycle.
      stop_after_cycle: finish this cycle and return (tests of resumption).

    Returns:
      a :class:`RunResult`; the same rows are in ``workdir``.
    """
    run_ = setup(config, workdir, dataset=dataset, model=model, oracle=oracle)
    state, variables, queries = resume(run_, log)
    store = run_.store
    while state.cycle < run_.config.cycles:
        cycle = state.cycle
        state, variables, row, query = run_cycle(run_, state, variables)
        if query is not None:
            store.append("queries", query)
            queries.append(query)
        store.append("metrics", row)
        store.save_cycle(cycle, variables)
        log(_progress_line(row, run_.config))
        if workdir:
            _plot(store, run_.config)
        if stop_after_cycle is not None and cycle >= stop_after_cycle:
            break
    return RunResult(metrics=store.rows("metrics"), queries=queries, state=state)


def _label_fn(oracle: RecordingOracle, cand: np.ndarray, cycle: int):
    """``label_fn(j)``: the true label of candidate position ``j``, persisted at once."""

    def label_fn(j: int) -> int:
        return int(oracle(cand[[int(j)]], cycle=cycle)[0])

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
    return (f"[{config.strategy}] cycle {row['cycle'] + 1}/{config.cycles}  "
            f"labeled {row['num_labeled']:>6d}  test acc {100 * row['test_accuracy']:6.2f}%  "
            f"loss {row['train_loss']:.2e}  train {row['seconds_train']:.1f}s  "
            f"score {row['seconds_score']:.2f}s")


def _plot(store: RunStore, config: LoopConfig) -> None:
    rows = store.rows("metrics")
    curve = ([r["num_labeled"] for r in rows], [r["test_accuracy"] for r in rows])
    records.plot_learning_curves({config.strategy: curve}, store.path("learning_curve.png"),
                                 title=f"{config.dataset} / {config.model}")


def labeled_indices_from_records(workdir: str, config: LoopConfig, pool_size: int
                                 ) -> np.ndarray:
    """Rebuilds the labeled set of a workdir exactly: initial draw + every query row."""
    gen = rng.numpy_rng(rng.key(config.seed, "initial_set"))
    init = gen.choice(pool_size, config.initial_size, replace=False)
    queried = [i for q in records.read_jsonl(os.path.join(workdir, "queries.jsonl"))
               for i in q["indices"]]
    return np.sort(np.concatenate([init, np.asarray(queried, dtype=np.int64)]))


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
                   model: Optional[Model] = None) -> dict[str, RunResult]:
    """Runs the same setting once per strategy (``workdir/<strategy>/``) and compares.

    ``config.strategy_options`` are shared: each strategy gets the options it knows, and
    an option none of them knows is refused. Every config is validated before the first
    run starts. Writes
    ``workdir/learning_curves.png`` with one line per strategy and returns
    ``{strategy: RunResult}``.
    """

    if not names:
        raise ValueError("no strategy given")
    if len(set(names)) != len(names):
        dup = sorted({s for s in names if list(names).count(s) > 1})
        raise ValueError(f"strategy {dup[0]!r} is given twice; each strategy runs once")
    configs = {s: dataclasses.replace(config, strategy=s, strategy_options=_options_for(
        s, config.strategy_options, names)) for s in names}
    for c in configs.values():
        validate_config(c, model=model)
    if dataset is None:
        dataset = load_config_dataset(config)
    for c in configs.values():
        validate_config(c, int(dataset.x_train.shape[0]), model=model)
    results = {}
    for s, c in configs.items():
        sub = os.path.join(workdir, s) if workdir else None
        results[s] = run(c, sub, dataset=dataset, model=model, log=log)
    if workdir:
        curves = {s: ([m["num_labeled"] for m in r.metrics],
                      [m["test_accuracy"] for m in r.metrics]) for s, r in results.items()}
        name = model.name if model is not None else config.model
        records.plot_learning_curves(curves, os.path.join(workdir, "learning_curves.png"),
                                     title=f"{config.dataset} / {name}, seed {config.seed}")
    return results
