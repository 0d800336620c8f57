"""The options shared by the strategies that solve the look-ahead kernel system.

The typed-options machinery itself (:class:`~lookahead_jax.options.Options`,
:class:`~lookahead_jax.options.OptionsError`, the range helpers) is
:mod:`lookahead_jax.options`, shared with the stopping criteria; it is re-exported here
so a strategy module imports its options from one place.
"""

from __future__ import annotations

import dataclasses

from lookahead_jax.options import (NoOptions, Options, OptionsError, non_negative,  # noqa: F401
                                   positive)

__all__ = ["NoOptions", "Options", "OptionsError", "RidgeOptions", "SystemOptions",
           "non_negative", "positive"]


@dataclasses.dataclass(frozen=True)
class SystemOptions(Options):
    """Options of every strategy that solves the look-ahead kernel system (Eq. 12).

    Attributes:
      u_floor: Schur complements u are clamped below at ``u_floor · κ`` (relative to the
        candidate's own kernel value): a candidate duplicating a labeled point has u = 0
        in exact arithmetic and may come out ≤ 0 in float32.
      chunk_size: candidates scored per vmapped chunk (memory: one chunk's E × k block).
    """

    u_floor: float = 1e-6
    chunk_size: int = 256

    def check(self):
        non_negative(self, "u_floor")
        positive(self, "chunk_size")


@dataclasses.dataclass(frozen=True)
class RidgeOptions(SystemOptions):
    """:class:`SystemOptions` plus the ridge of Θ(X, X).

    Attributes:
      jitter: relative ridge λ / mean diag Θ(X, X) added to Θ(X, X) and to every
        candidate's own diagonal (so each look-ahead is the exact kernel-ridge solution
        of the augmented system); 0 allowed.
    """

    jitter: float = 1e-5

    def check(self):
        super().check()
        non_negative(self, "jitter")
