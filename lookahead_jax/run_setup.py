"""Run assembly: :func:`setup` validates a run, loads its data, builds its model and
chooses its oracle, once, before any training or any question to the oracle.

:class:`RunSetup` holds everything fixed for the life of a run; the cycle
(:mod:`lookahead_jax.loop`) and resuming (:mod:`lookahead_jax.resume`) read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from lookahead_jax import data, models, rng, stopping, strategies
from lookahead_jax import train as train_lib
from lookahead_jax.config import (LoopConfig, check_pool_size, effective_subset_size,
                                  labeled_capacity, validate_config)
from lookahead_jax.models import Model, Variables
from lookahead_jax.oracles import DatasetOracle, FileOracle, Oracle, RecordingOracle
from lookahead_jax.state import initial_indices, starts_from_given
from lookahead_jax.workdir import fingerprint


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
    given: bool                    # the initial set is the labels that came with the pool
    subset: int
    capacity: int
    stop_set: Optional[np.ndarray]
    train: train_lib.TrainConfig   # config.train, batch size at most the capacity
    ledger: Optional[RecordingOracle] = None   # ``oracle`` recording into the workdir, set
    #                                            when the workdir is opened (resume.open_run)


def setup(config: LoopConfig, workdir: Optional[str] = None, *, dataset=None,
          model: Optional[Model] = None, oracle: Optional[Oracle] = None) -> RunSetup:
    """Validates everything, loads the data, builds the model and chooses the oracle.

    Nothing is trained, nothing is written and no label is asked for here: every problem
    a run could meet at its start is found now.
    """
    if model is not None:
        config = dataclasses.replace(config, model=model.name, model_kwargs=())
    options = validate_config(config, model=model)
    data.check_workdir(config.dataset, workdir)
    if dataset is None:
        dataset = load_config_dataset(config)
    else:
        data.validate_dataset(dataset)
    pool = int(dataset.x_train.shape[0])
    given = starts_from_given(config, dataset)
    # the pool's size is checked before the initial draw, which could not take its sample
    check_pool_size(config, pool, num_initial=int(np.sum(dataset.given)) if given else None)
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
                    oracle=_choose_oracle(config, dataset, workdir, oracle),
                    aux_loss=strategy.aux_loss(options) if strategy.aux_loss else None,
                    initial=initial, given=given,
                    subset=effective_subset_size(config, pool, initial.size),
                    capacity=capacity, stop_set=stop_set)


def _check_labels(dataset) -> None:
    """A pool whose every label is known and the same has nothing to classify."""
    known = dataset.y_train[dataset.y_train >= 0]
    if known.size == dataset.y_train.size and np.unique(known).size == 1:
        raise ValueError(f"every label of dataset {dataset.name!r} is {int(known[0])}: there "
                         "is nothing to classify")


def _choose_oracle(config: LoopConfig, dataset, workdir: Optional[str],
                   oracle: Optional[Oracle]) -> Oracle:
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


def init_variables(run: RunSetup, cycle: Optional[int] = None) -> Variables:
    """Fresh network variables (``cycle``: a cold start's own key)."""
    x0 = np.asarray(run.dataset.x_train[:1])
    return Variables(*run.model.init(rng.key(run.config.seed, "init", cycle), x0))
