"""Alias of the embedded default (digits).

    python -m experiments.main --dataset=digits
"""

from lookahead_jax.configs.default import get_config  # noqa: F401
