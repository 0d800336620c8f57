"""MNIST with the paper's query scheme (100 initial, query 20 of a 4000 subset) and a
784-1024-1024-10 MLP that trains in seconds on 2 CPU cores.

    python -m experiments.main --config=experiments/configs/mnist_mlp.py \
        --manual_dir=../shared/data/mnist \
        --strategy=random,mlmoc
"""

from lookahead_jax.configs import mnist


def get_config():
    c = mnist.get_config()
    c.model = "mlp"
    c.model_kwargs = {"widths": (1024, 1024)}
    c.train.epochs = 50
    c.train.batch_size = 32
    c.train.learning_rate = 0.05
    return c
