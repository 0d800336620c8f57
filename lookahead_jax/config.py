"""The loop's config: :class:`LoopConfig` (what a run computes and how it is launched),
its validation before any work (:func:`validate_config`) and the sizes that follow from it.

Not to be confused with :mod:`lookahead_jax.configs`, the config *files* (``get_config()``
returning an ``ml_collections.ConfigDict`` that :meth:`LoopConfig.from_dict` reads).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Optional

import ml_collections
import numpy as np

from lookahead_jax import data, models, stopping, strategies
from lookahead_jax import distributed as distributed_lib
from lookahead_jax import train as train_lib
from lookahead_jax.models import Model

__all__ = ["LoopConfig", "validate_config", "check_pool_size", "labeled_capacity",
           "effective_subset_size"]


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
        check_pool_size(config, pool_size, num_initial)
    return options


def check_pool_size(config: LoopConfig, pool_size: int,
                    num_initial: Optional[int] = None) -> None:
    """Refuses a run whose queries the pool of ``pool_size`` items cannot supply
    (``num_initial``: the size of the given labeled set, when the pool came with one)."""
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
