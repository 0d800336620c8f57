"""MNIST with the paper's network family on 2 CPU cores: a one-group WideResNet of width 64
(widen factor 4), the paper's query scheme (100 initial labels, 20 per cycle) from a
1000-candidate subset.

Training was tuned on the random arm only, with seeds 100-102 (not used in any study):
batch 8, peak learning rate 0.2, no weight decay, warm starts, 100 epochs for the first
cycle and 20 for each later one (30 epochs of batch 32 left the network at 35% with 100
labels: 120 SGD steps do not fit the training set). Random labels reach 81.4 / 90.5 /
91.6% at 100 / 200 / 300 labels (mean of the three tuning seeds, full test split).

    python -m experiments.main --config=experiments/configs/mnist_wrn.py \
        --manual_dir=../shared/data/mnist --strategy=random,mlmoc
"""

from lookahead_jax.configs import mnist


def get_config():
    c = mnist.get_config()
    c.model_kwargs = {"num_groups": 1, "blocks_per_group": 1, "widen_factor": 4}
    c.cycles = 8
    c.subset_size = 1000
    c.train.epochs = 20
    c.train.first_cycle_epochs = 100
    c.train.batch_size = 8
    c.train.learning_rate = 0.2
    c.train.weight_decay = 0.0
    return c
