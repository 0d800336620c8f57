"""Command-line entry point from the repository: ``python -m experiments.main [flags]``.

The same main as the installed ``lookahead-jax`` command (:mod:`lookahead_jax.cli`, whose
docstring lists the flags and rules). With no flags it runs the embedded default
(digits, a small MLP, random vs. MLMOC) on the CPU in about a minute.
"""

from absl import app

from lookahead_jax.cli import main, parse_flags

if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
