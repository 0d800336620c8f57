"""The pool-based active-learning loop (the paper's Algorithm 1), resumable.

One cycle (:func:`run_cycle`): train f_L on the labeled set (warm or cold start),
evaluate it, check the stopping criteria, draw a random candidate subset of the
unlabeled pool, score it with the strategy, select ``query_size`` points, reveal their
labels through the oracle, record. The last cycle trains and evaluates only, so
``cycles`` cycles reveal ``(cycles - 1) · query_size`` labels. :func:`run` sets a run up
(:func:`setup`: everything validated before any training or any question to the oracle),
opens its workdir (:mod:`lookahead_jax.workdir`: locked, checked, repaired) and drives
the cycles.

Any :class:`~lookahead_jax.models.Model` runs here: pass ``model=`` (a Flax NNX or linen
module through its adapter, an Equinox model, a plain function), or name a built-in
network in ``LoopConfig.model``. The pool may be a benchmark or a user's own data whose
labels are partly unknown (:mod:`lookahead_jax.data`); people answer through files or a
notebook (:mod:`lookahead_jax.oracles`, :mod:`lookahead_jax.labeler`).

State (:class:`ALState`) is an immutable pytree over the *fixed* pool: a labeled mask and
the labels revealed so far, so shapes never change across cycles. Running the same config
on the same workdir resumes after the last finished cycle and reproduces the queried
indices and accuracies of an uninterrupted run. Randomness comes from one key tree
(:mod:`lookahead_jax.rng`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
from flax import struct
from tensorboardX import SummaryWriter
from tqdm.auto import tqdm

from lookahead_jax import data, models, records, rng, stopping, strategies
from lookahead_jax import distributed as distributed_lib
from lookahead_jax import train as train_lib
from lookahead_jax.models import Model, Variables
from lookahead_jax.oracles import DatasetOracle, FileOracle, LabelsNeeded, Oracle
from lookahead_jax.workdir import Workdir, WorkdirError, fingerprint

PyTree = Any

__all__ = ["LoopConfig", "Oracle", "DatasetOracle", "FileOracle", "LabelsNeeded", "run",
           "run_strategies", "setup", "run_cycle", "validate_config", "RunResult"]


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
      initial_set: ``"auto"``: the pool's given labels when it has any (a user's own
        data), else a seeded random draw of ``initial_size`` answered by the oracle;
        ``"random"``: always the random draw.
      oracle: who answers: ``"simulated"`` (labels known in advance), ``"files"``
        (people: request and answer CSV files in the workdir, see
        :mod:`lookahead_jax.oracles`) or ``"label_studio"`` (people, in a Label Studio
        project: :mod:`lookahead_jax.label_studio`).
      stop: stopping criteria, comma separated (:mod:`lookahead_jax.stopping`); the run
        ends when one fires. Empty: run all cycles.
      stop_options: ``{criterion: {option: value}}``.
      stop_set_size: items of the fixed random stop set some criteria read.
      train: the per-cycle training settings.
      distributed: join a multi-process run (several hosts, or processes) through
        ``jax.distributed`` before anything else; the NTK kernels and look-ahead scores
        are then split over every process's devices (``lookahead_jax.distributed``).
        Process 0 writes the workdir's records and network checkpoints; the others keep
        theirs in memory and, when a workdir is resumed, start from process 0's. A
        workdir resumes with any number of processes (one included); a multi-process run
        needs the simulated oracle.
      coordinator_address, num_processes, process_id: ``HOST:PORT`` of process 0, how
        many processes, this one's index; give all three, or none under SLURM / Open MPI
        (JAX detects them). Only with ``distributed``.
      join_timeout_s: the longest this process waits for the coordinator and the other
        processes to join (default 300 s); then it stops with one line. Only with
        ``distributed``.
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
    initial_set: str = "auto"
    oracle: str = "simulated"
    stop: str = ""
    stop_options: tuple = ()
    stop_set_size: int = 1000
    train: train_lib.TrainConfig = train_lib.TrainConfig(batch_size=32)   # the CLI's
    distributed: bool = False
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    join_timeout_s: Optional[float] = None

    # How a run is launched, not what it computes: left out of to_dict() at their
    # defaults (so records of earlier runs still match) and never recorded in config.json.
    LAUNCH_FIELDS = ("distributed", "coordinator_address", "num_processes", "process_id",
                     "join_timeout_s")

    def __post_init__(self):
        for key in ("model_kwargs", "strategy_options"):
            v = getattr(self, key)
            if isinstance(v, Mapping):
                object.__setattr__(self, key, tuple(sorted((k, _hashable(x))
                                                           for k, x in v.items())))
        if isinstance(self.stop_options, Mapping):
            object.__setattr__(self, "stop_options", tuple(sorted(
                (str(c), tuple(sorted((k, _hashable(x)) for k, x in dict(o).items())))
                for c, o in self.stop_options.items())))
        for name in ("dataset", "model", "strategy"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got "
                                 f"{getattr(self, name)!r}")
        for name, allowed in (("initial_set", ("auto", "random")),
                              ("oracle", ("simulated", "files", "label_studio"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.stop, str):
            raise ValueError(f"stop must be a comma-separated string, got {self.stop!r}")
        for name in ("cycles", "initial_size", "query_size", "subset_size", "seed",
                     "max_train", "max_test", "stop_set_size"):
            v = getattr(self, name)
            if v is None and name in ("max_train", "max_test"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if name == "seed" and v < 0:
                raise ValueError(f"seed must be a non-negative integer, got {v}")
            if name == "seed" and v >= 2**63:    # jax.random.key takes an int64
                raise ValueError(f"seed must be below 2**63 (a 64-bit signed integer), got {v}")
            if name != "seed" and v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        for name in ("sequential", "download"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.train, train_lib.TrainConfig):
            raise ValueError("train must be a train.TrainConfig")
        self._check_launch()

    def _check_launch(self):
        if not isinstance(self.distributed, (bool, np.bool_)):
            raise ValueError(f"distributed must be true or false, got {self.distributed!r}")
        given = [n for n in self.LAUNCH_FIELDS[1:] if getattr(self, n) is not None]
        if given and not self.distributed:
            raise ValueError(f"{', '.join(given)} set without distributed: set distributed "
                             "too (or drop them)")
        if self.distributed:
            try:
                distributed_lib.check_args(self.coordinator_address, self.num_processes,
                                           self.process_id)
            except ValueError as e:
                raise ValueError(f"distributed: {e}") from None
            t = self.join_timeout_s
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                                  or not 0 < t < float("inf")):
                raise ValueError(f"join_timeout_s must be a positive number of seconds, "
                                 f"got {t!r}")
            if self.oracle != "simulated":
                raise ValueError("a distributed run needs oracle 'simulated' (people answer "
                                 "in one workdir; the processes must stay in step)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: _jsonable(v) for k, v in self.model_kwargs}
        d["strategy_options"] = {k: _jsonable(v) for k, v in self.strategy_options}
        d["stop_options"] = {c: {k: _jsonable(v) for k, v in o} for c, o in self.stop_options}
        for name in self.LAUNCH_FIELDS:
            if d[name] == _DEFAULTS[name]:
                del d[name]
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
                    v = ml_collections.ConfigDict({k: (ml_collections.ConfigDict(x) if
                                                       isinstance(x, dict) else _hashable(x))
                                                   for k, x in v.items()})
                elif v is None:
                    inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
                    v = ml_collections.config_dict.placeholder(inner[0] if inner else str)
                setattr(out, f.name, v)
            return out

        return convert(self, {**self.to_dict(),
                              **{n: getattr(self, n) for n in self.LAUNCH_FIELDS}})

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


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LoopConfig)}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def labeled_capacity(config: LoopConfig, num_initial: Optional[int] = None) -> int:
    """The largest labeled-set size the run reaches: initial + (cycles − 1) · query."""
    n0 = config.initial_size if num_initial is None else num_initial
    return n0 + (config.cycles - 1) * config.query_size


def effective_subset_size(config: LoopConfig, pool_size: int,
                          num_initial: Optional[int] = None) -> int:
    """Candidates scored per cycle: ``subset_size``, capped by the pool's last acquisition."""
    n0 = config.initial_size if num_initial is None else num_initial
    last_unlabeled = pool_size - n0 - max(0, config.cycles - 2) * config.query_size
    return min(config.subset_size, last_unlabeled)


