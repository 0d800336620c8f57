"""CIFAR-10, the paper's setting: 1000 initial labels, query 1000 from a random subset of
6000, squared loss, ResNet18 with the CIFAR stem.

    python -m experiments.main --dataset=cifar10 --download --strategy=random,mlmoc

Meant for a GPU.
"""

from lookahead_jax.configs import svhn


def get_config():
    c = svhn.get_config()
    c.dataset = "cifar10"
    c.model = "resnet18"
    c.model_kwargs = {}
    return c
