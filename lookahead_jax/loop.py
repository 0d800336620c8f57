"""The pool-based active-learning loop (the paper's Algorithm 1), resumable.

One cycle: train f_L on the labeled set (warm or cold start), evaluate on the test split,
draw a random candidate subset of the unlabeled pool, score it with the strategy, select
``query_size`` points, reveal their labels through the :class:`Oracle`, record. The last
cycle trains and evaluates only, so ``cycles`` cycles reveal ``(cycles - 1) ·
query_size`` labels.

State (:class:`ALState`) is an immutable pytree over the *fixed* training pool: a
labeled mask and the labels revealed so far, so shapes never change across cycles.
Everything needed to continue lives in the workdir (see :mod:`lookahead_jax.records`):
running the same config on the same workdir resumes after the last finished cycle and
reproduces the queried indices and accuracies of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import jax
import numpy as np
from flax import serialization, struct

from lookahead_jax import acquisition, models, records
from lookahead_jax import train as train_lib

PyTree = Any


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """An active-learning run (hashable; every field is JSON-serialisable).

    Attributes:
      dataset: a name from ``data.DATASETS`` (or an alias such as ``svhn``).
      model: a name from ``models.MODELS``.
      model_kwargs: the model's options as ``((name, value), ...)``.
      strategy: a registered strategy name (``acquisition.available_strategies()``).
      strategy_options: the strategy's options as ``((name, value), ...)``.
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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: _jsonable(v) for k, v in self.model_kwargs}
        d["strategy_options"] = {k: _jsonable(v) for k, v in self.strategy_options}
        return d

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
        for key in ("model_kwargs", "strategy_options"):
            if key in d and isinstance(d[key], Mapping):
                d[key] = tuple(sorted((k, _hashable(v)) for k, v in d[key].items()))
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