def validate_config(config: LoopConfig, pool_size: Optional[int] = None, *,
                    model: Optional[Model] = None,
                    num_initial: Optional[int] = None) -> strategies.Options:
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
    criteria = stopping.parse(config.stop, {c: dict(o) for c, o in config.stop_options})
    if any(c.phase == "selection" for c, _ in criteria) and \
            config.strategy not in stopping.LOOKAHEAD_STRATEGIES:
        raise ValueError(f"stopping criterion 'lookahead' needs a look-ahead strategy "
                         f"({', '.join(stopping.LOOKAHEAD_STRATEGIES)}), not "
                         f"{config.strategy!r}")
    if config.query_size > config.subset_size:
        raise ValueError(f"query_size ({config.query_size}) is larger than subset_size "
                         f"({config.subset_size}): cannot select more points than are scored")
    if config.max_train is not None and not config.dataset.startswith(data.SOURCE_PREFIXES) \
            and config.max_train < labeled_capacity(config):
        raise ValueError(f"max_train ({config.max_train}) keeps fewer pool examples than the "
                         f"run labels: initial_size + (cycles - 1) * query_size = "
                         f"{labeled_capacity(config)}; raise --max_train or lower "
                         "--initial_size, --cycles or --query_size")
    if pool_size is not None:
        n0 = config.initial_size if num_initial is None else num_initial
        need = labeled_capacity(config, n0)
        what = "initial_size" if num_initial is None else "the given labels"
        if need > pool_size:
            raise ValueError(
                f"{what} + (cycles - 1) * query_size = {n0} + ({config.cycles} - 1) * "
                f"{config.query_size} = {need} exceeds the pool of {pool_size} examples")
        if config.cycles > 1 and \
                effective_subset_size(config, pool_size, n0) < config.query_size:
            raise ValueError("the pool cannot supply a candidate subset as large as the query")
    return options


