"""Command-line entry point: ``python -m experiments.main [--dataset=svhn] [flags]``.

Only parses flags; the work is ``lookahead_jax.loop.run_strategies``, the same function
tests and notebooks call. Settings come from ``experiments/configs/<dataset>.py`` (or
``--config=<name>``); any flag given overrides the config. With no flags it runs the
embedded default (digits, a small MLP, random vs. MLMOC) on the CPU in about a minute.
"""

import os
import sys

from absl import app, flags, logging

from experiments import configs
from lookahead_jax import loop

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, f"config name ({', '.join(configs.NAMES)}); "
                    "default: the --dataset's config, else 'default'")
flags.DEFINE_string("dataset", None, "digits, mnist, fashion_mnist, svhn (svhn_cropped), "
                    "cifar10, cifar100")
flags.DEFINE_string("strategy", None, "strategy name, or several separated by commas "
                    "(one run each, compared in one table and plot)")
flags.DEFINE_string("model", None, "mlp, cnn, wide_resnet, resnet18")
flags.DEFINE_integer("cycles", None, "train/evaluate rounds (a query follows all but the last)")
flags.DEFINE_integer("initial_size", None, "size of the random initial labeled set")
flags.DEFINE_integer("query_size", None, "labels queried per cycle")
flags.DEFINE_integer("subset_size", None, "random unlabeled candidates scored per cycle")
flags.DEFINE_integer("seed", None, "random seed")
flags.DEFINE_string("workdir", None, "output folder (default runs/<dataset>_<model>_seed<seed>); "
                    "an existing one is resumed")
flags.DEFINE_string("data_dir", None, "tfds data_dir (default $TFDS_DATA_DIR)")
flags.DEFINE_string("manual_dir", None, "folder with a dataset's original archives "
                    "(e.g. ../shared/data/mnist) for an offline tfds build")
flags.DEFINE_bool("download", None, "let tfds download the dataset (needs internet)")
flags.DEFINE_bool("sequential", None, "reveal labels one at a time inside a cycle "
                  "(look-ahead strategies)")
flags.DEFINE_integer("epochs", None, "training epochs per cycle")
flags.DEFINE_float("learning_rate", None, "peak one-cycle learning rate")
flags.DEFINE_integer("batch_size", None, "training batch size")
flags.DEFINE_enum("loss", None, ["mse", "ce"], "training loss")
flags.DEFINE_integer("max_train", None, "subsample the training pool (quick runs)")
flags.DEFINE_integer("max_test", None, "subsample the test split (quick runs)")

_TOP = ("dataset", "model", "cycles", "initial_size", "query_size", "subset_size", "seed",
        "data_dir", "manual_dir", "download", "sequential", "max_train", "max_test")
_TRAIN = ("epochs", "learning_rate", "batch_size", "loss")


def build_config():
    """The ConfigDict for these flags: the named config, then each given flag."""
    name = FLAGS.config or FLAGS.dataset or "default"
    cfg = configs.get_config(name)
    for f in _TOP:
        if getattr(FLAGS, f) is not None:
            setattr(cfg, f, getattr(FLAGS, f))
    for f in _TRAIN:
        if getattr(FLAGS, f) is not None:
            setattr(cfg.train, f, getattr(FLAGS, f))
    if FLAGS.strategy is not None:
        cfg.strategy = FLAGS.strategy
    return cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend chatter out of the table
    try:
        cfg = build_config().to_dict()
        strategies = [s.strip() for s in str(cfg.pop("strategy")).split(",") if s.strip()]
        if not strategies:
            raise ValueError("--strategy is empty")
        config = loop.LoopConfig.from_dict({**cfg, "strategy": strategies[0]})
        workdir = FLAGS.workdir or os.path.join(
            "runs", f"{config.dataset}_{config.model}_seed{config.seed}")
        results = loop.run_strategies(config, strategies, workdir)
    except (ValueError, ImportError) as e:  # bad input or missing extra: one clear line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # diverged training or non-finite scores
        print(f"error: {e}\nfinished cycles are kept in {os.path.abspath(workdir)}; the same "
              "command resumes from there (after changing a setting, use a new --workdir)",
              file=sys.stderr)
        sys.exit(1)
    print()
    print(loop.summary_table({s: r.metrics for s, r in results.items()}))
    print(f"\nrecords: {os.path.abspath(workdir)}")
    print(f"plot:    {os.path.abspath(os.path.join(workdir, 'learning_curves.png'))}")


if __name__ == "__main__":
    app.run(main)
