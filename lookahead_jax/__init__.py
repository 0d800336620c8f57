"""lookahead-jax: look-ahead active learning with empirical neural tangent kernels.

Implements Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies
Feasible with Neural Tangent Kernels" (NeurIPS 2022) in pure JAX, for any JAX model.

Modules (imported on first use, so ``import lookahead_jax`` stays light):
  * ``data``: datasets as normalised arrays (digits embedded; MNIST/SVHN/CIFAR via tfds).
  * ``models``: the :class:`~lookahead_jax.models.Model` interface, adapters (Flax linen
    and NNX, Equinox, plain functions) and the built-in networks.
  * ``train``: squared-loss SGD with momentum under a one-cycle schedule.
  * ``ntk``: the empirical-NTK engine (Jacobian, NTK-vector, structured), kernel sets,
    analytic infinite-width kernels.
  * ``lookahead``: the look-ahead algebra (Eq. 10–13) and the sequential rank-one update.
  * ``strategies``: the strategy registry and every strategy, one module per family.
  * ``loop``: the resumable active-learning loop (Algorithm 1): ``run``, ``run_strategies``,
    the cycle; re-exports ``LoopConfig`` and the ``Oracle`` protocol.
  * ``config``: ``LoopConfig`` and its validation.
  * ``state``: the active-learning state over the fixed pool and its seeded draws.
  * ``run_setup``: a run's assembly (data, model, strategy, oracle), validated once.
  * ``resume``: the workdir's commit points, pending cycles, resuming.
  * ``records``: atomic workdir records; ``plots``: the learning curves.
  * ``rng``: the one PRNG scheme (a root key per seed, ``fold_in`` per purpose and cycle).
  * ``oracles``: who answers queries (the dataset's labels, people through files) and the
    ledger that records every answer.
  * ``stopping``: stopping criteria, registered by name like strategies.
  * ``options``: typed options (strategies and stopping criteria); ``registry``: the
    name → record registry both use.
  * ``workdir``: the locked, tamper-evident run folder (ledgers, checkpoints, resume).
  * ``labeler``: the notebook labeler (ipywidgets) driving sequential MLMOC.
  * ``distributed``: joining a multi-process run through ``jax.distributed``.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("data", "models", "train", "ntk", "lookahead", "strategies", "loop", "config",
            "state", "run_setup", "resume", "records", "plots", "rng", "oracles", "stopping",
            "options", "registry", "workdir", "labeler", "distributed")
_NAMES = {
    # data
    "load_dataset": "data", "Dataset": "data", "DATASETS": "data",
    # models
    "Model": "models", "Variables": "models", "get_model": "models",
    "from_linen": "models", "from_nnx": "models", "from_function": "models",
    "from_equinox": "models",
    # training
    "TrainConfig": "train", "TrainState": "train", "create_train_state": "train",
    "fit": "train", "train_step": "train", "accuracy": "train",
    # NTK engine
    "empirical_ntk_fn": "ntk", "kernel_set": "ntk", "KernelSet": "ntk",
    "ntk_features": "ntk", "kernel_from_features": "ntk", "slice_features": "ntk",
    "infinite_mlp_kernels": "ntk", "kernel_cost": "ntk",
    # look-ahead (Eq. 11-13) and sequential updates
    "build_system": "lookahead", "score_candidates": "lookahead", "add_labeled": "lookahead",
    "augmented_system_scores": "lookahead",
    # strategies
    "AcquisitionContext": "strategies", "Selection": "strategies",
    "register_strategy": "strategies", "get_strategy": "strategies",
    "available_strategies": "strategies",
    # loop
    "LoopConfig": "config", "Oracle": "oracles", "DatasetOracle": "oracles", "run": "loop",
    "run_strategies": "loop",
}

__all__ = list(_MODULES) + sorted(_NAMES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
