"""One config per paper setting; ``get_config(name)`` loads ``configs/<name>.py``."""

import importlib

import ml_collections

NAMES = ("default", "digits", "mnist", "mnist_mlp", "svhn", "cifar10", "cifar100")


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config called ``name``, or the one for dataset ``name``.

    A dataset without a config of its own (e.g. ``fashion_mnist``) gets the default
    config with its ``dataset`` replaced.
    """
    from lookahead_jax import data

    if name in NAMES:
        return importlib.import_module(f"experiments.configs.{name}").get_config()
    try:
        dataset = data.canonical_name(name)
    except ValueError:
        raise ValueError(f"unknown dataset or config {name!r}; datasets: "
                         f"{', '.join(data.DATASETS)} (aliases: {', '.join(data.ALIASES)}); "
                         f"configs: {', '.join(NAMES)}") from None
    module = {"svhn_cropped": "svhn"}.get(dataset, dataset)
    if module in NAMES:
        return importlib.import_module(f"experiments.configs.{module}").get_config()
    cfg = importlib.import_module("experiments.configs.default").get_config()
    cfg.dataset = dataset
    return cfg