def validate_config(config: LoopConfig, pool_size: Optional[int] = None) -> None:
    """Raises ``ValueError`` naming the problem for any config that cannot run.

    Checks names (dataset, model, strategy), positivity of sizes, that the query fits in
    the subset and that the pool can supply every query; run before any training.
    """
    from lookahead_jax import data

    data.canonical_name(config.dataset)
    if config.model not in models.MODELS:
        raise ValueError(f"unknown model {config.model!r}; known models: "
                         f"{', '.join(sorted(models.MODELS))}")
    acquisition.get_strategy(config.strategy)
    if config.sequential and not acquisition.is_sequential(config.strategy):
        seq = [s for s in acquisition.available_strategies() if acquisition.is_sequential(s)]
        raise ValueError(f"strategy {config.strategy!r} has no sequential mode; sequential "
                         f"strategies: {', '.join(seq) or 'none registered'}")
    for name in ("cycles", "initial_size", "query_size", "subset_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
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
      key: the run's base PRNG key (folded with the cycle number where used).
      cycle: ``()`` the next cycle to run.
    """

    labeled: np.ndarray
    labels: np.ndarray
    key: jax.Array
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
    rng = np.random.default_rng([config.seed, 0x1A17])
    init = np.sort(rng.choice(pool_size, config.initial_size, replace=False))
    state = ALState(labeled=np.zeros(pool_size, bool),
                    labels=np.full(pool_size, -1, np.int32),
                    key=jax.random.key(config.seed), cycle=0)
    return state.reveal(init, np.asarray(oracle(init), np.int32))


def draw_candidates(state: ALState, config: LoopConfig, subset: int) -> np.ndarray:
    """Sorted pool indices of a seeded random subset of the unlabeled pool, ``(subset,)``."""
    rng = np.random.default_rng([config.seed, 0xC4D, state.cycle])
    unlabeled = np.flatnonzero(~state.labeled)
    return np.sort(rng.choice(unlabeled, subset, replace=False))


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

    def save_cycle(self, cycle: int, variables: dict) -> None:
        if not self.workdir:
            return
        records.atomic_write_bytes(self.path("checkpoint.msgpack"),
                                   serialization.to_bytes(variables))
        records.atomic_write_json(self.path("state.json"), {"cycle_done": cycle})

    def load_variables(self, template: dict) -> dict:
        with open(self.path("checkpoint.msgpack"), "rb") as fh:
            return serialization.from_bytes(template, fh.read())


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
    from lookahead_jax import data

    return data.load_dataset(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir, download=config.download,
                             max_train=config.max_train, max_test=config.max_test,
                             seed=config.seed)


def run(config: LoopConfig, workdir: Optional[str] = None, *, dataset=None,
        oracle: Optional[Oracle] = None, log: Callable[[str], None] = print,
        stop_after_cycle: Optional[int] = None) -> RunResult:
    """Runs (or resumes) an active-learning experiment.

    Args:
      config: the run; validated before any training.
      workdir: where records go; ``None`` keeps them in memory (no resume).
      dataset: a preloaded ``data.Dataset`` (else loaded from ``config``).
      oracle: label source (default: the dataset's own labels).
      log: progress sink, one line per cycle.
      stop_after_cycle: finish this cycle and return (tests of resumption).

    Returns:
      a :class:`RunResult`; the same rows are in ``workdir``.
    """
    from lookahead_jax import data

    validate_config(config)
    if dataset is None:
        dataset = load_config_dataset(config)
    else:
        data.validate_dataset(dataset)
    pool = int(dataset.x_train.shape[0])
    validate_config(config, pool)
    store = RunStore(workdir)
    store.check_config(config)
    oracle = RecordingOracle(oracle or DatasetOracle(dataset.y_train), store)

    model = models.create_model(config.model, dataset.num_classes, **dict(config.model_kwargs))
    wrap_model, custom_fit = acquisition.strategy_hooks(config.strategy)
    if wrap_model is not None:
        model = wrap_model(model)
    fit = custom_fit or train_lib.fit
    init_key = jax.random.fold_in(jax.random.key(config.seed), 0x1417)
    fresh = models.init_variables(model, init_key, dataset.input_shape)

    state = initial_state(config, pool, lambda idx: oracle(idx, cycle=-1))
    done = store.cycle_done()
    store.truncate_after(done)
    queries = [q for q in store.rows("queries") if q["cycle"] <= done]
    for q in queries:
        state = state.reveal(q["indices"], q["labels"])
    variables = store.load_variables(fresh) if done >= 0 else fresh
    state = state.replace(cycle=done + 1)
    if done >= 0:
        log(f"resuming {workdir} after cycle {done} ({int(state.labeled.sum())} labels)")

    subset = effective_subset_size(config, pool)
    capacity = labeled_capacity(config)
    strategy = acquisition.get_strategy(config.strategy)
    x_pool, x_test = dataset.x_train, dataset.x_test
    while state.cycle < config.cycles:
        cycle = state.cycle
        labeled_idx = np.flatnonzero(state.labeled)
        # --- train
        t0 = time.perf_counter()
        start = variables
        if not config.train.warm_start and cycle > 0:
            start = models.init_variables(model, jax.random.fold_in(init_key, cycle),
                                          dataset.input_shape)
        tstate = train_lib.create_train_state(model, start, config.train)
        tstate, train_loss = fit(tstate, x_pool[labeled_idx],
                                 state.labels[labeled_idx], config.train,
                                 seed=config.seed * 100_003 + cycle)
        variables = tstate.variables
        seconds_train = time.perf_counter() - t0
        # --- evaluate
        test_acc = train_lib.accuracy(model, variables, x_test, dataset.y_test,
                                      config.train.eval_batch_size)
        row = {"cycle": cycle, "num_labeled": int(labeled_idx.size),
               "test_accuracy": test_acc, "train_loss": train_loss,
               "seconds_train": seconds_train, "seconds_score": 0.0, "seconds_select": 0.0}
        # --- acquire
        if cycle < config.cycles - 1:
            cand = draw_candidates(state, config, subset)
            key = jax.random.fold_in(state.key, cycle)
            label_fn = _label_fn(oracle, cand, cycle) if config.sequential else None
            ctx = acquisition.AcquisitionContext(
                apply_fn=models.bind_eval(model, variables), params=variables["params"],
                variables=variables, model=model, x_labeled=x_pool[labeled_idx],
                y_labeled=state.labels[labeled_idx], x_candidates=x_pool[cand],
                num_classes=dataset.num_classes, query_size=config.query_size, key=key,
                loss=config.train.loss, label_fn=label_fn, labeled_capacity=capacity,
                options=dict(config.strategy_options))
            t1 = time.perf_counter()
            selection = strategy(ctx)
            t2 = time.perf_counter()
            picked = _check_selection(selection, config, subset)
            chosen = cand[picked]
            labels = oracle(chosen, cycle=cycle)
            if selection.revealed is not None and not np.array_equal(
                    np.asarray(selection.revealed), labels):
                raise RuntimeError("the strategy's revealed labels disagree with the oracle")
            state = state.reveal(chosen, labels)
            t3 = time.perf_counter()
            row.update(seconds_score=t2 - t1, seconds_select=t3 - t2,
                       **{f"info_{k}": float(v) for k, v in dict(selection.info).items()})
            query = {"cycle": cycle, "indices": chosen.tolist(), "labels": labels.tolist()}
            store.append("queries", query)
            queries.append(query)
        store.append("metrics", row)
        store.save_cycle(cycle, variables)
        log(_progress_line(row, config))
        state = state.replace(cycle=cycle + 1)
        if workdir:
            _plot(store, config)
        if stop_after_cycle is not None and cycle >= stop_after_cycle:
            break
    return RunResult(metrics=store.rows("metrics"), queries=queries, state=state)


def _label_fn(oracle: RecordingOracle, cand: np.ndarray, cycle: int):
    """``label_fn(j)``: the true label of candidate position ``j``, persisted at once."""

    def label_fn(j: int) -> int:
        return int(oracle(cand[[int(j)]], cycle=cycle)[0])

    return label_fn


def _check_selection(selection: acquisition.Selection, config: LoopConfig,
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
    rng = np.random.default_rng([config.seed, 0x1A17])
    init = rng.choice(pool_size, config.initial_size, replace=False)
    queried = [i for q in records.read_jsonl(os.path.join(workdir, "queries.jsonl"))
               for i in q["indices"]]
    return np.sort(np.concatenate([init, np.asarray(queried, dtype=np.int64)]))


def summary_table(curves: Mapping[str, Sequence[dict]]) -> str:
    """A text table of test accuracy per cycle, one column per run."""
    names = list(curves)
    n = max(len(v) for v in curves.values())
    head = f"{'cycle':>5} {'labeled':>8} " + " ".join(f"{s:>16}" for s in names)
    lines = [head, "-" * len(head)]
    for c in range(n):
        first = next(v[c] for v in curves.values() if len(v) > c)
        cells = [f"{100 * v[c]['test_accuracy']:15.2f}%" if len(v) > c else " " * 16
                 for v in curves.values()]
        lines.append(f"{c + 1:>5} {first['num_labeled']:>8} " + " ".join(cells))
    return "\n".join(lines)


def run_strategies(config: LoopConfig, strategies: Sequence[str], workdir: Optional[str],
                   *, log: Callable[[str], None] = print, dataset=None
                   ) -> dict[str, RunResult]:
    """Runs the same setting once per strategy (``workdir/<strategy>/``) and compares.

    Every config is validated before the first run starts. Writes
    ``workdir/learning_curves.png`` with one line per strategy and returns
    ``{strategy: RunResult}``.
    """

    configs = {s: dataclasses.replace(config, strategy=s) for s in strategies}
    if not configs:
        raise ValueError("no strategy given")
    for c in configs.values():
        validate_config(c)
    if dataset is None:
        dataset = load_config_dataset(config)
    for c in configs.values():
        validate_config(c, int(dataset.x_train.shape[0]))
    results = {}
    for s, c in configs.items():
        sub = os.path.join(workdir, s) if workdir else None
        results[s] = run(c, sub, dataset=dataset, log=log)
    if workdir:
        curves = {s: ([m["num_labeled"] for m in r.metrics], [m["test_accuracy"] for m in r.metrics])
                  for s, r in results.items()}
        records.plot_learning_curves(curves, os.path.join(workdir, "learning_curves.png"),
                                     title=f"{config.dataset} / {config.model}, seed {config.seed}")
    return results
