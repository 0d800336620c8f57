"""The embedded default: scikit-learn's 8×8 digits, a small MLP, random vs. MLMOC.

Needs no download, no TensorFlow and no GPU; about a minute on 2 CPU cores:

    python -m experiments.main
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = "digits"
    c.model = "mlp"
    c.model_kwargs = {"widths": (256, 256)}
    c.strategy = "random,mlmoc"  # comma-separated: one run per strategy
    c.strategy_options = {}
    c.sequential = False
    c.cycles = 6
    c.initial_size = 50
    c.query_size = 20
    c.subset_size = 500
    c.seed = 0
    c.data_dir = None
    c.manual_dir = None
    c.download = False
    c.max_train = None
    c.max_test = None
    c.train = ml_collections.ConfigDict(dict(
        epochs=30, batch_size=32, learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
        loss="mse", warm_start=True, pct_start=0.3, eval_batch_size=1000))
    return c
