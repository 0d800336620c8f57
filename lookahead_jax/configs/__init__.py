"""Config files, one per setting, Flax-examples style: ``get_config()`` returns an
``ml_collections.ConfigDict`` built from :class:`~lookahead_jax.loop.LoopConfig` (whose
dataclass is the one list of fields), and each file's docstring holds the command that
runs it. In the repository the same files are at ``experiments/configs/`` (a link), so
``--config=experiments/configs/mnist.py`` works there; installed, :func:`path` finds them.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

DIR = os.path.dirname(os.path.abspath(__file__))
PRESETS = ("default", "digits", "mnist", "mnist_mlp", "mnist_wrn", "svhn", "cifar10",
           "cifar100")
_FOR_DATASET = {"svhn_cropped": "svhn"}


def path(name: str) -> str:
    """The file of preset ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; configs: {', '.join(PRESETS)}")
    return os.path.join(DIR, f"{name}.py")


def for_dataset(dataset: str) -> Optional[str]:
    """The preset named for a canonical dataset name, if it has one (the paper's setting)."""
    name = _FOR_DATASET.get(dataset, dataset)
    return name if name in PRESETS and name != "default" else None


def load(name: str):
    """``get_config()`` of preset ``name``."""
    path(name)
    return importlib.import_module(f"{__name__}.{name}").get_config()
