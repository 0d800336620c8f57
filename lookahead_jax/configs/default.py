"""The embedded default: scikit-learn's 8×8 digits, a small MLP, random vs. MLMOC.

Needs no download, no TensorFlow and no GPU; about a minute on 2 CPU cores:

    python -m experiments.main --config=experiments/configs/default.py
    lookahead-jax                      # the installed console command, same job
"""

from lookahead_jax import loop, train


def get_config():
    c = loop.LoopConfig(
        dataset="digits", model="mlp", model_kwargs={"widths": (256, 256)}, cycles=6,
        initial_size=50, query_size=20, subset_size=500,
        train=train.TrainConfig(epochs=30, batch_size=32)).to_config_dict()
    c.strategy = "random,mlmoc"  # comma-separated: one run per strategy, compared
    return c
