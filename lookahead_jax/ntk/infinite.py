"""Analytic infinite-width NNGP and NTK of fully-connected ReLU networks.

The network is ``Dense(n_1) - ReLU - ... - Dense(n_L)`` on flattened inputs (d_0
features), i.e. neural-tangents' ``stax.serial(Dense(n_1, W_std, b_std, P), Relu(), ...)``.
Per-logit scalar kernels are returned; the full C-output kernel is ``k ⊗ I_C``.

Recursion (normalised input kernel ``K_0 = x·x'/d_0``; ``Σ_l`` the pre-activation NNGP
of layer l; ``E_l = E[φ(u)φ(u')]`` and ``Ė_l = E[φ'(u)φ'(u')]`` for ``(u, u') ~ N(0, Σ_l)``,
φ = ReLU, the arc-cosine formulas of Cho & Saul 2009)::

    Σ_1 = W² K_0 + b²                      Σ_{l+1} = W² E_l + b²
    "ntk":      Θ_1 = Σ_1                  Θ_{l+1} = Σ_{l+1} + W² Ė_l Θ_l
    "standard": Θ_1 = d_0 K_0 + 1          Θ_{l+1} = n_l E_l + 1 + W² Ė_l Θ_l

The standard-parametrisation NTK uses the actual fan-ins ``n_l`` (it is the expectation of
the finite network's empirical NTK at initialisation with ``W ~ N(0, W²/fan_in)``,
``b ~ N(0, b²)``: ∂h/∂W brings ``a·a' = n_l E_l``, ∂h/∂b brings 1), which is
neural-tangents' ``parameterization="standard"`` convention; the NNGP is the same under
both parametrisations. For ReLU with ``c = Σ12/√(Σ11 Σ22)``, ``θ = arccos c``::

    E  = √(Σ11 Σ22) (sin θ + (π − θ) cos θ) / (2π)        Ė = (π − θ) / (2π)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _relu_expectations(s12, s11, s22):
    norm = jnp.sqrt(s11[:, None] * s22[None, :])
    # a zero-variance input (x = 0 with b_std = 0) would give 0/0: take c = 0 there, as
    # neural-tangents' safe division does; E = norm·(...) is then exactly 0
    safe = jnp.where(norm > 0, norm, 1.0)
    c = jnp.clip(jnp.where(norm > 0, s12 / safe, 0.0), -1.0, 1.0)
    theta = jnp.arccos(c)
    e = norm * (jnp.sin(theta) + (jnp.pi - theta) * c) / (2 * jnp.pi)
    e_dot = (jnp.pi - theta) / (2 * jnp.pi)
    return e, e_dot, s11 / 2, s22 / 2


def infinite_mlp_kernels(x1: Array, x2: Array | None = None, *, widths: Sequence[int],
                         w_std: float = float(np.sqrt(2.0)), b_std: float = 0.1,
                         parameterization: str = "standard") -> tuple[Array, Array]:
    """Infinite-width (NNGP, NTK) of a ReLU MLP, each ``(n1, n2)`` per logit.

    Args:
      x1: ``(n1, ...)`` inputs (flattened to ``(n1, d_0)``); x2: ``(n2, ...)`` or None
        (then x2 = x1).
      widths: the Dense layer widths including the readout, e.g. ``(512, 512, 10)``; a
        ReLU follows every layer but the last. Under "standard" the hidden widths (and
        d_0) are the fan-ins that scale the weight contributions; the last width (the
        number of logits) does not enter the per-logit kernel.
      w_std, b_std: weight and bias standard deviations (weights ~ N(0, w_std²/fan_in)).
      parameterization: "standard" or "ntk".

    Returns:
      ``(nngp, ntk)``, both ``(n1, n2)``; the full kernels are ``k ⊗ I_C``.
    """
    if parameterization not in ("standard", "ntk"):
        raise ValueError(f"unknown parameterization {parameterization!r}; "
                         "known: ('standard', 'ntk')")
    x1 = jnp.reshape(x1, (x1.shape[0], -1))
    x2 = x1 if x2 is None else jnp.reshape(x2, (x2.shape[0], -1))
    d0 = x1.shape[1]
    w2, b2 = w_std ** 2, b_std ** 2
    k12 = x1 @ x2.T / d0
    k11 = jnp.sum(x1 * x1, axis=1) / d0
    k22 = jnp.sum(x2 * x2, axis=1) / d0
    s12, s11, s22 = w2 * k12 + b2, w2 * k11 + b2, w2 * k22 + b2
    ntk = s12 if parameterization == "ntk" else d0 * k12 + 1.0
    fan_ins = list(widths[:-1])
    for n_in in fan_ins:
        e, e_dot, e11, e22 = _relu_expectations(s12, s11, s22)
        s12, s11, s22 = w2 * e + b2, w2 * e11 + b2, w2 * e22 + b2
        if parameterization == "ntk":
            ntk = s12 + w2 * e_dot * ntk
        else:
            ntk = n_in * e + 1.0 + w2 * e_dot * ntk
    return s12, ntk
