"""lookahead-jax: look-ahead active learning with empirical neural tangent kernels.

Implements Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies
Feasible with Neural Tangent Kernels" (NeurIPS 2022) in pure JAX/Flax.

Modules (imported on first use, so ``import lookahead_jax`` stays light):
  * ``data``: datasets as normalised NHWC arrays (digits embedded; MNIST/SVHN/CIFAR via tfds).
  * ``models``: Flax MLP, CNN, WideResNet, ResNet18; ``bind_eval`` gives ``f(params, x)``.
  * ``train``: squared-loss SGD with momentum under a one-cycle schedule.
  * ``ntk``: the empirical-NTK engine (Jacobian, NTK-vector, structured) and kernel sets.
  * ``lookahead``: MLMOC / EMOC / EER look-ahead scores (Eq. 11–13), sequential mode.
  * ``acquisition``: the strategy registry and the myopic baselines.
  * ``loop``: the resumable active-learning loop (Algorithm 1) and the ``Oracle`` protocol.
  * ``records``: atomic workdir records and plots.
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("data", "models", "train", "ntk", "lookahead", "acquisition", "loop", "records")
_NAMES = {
    # data
    "load_dataset": "data", "Dataset": "data", "DATASETS": "data",
    # models
    "create_model": "models", "init_variables": "models", "bind_eval": "models",
    "BoundModel": "models",
    # training
    "TrainConfig": "train", "TrainState": "train", "create_train_state": "train",
    "fit": "train", "train_step": "train", "accuracy": "train",
    # NTK engine
    "empirical_ntk_fn": "ntk", "kernel_set": "ntk", "KernelSet": "ntk",
    "ntk_features": "ntk", "kernel_from_features": "ntk", "slice_features": "ntk",
    "infinite_mlp_kernels": "ntk",
    # look-ahead (Eq. 11-13) and sequential updates
    "build_system": "lookahead", "score_candidates": "lookahead", "add_labeled": "lookahead",
    "lookahead_select": "lookahead", "augmented_system_scores": "lookahead",
    # strategies
    "AcquisitionContext": "acquisition", "Selection": "acquisition",
    "register_strategy": "acquisition", "get_strategy": "acquisition",
    "available_strategies": "acquisition",
    # loop
    "LoopConfig": "loop", "Oracle": "loop", "DatasetOracle": "loop", "run": "loop",
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