# ----------------------------------------------------------------------------- oracle


# ----------------------------------------------------------------------------- oracle


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

    def reveal(self, pool_indices, labels) -> "ALState":
        pool_indices = np.asarray(pool_indices, dtype=np.int64)
        if np.any(self.labeled[pool_indices]):
            raise ValueError("a queried point is already labeled")
        return self.replace(labeled=_set(self.labeled, pool_indices, True),
                            labels=_set(self.labels, pool_indices, labels))


def _set(a: np.ndarray, idx, values) -> np.ndarray:
    out = a.copy()
    out[idx] = values
    return out


def initial_indices(config: LoopConfig, dataset) -> np.ndarray:
    """The initial labeled set: the pool's given labels, or a seeded random draw."""
    pool = int(dataset.x_train.shape[0])
    if config.initial_set == "auto" and dataset.given is not None and np.any(dataset.given):
        return np.flatnonzero(dataset.given)
    gen = rng.numpy_rng(rng.key(config.seed, "initial_set"))
    return np.sort(gen.choice(pool, config.initial_size, replace=False))


def draw_candidates(state: ALState, config: LoopConfig, subset: int) -> np.ndarray:
    """Sorted pool indices of a seeded random subset of the unlabeled pool, ``(subset,)``."""
    gen = rng.numpy_rng(rng.key(config.seed, "candidates", state.cycle))
    unlabeled = np.flatnonzero(~state.labeled)
    return np.sort(gen.choice(unlabeled, subset, replace=False))


# ----------------------------------------------------------------------------- setup


