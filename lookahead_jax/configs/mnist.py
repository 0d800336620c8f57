"""MNIST, the paper's setting (Section 5): 100 initial labels, query 20 from a random
subset of 4000, squared loss, a one-group WideResNet of maximum width 640.

Builds MNIST offline from the original archives (see shared/data/mnist/README.md):

    python -m experiments.main --dataset=mnist --manual_dir=../shared/data/mnist \
        --strategy=random,mlmoc

The WideResNet is slow on CPU; `configs/mnist_mlp.py` is the 2-core variant.
"""

from lookahead_jax.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "mnist"
    c.model = "wide_resnet"
    c.model_kwargs = {"num_groups": 1, "blocks_per_group": 1, "widen_factor": 40}
    c.strategy = "random,mlmoc"
    c.cycles = 10
    c.initial_size = 100
    c.query_size = 20
    c.subset_size = 4000
    c.train.epochs = 50
    c.train.batch_size = 64
    c.train.learning_rate = 0.1
    return c
