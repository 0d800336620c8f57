"""Command-line entry point from the repository: ``python -m experiments.main [flags]``.

The same main as the installed ``lookahead-jax`` command (:mod:`lookahead_jax.cli`, whose
docstring lists the flags and rules). With no flags it runs the embedded default
(digits, a small MLP, random vs. MLMOC) on the CPU in about a minute.
"""

from lookahead_jax.cli import run

if __name__ == "__main__":
    run()