class RunResult(struct.PyTreeNode):
    """What :func:`run` returns: the metric rows, the queries and the final state."""

    metrics: list = struct.field(pytree_node=False)
    queries: list = struct.field(pytree_node=False)
    state: ALState
    stopped: Optional[dict] = struct.field(pytree_node=False, default=None)


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
    criteria: tuple
    oracle: Oracle
    aux_loss: Optional[Callable]
    initial: np.ndarray
    subset: int
    capacity: int
    stop_set: Optional[np.ndarray]
    train: train_lib.TrainConfig   # config.train, batch size at most the capacity


def setup(config: LoopConfig, workdir: Optional[str] = None, *, dataset=None,
          model: Optional[Model] = None, oracle: Optional[Oracle] = None) -> RunSetup:
    """Validates everything, loads the data, builds the model and chooses the oracle.

    Nothing is trained, nothing is written and no label is asked for here: every problem
    a run could meet at its start is found now.
    """
    if model is not None:
        config = dataclasses.replace(config, model=model.name, model_kwargs=())
    validate_config(config, model=model)
    data.check_workdir(config.dataset, workdir)
    if dataset is None:
        dataset = load_config_dataset(config)
    else:
        data.validate_dataset(dataset)
    pool = int(dataset.x_train.shape[0])
    given = config.initial_set == "auto" and dataset.given is not None and dataset.given.any()
    options = validate_config(config, pool, model=model,
                              num_initial=int(np.sum(dataset.given)) if given else None)
    initial = initial_indices(config, dataset)
    _check_labels(dataset)
    strategy = strategies.get(config.strategy)
    if model is None:
        model = models.get_model(config.model, dataset.num_classes, **dict(config.model_kwargs))
    strategy.check_model(model)
    models.require(model, "init", "the active-learning loop")
    if strategy.wrap_model is not None:
        model = strategy.wrap_model(model, options)
    models.check_outputs(model, dataset.num_classes, dataset.x_train)
    criteria = stopping.parse(config.stop, {c: dict(o) for c, o in config.stop_options})
    stop_set = None
    if any(c.needs_stop_set for c, _ in criteria):
        gen = rng.numpy_rng(rng.key(config.seed, "stop"))
        stop_set = np.sort(gen.choice(pool, min(config.stop_set_size, pool), replace=False))
    capacity = labeled_capacity(config, initial.size)
    # A batch larger than every labeled set this run will have is one padded batch per
    # epoch; the capacity gives exactly the same steps without the padding's cost.
    tcfg = dataclasses.replace(config.train, batch_size=min(config.train.batch_size, capacity))
    return RunSetup(config=config, dataset=dataset, model=model, strategy=strategy,
                    options=options, criteria=criteria, train=tcfg,
                    oracle=_choose_oracle(config, dataset, workdir, oracle, initial),
                    aux_loss=strategy.aux_loss(options) if strategy.aux_loss else None,
                    initial=initial, subset=effective_subset_size(config, pool, initial.size),
                    capacity=capacity, stop_set=stop_set)


def _check_labels(dataset) -> None:
    """A pool whose every label is known and the same has nothing to classify."""
    known = dataset.y_train[dataset.y_train >= 0]
    if known.size == dataset.y_train.size and np.unique(known).size == 1:
        raise ValueError(f"every label of dataset {dataset.name!r} is {int(known[0])}: there "
                         "is nothing to classify")


def _choose_oracle(config: LoopConfig, dataset, workdir: Optional[str],
                   oracle: Optional[Oracle], initial: np.ndarray) -> Oracle:
    if oracle is not None:
        return oracle
    if config.oracle == "files":
        if workdir is None:
            raise ValueError("oracle 'files' needs a workdir (its requests and answers are "
                             "files there)")
        return FileOracle(workdir, dataset.items if dataset.items is not None else
                          [dataset.item(i) for i in range(len(dataset.x_train))],
                          dataset.num_classes, dataset.class_names)
    if config.oracle == "label_studio":     # people, in a Label Studio project
        from lookahead_jax import label_studio
        return label_studio.from_run(config, dataset, workdir)
    unknown = dataset.y_train < 0
    if dataset.given is not None:
        unknown &= ~dataset.given
    if np.any(unknown):
        raise ValueError(f"{int(unknown.sum())} of the pool's {unknown.size} items have unknown "
                         "labels and the simulated oracle cannot answer for them: use "
                         "--oracle=files (people label CSV files between runs), the notebook "
                         "labeler (lookahead_jax.labeler), or pass an oracle to loop.run; "
                         "for a simulation give complete labels (y_true)")
    return DatasetOracle(dataset.y_train)


