"""Runs one of the paper's figures as a multi-seed study.

    python -m experiments.figures --figure=fig2 --config=experiments/configs/mnist_mlp.py \
        --manual_dir=../shared/data/mnist --seeds=0,1,2 --root=runs/studies/fig2_mnist

Every arm × seed is an ordinary resumable run under ``--root``; rerunning the command
continues where it stopped. ``python -m experiments.report`` turns the studies into
``docs/RESULTS.md`` and PNG plots. ``--smoke`` runs a tiny digits version in seconds.
Logic lives in :mod:`experiments.studies`; the settings flags are the CLI's
(:mod:`lookahead_jax.cli`: ``--config``, ``--config.*`` and the short flags).
"""

import os
import shlex
import sys

from absl import app, flags, logging

from experiments import report, studies
from lookahead_jax import cli, loop

FLAGS = flags.FLAGS
flags.DEFINE_enum("figure", None, list(studies.FIGURES), "which figure")
flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
flags.DEFINE_string("root", None, "study folder (default runs/studies/<figure>_<dataset>)")
flags.DEFINE_string("arms", None, "comma-separated subset of the figure's arms")
flags.DEFINE_bool("smoke", False, "tiny digits setting, for tests")
flags.DEFINE_string("widths", None, "fig3b: comma-separated widths (default 128,256,512,1024)")
flags.DEFINE_string("reuse", None, "comma-separated study folders whose identical finished "
                    "runs are copied instead of run again")
flags.mark_flag_as_required("figure")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        cfg = cli.build_config().to_dict()
        cfg["strategy"] = "random"
        base = loop.LoopConfig.from_dict(cfg)
        if FLAGS.smoke:
            base = studies.smoke_config(seed=base.seed)
        seeds = [int(s) for s in FLAGS.seeds.split(",") if s.strip()]
        root = FLAGS.root or os.path.join("runs", "studies", f"{FLAGS.figure}_{base.dataset}")
        arms = [a.strip() for a in FLAGS.arms.split(",")] if FLAGS.arms else None
        command = " ".join(["python -m experiments.figures"] +
                           [shlex.quote(a) for a in sys.argv[1:]])
        widths = [int(w) for w in FLAGS.widths.split(",")] if FLAGS.widths else None
        reuse = [r.strip() for r in FLAGS.reuse.split(",")] if FLAGS.reuse else ()
        studies.run_study(FLAGS.figure, base, seeds, root, command=command, arms=arms,
                          widths=widths, reuse=reuse)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:  # a run diverged; finished runs stay in the study
        print(f"error: {e}\nfinished runs are kept in {os.path.abspath(root)}; "
              "`--arms` runs the other arms, and the same command resumes", file=sys.stderr)
        sys.exit(1)
    s = studies.load_study(root)
    png = report.plot_study(s, os.path.join(root, f"{FLAGS.figure}.png"))
    print(report.study_markdown(s, png))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
