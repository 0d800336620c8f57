"""Neural tangent kernels: the empirical-NTK engine and analytic infinite-width kernels.

  * :mod:`~lookahead_jax.ntk.empirical`: ``empirical_ntk_fn`` (neural-tangents' API for any
    ``f(params, x)``), per-example features (``ntk_features``), kernel blocks on demand
    (``kernel_from_features``), the three blocks of a look-ahead cycle (``kernel_set``) and
    what a kernel costs in FLOPs, counted without computing it (``kernel_cost``).
  * :mod:`~lookahead_jax.ntk.structured`: structured derivatives on the traced jaxpr
    (Novak et al., ICML 2022), the engine's fast path for Dense and Conv weights.
  * :mod:`~lookahead_jax.ntk.infinite`: infinite-width NNGP / NTK of ReLU MLPs.
"""

from lookahead_jax.ntk.empirical import (IMPLEMENTATIONS, OUTPUTS, KernelSet, NTKFeatures,
                                         empirical_ntk_fn, kernel_cost, kernel_from_features,
                                         kernel_set, memory_budget_bytes, ntk_features,
                                         slice_features)
from lookahead_jax.ntk.infinite import infinite_mlp_kernels

__all__ = ["IMPLEMENTATIONS", "OUTPUTS", "KernelSet", "NTKFeatures", "empirical_ntk_fn",
           "infinite_mlp_kernels", "kernel_cost", "kernel_from_features", "kernel_set",
           "memory_budget_bytes", "ntk_features", "slice_features"]