def pool_info(dataset) -> dict:
    """What ``dataset.json`` records of the pool."""
    return {"name": dataset.name, "pool": int(dataset.x_train.shape[0]),
            "input_shape": list(dataset.input_shape), "num_classes": int(dataset.num_classes),
            "class_names": list(dataset.class_names) if dataset.class_names else None,
            "fingerprint": fingerprint(dataset.x_train)}


# ----------------------------------------------------------------------------- one cycle


def init_variables(run: RunSetup, cycle: Optional[int] = None) -> Variables:
    """Fresh network variables (``cycle``: a cold start's own key)."""
    x0 = np.asarray(run.dataset.x_train[:1])
    return Variables(*run.model.init(rng.key(run.config.seed, "init", cycle), x0))


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


# ----------------------------------------------------------------------------- the run


def resume(run: RunSetup, wd: Workdir, oracle: RecordingOracle, log: Callable[[str], None],
           old_cycles: Optional[int]) -> tuple[ALState, Variables, list, dict]:
    """The state after the workdir's last finished cycle (a fresh one for a new run),
    with the queries and metrics cross-checked against the label ledger."""
    config, ds = run.config, run.dataset
    pool = int(ds.x_train.shape[0])
    state = ALState(labeled=np.zeros(pool, bool), labels=np.full(pool, -1, np.int32))
    check_initial_set(wd, run.initial)
    if ds.given is not None and config.initial_set == "auto" and np.any(ds.given):
        oracle.record_given(run.initial, ds.y_train[run.initial])
        labels0 = ds.y_train[run.initial]
    else:
        labels0 = oracle(run.initial, cycle=-1, tag="initial")
    state = state.reveal(run.initial, labels0)
    done = wd.cycle_done()
    queries = wd.rows("queries")
    check_queries(queries, oracle.known, pool, ds.num_classes, done, wd)
    for q in queries:
        state = state.reveal(q["indices"], q["labels"])
    fresh = init_variables(run)
    variables = fresh
    if done >= 0:
        variables = Variables(*wd.load_variables(done, fresh))
        log(f"resuming {wd.path} after cycle {done + 1} ({int(state.labeled.sum())} labels)")
    for note in wd.notes:
        log(f"repaired {note}")
    memory = records.read_json(wd.file("stopping.json")) if wd.persistent and \
        os.path.exists(wd.file("stopping.json")) else {}
    return state.replace(cycle=done + 1), variables, queries, memory


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


def _recorded(config: LoopConfig) -> dict:
    """What ``config.json`` holds: the config without how the run is launched."""
    return {k: v for k, v in config.to_dict().items() if k not in LoopConfig.LAUNCH_FIELDS}


def _open(run: RunSetup, wd: Workdir, log: Callable[[str], None]) -> tuple:
    """Checks the workdir and resumes from it: ``(oracle, old_cycles, state, variables,
    queries, memory, stopped, trained)`` (a new run: its start)."""
    old_cycles = wd.check_config(_recorded(run.config))
    wd.check_pool(pool_info(run.dataset))
    wd.recover()
    rec = RecordingOracle(run.oracle, wd, run.dataset.num_classes)
    changed = getattr(run.oracle, "changed_answers", None)
    for note in list(run.dataset.notes) + (changed(rec.known) if changed else []):
        log(note)
    if run.train.batch_size < run.config.train.batch_size:
        log(f"[{run.config.strategy}] train.batch_size {run.config.train.batch_size} is "
            f"more than the most labels this run will have: batches of "
            f"{run.train.batch_size} (the same steps, without the padding)")
    state, variables, queries, memory = resume(run, wd, rec, log, old_cycles)
    return (rec, old_cycles, state, variables, queries, memory, wd.stopped(),
            _pending(run, wd, state, variables))


