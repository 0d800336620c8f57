"""SVHN (cropped digits), the paper's setting: 1000 initial labels, query 1000 from a
random subset of 6000, squared loss, a two-group WideResNet of maximum width 640.

Needs the tfds `svhn_cropped` dataset (downloads ~1.5 GB on a machine with internet):

    python -m experiments.main --dataset=svhn --download --strategy=random,mlmoc

Meant for a GPU; on CPU each cycle takes hours.
"""

from lookahead_jax.configs import default


def get_config():
    c = default.get_config()
    c.dataset = "svhn_cropped"
    c.model = "wide_resnet"
    c.model_kwargs = {"num_groups": 2, "blocks_per_group": 1, "widen_factor": 20}
    c.strategy = "random,mlmoc"
    c.cycles = 10
    c.initial_size = 1000
    c.query_size = 1000
    c.subset_size = 6000
    c.train.epochs = 50
    c.train.batch_size = 128
    c.train.learning_rate = 0.1
    return c
