"""The matmul precision policy: one place that says how exactly every contraction runs.

On a TPU a float32 matmul at JAX's default precision is one bfloat16 pass (8-bit
mantissa); on A100/H100/H200-class GPUs the default lets XLA use TF32 (10-bit mantissa)
for float32 matmuls and convolutions. CPUs compute float32 exactly at every setting, so
CPU tests cannot see the difference. The look-ahead algebra subtracts nearly equal
numbers (the Schur complements u_j = κ_j + λ − ‖W_U[:, j]‖², paper Eq. 12) and the
kernels are Grams of long vectors, so this library never leaves the choice to the
device: every ``dot_general`` and convolution it emits carries an explicit
``jax.lax.Precision`` taken from the policy (tests/test_precision.py lowers the jitted
functions and checks each one).

Three parts, one field each of :class:`PrecisionPolicy`:

* ``algebra``: :mod:`lookahead_jax.lookahead` (the W products Lc⁻¹Θ, Θ(x', X) K⁻¹ Θ(X, x'),
  the look-ahead outputs, the rank-one updates of the sequential mode). Cholesky and the
  triangular solves take no precision argument in JAX; on CPU/GPU they are LAPACK /
  cuSOLVER / cuBLAS calls in full float32, on TPU XLA expands them with HIGHEST dots.
* ``kernel``: every contraction of the NTK engine (:mod:`lookahead_jax.ntk.empirical`, the
  Jacobian-row assembly and the structured Grams of :mod:`lookahead_jax.ntk.structured`).
* ``forward``: the network's own forward and backward passes inside the NTK (the user's
  ``f``, traced under ``jax.default_matmul_precision``).

Defaults (all ``"highest"``) come from the emulation benchmark
(benchmarks/precision_emulation.py, README "Precision, memory and devices"): rounding the
operands of the algebra's matmuls to bfloat16 kept only 6 of float64's top-20 picks on a
small WRN at L = 100 (score error 11%), TF32 19 of 20, and at L = 1,000 the rounded
Cholesky fails outright (TF32 and bfloat16, jitter 0 or 1e-5); rounding the kernel Grams never moved the top
20 but left kernels 1e-4 (TF32) to 1e-3 (bfloat16) off, outside the float32 twins' 1e-5,
and the network's own passes were not emulated, so the kernel and forward stay HIGHEST
too. ``"fast_kernel"`` (kernel and forward at the device's default) is the measured-safe
faster choice for MLP-like kernels.

Choosing: per strategy, the look-ahead strategies' option ``precision`` (a preset name or
``"algebra=high,kernel=default"``); for the whole library, :func:`set_policy`; for a block
of code, ``with use(policy): ...``. Functions read the policy when they are called (and
pass it to ``jax.jit`` as a static argument), so a change never reuses code compiled for
another precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional, Union

import jax

Precision = jax.lax.Precision

LEVELS = {"default": Precision.DEFAULT, "high": Precision.HIGH, "highest": Precision.HIGHEST}
PARTS = ("algebra", "kernel", "forward")


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """Matmul precision of each part of the library (module docstring).

    Attributes (each ``"highest"``, ``"high"`` or ``"default"``; ``jax.lax.Precision``
    names: HIGHEST is full float32, HIGH three bfloat16 passes on TPU / TF32-free on GPU
    where supported, DEFAULT the device's fastest, one bfloat16 pass or TF32):
      algebra: the look-ahead algebra (:mod:`lookahead_jax.lookahead`).
      kernel: the NTK engine's contractions.
      forward: the network's passes inside the NTK.
    """

    algebra: str = "highest"
    kernel: str = "highest"
    forward: str = "highest"

    def __post_init__(self):
        for part in PARTS:
            v = getattr(self, part)
            if isinstance(v, Precision):
                object.__setattr__(self, part, v.name.lower())
            elif str(v).lower() not in LEVELS:
                raise ValueError(f"precision {part}={v!r} is not one of "
                                 f"{sorted(LEVELS)}")
            else:
                object.__setattr__(self, part, str(v).lower())

    def of(self, part: str) -> Precision:
        """The ``jax.lax.Precision`` of ``part`` (one of :data:`PARTS`)."""
        return LEVELS[getattr(self, part)]


PRESETS = {
    "highest": PrecisionPolicy(),
    # the kernel at the device's fastest, the algebra exact (emulation: rounded kernel
    # Grams never moved the top-20 picks, MLP or WRN; the forward pass was not emulated)
    "fast_kernel": PrecisionPolicy(kernel="default", forward="default"),
    "default": PrecisionPolicy("default", "default", "default"),
}

_POLICY = PRESETS["highest"]


def parse(spec: Union[str, PrecisionPolicy, None]) -> PrecisionPolicy:
    """A policy from a preset name (:data:`PRESETS`), ``"algebra=high,kernel=default"``
    (unnamed parts: ``"highest"``), a :class:`PrecisionPolicy`, or ``None`` (the current
    policy)."""
    if spec is None:
        return _POLICY
    if isinstance(spec, PrecisionPolicy):
        return spec
    s = str(spec).strip().lower()
    if s in PRESETS:
        return PRESETS[s]
    parts = {}
    for item in s.split(","):
        name, eq, level = item.partition("=")
        if not eq or name.strip() not in PARTS:
            raise ValueError(f"precision {spec!r}: expected a preset ({', '.join(PRESETS)}) "
                             f"or 'part=level,...' with parts {PARTS} and levels "
                             f"{tuple(LEVELS)}")
        parts[name.strip()] = level.strip()
    return PrecisionPolicy(**parts)


def policy() -> PrecisionPolicy:
    """The library-wide policy now in force."""
    return _POLICY


def set_policy(spec: Union[str, PrecisionPolicy, None]) -> PrecisionPolicy:
    """Sets the library-wide policy (``None``: back to ``"highest"``); returns the old one."""
    global _POLICY
    old = _POLICY
    _POLICY = PRESETS["highest"] if spec is None else parse(spec)
    return old


@contextlib.contextmanager
def use(spec: Union[str, PrecisionPolicy]) -> Iterator[PrecisionPolicy]:
    """``with use("fast_kernel"): ...`` runs a block under another policy."""
    old = set_policy(spec)
    try:
        yield _POLICY
    finally:
        set_policy(old)


def algebra() -> Precision:
    """Precision of the look-ahead algebra's matmuls (for modules with their own matmuls)."""
    return _POLICY.of("algebra")


def kernel() -> Precision:
    """Precision of the NTK contractions."""
    return _POLICY.of("kernel")


def forward() -> Precision:
    """Precision of the network's passes inside the NTK."""
    return _POLICY.of("forward")


def resolve(precision: Union[Precision, PrecisionPolicy, str, None], part: str) -> Precision:
    """``precision`` as given to a library function, as one ``jax.lax.Precision``.

    ``None``: the current policy's ``part``; a ``jax.lax.Precision``: itself; a policy or a
    preset/spec string: its ``part``.
    """
    if isinstance(precision, Precision):
        return precision
    return parse(precision).of(part)


def matmul_context(level: Optional[Precision]):
    """``jax.default_matmul_precision`` for ``level`` (for code that is not ours: the
    network's forward pass)."""
    return jax.default_matmul_precision(
        {Precision.DEFAULT: "default", Precision.HIGH: "high",
         Precision.HIGHEST: "highest"}[level or Precision.HIGHEST])