def _open_together(run: RunSetup, wd: Workdir, log: Callable[[str], None]) -> tuple:
    """:func:`_open` in a multi-process run: every process resumes from process 0's records.

    Process 0 holds the workdir (the others' records are in memory, empty). It sends
    the finished cycles, queries, metric rows, stopping memory and the network of its
    last finished cycle; the others rebuild the same state from them. A workdir process
    0 refuses is refused on every process at once, each saying so in one line (not in a
    collective that times out later).
    """
    try:
        opened, failed = _open(run, wd, log), None
    except Exception as e:  # noqa: BLE001  (re-raised below)
        opened, failed = None, e
    shared = {}
    if jax.process_index() == 0 and failed is not None:
        shared = {"error": str(failed).splitlines()[0] if str(failed) else
                  type(failed).__name__, "refused": isinstance(failed, ValueError)}
    elif jax.process_index() == 0:
        _, old_cycles, state, _, queries, memory, stopped, _ = opened
        shared = json.loads(records.dumps(dict(
            done=state.cycle - 1, old_cycles=old_cycles, queries=queries,
            metrics=wd.rows("metrics"), memory=memory, stopped=stopped)))
    shared = distributed_lib.broadcast_json(shared)
    if failed is not None:
        raise failed
    if "error" in shared:
        kind = WorkdirError if shared["refused"] else RuntimeError
        raise kind(f"process 0 refused the workdir: {shared['error']}")
    rec, _, state, variables, queries, memory, stopped, trained = opened
    if shared["done"] >= 0:              # process 0's network of its last finished cycle
        variables = Variables(*distributed_lib.broadcast_from_first(tuple(variables)))
    if jax.process_index() != 0:
        for q in shared["queries"]:
            state = state.reveal(q["indices"], q["labels"])
        for kind in ("queries", "metrics"):
            for row in shared[kind]:
                wd.append(kind, row)
        state = state.replace(cycle=shared["done"] + 1)
        queries, memory, stopped = list(shared["queries"]), shared["memory"], \
            shared["stopped"]
    return (rec, shared["old_cycles"], state, variables, queries, memory, stopped, trained)


def _commit(wd: Workdir, cycle: int, variables: Variables, row: dict, query, stopped,
            memory: dict, writer) -> None:
    """Records a finished cycle; ``state.json`` is written last (the commit point)."""
    if query is not None:
        wd.append("queries", query)
    wd.append("metrics", row)
    wd.save_variables(cycle, variables)      # a multi-process run: process 0 alone
    if wd.persistent and memory:
        records.atomic_write_json(wd.file("stopping.json"), memory)
    wd.commit(cycle, stopped)
    wd.clear_pending()
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "cycle":
                writer.add_scalar(k, v, global_step=row["num_labeled"])
        writer.flush()


def _save_pending(wd: Workdir, cycle: int, variables: Variables, row: dict) -> None:
    """A trained cycle waiting for people: kept so the rerun does not train again."""
    wd.save_variables(cycle, variables)
    wd.save_pending({"cycle": cycle, "row": row})


def _pending(run: RunSetup, wd: Workdir, state: ALState, variables: Variables):
    """``(variables, row)`` of the cycle that waited for labels, if it is the next one."""
    pending = wd.pending()
    if pending is None or pending.get("cycle") != state.cycle:
        wd.clear_pending()
        return None
    return Variables(*wd.load_variables(state.cycle, variables)), dict(pending["row"])


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
    records.plot_learning_curves({config.strategy: curve}, wd.file("learning_curve.png"),
                                 title=f"{config.dataset} / {config.model}")


def labeled_indices_from_records(workdir: str, config: LoopConfig, dataset) -> np.ndarray:
    """Rebuilds the labeled set of a workdir exactly: initial set + every query row."""
    init = initial_indices(config, dataset)
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
    data.check_workdir(config.dataset, workdir)
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
        records.plot_learning_curves(curves, os.path.join(workdir, "learning_curves.png"),
                                     title=f"{config.dataset} / {name}, seed {config.seed}")
    return results
