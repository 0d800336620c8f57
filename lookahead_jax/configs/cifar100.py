"""CIFAR-100, the paper's setting: 10000 initial labels, query 1000 from a random subset
of 6000, squared loss, ResNet18 with the CIFAR stem.

    python -m experiments.main --dataset=cifar100 --download --strategy=random,mlmoc

Meant for a GPU.
"""

from lookahead_jax.configs import cifar10


def get_config():
    c = cifar10.get_config()
    c.dataset = "cifar100"
    c.initial_size = 10000
    return c
