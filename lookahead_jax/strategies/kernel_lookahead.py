"""Look-ahead baselines with analytic infinite-width kernels (paper Fig. 1b).

* ``infinite_ntk_lookahead`` (Borsos et al., 2021): Eq. 7, the infinite-width NTK of
  the same ReLU MLP with f_0 at initialisation.
* ``gp_lookahead`` (Käding et al., BMVC 2018, for classification): exact EMOC of a GP
  regression on one-hot targets with the infinite-width NTK (or NNGP) as covariance.

Both need a ReLU MLP (the model's ``meta["mlp_widths"]``: every built-in ``mlp`` has it)
and score through :mod:`lookahead_jax.lookahead`'s Eq. 12 block updates.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp

from lookahead_jax import lookahead as la
from lookahead_jax import ntk
from lookahead_jax.models import apply_in_chunks, require
from lookahead_jax.strategies.base import (AcquisitionContext, Selection, pad_rows,
                                           predict, select_top)
from lookahead_jax.strategies.options import (Options, OptionsError, RidgeOptions,
                                              SystemOptions, non_negative)
from lookahead_jax.strategies.registry import register_strategy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PriorOptions(Options):
    """The infinite-width prior's weight and bias scales (standard parametrisation).

    Attributes:
      w_std: weight standard deviation times √fan_in (Flax's default LeCun-normal
        initialisation of the built-in MLP: 1).
      b_std: bias standard deviation (Flax's default zero biases: 0).
    """

    w_std: float = 1.0
    b_std: float = 0.0

    def check(self):
        super().check()
        non_negative(self, "w_std", "b_std")


@dataclasses.dataclass(frozen=True)
class InfiniteNTKOptions(RidgeOptions, PriorOptions):
    """Options of ``infinite_ntk_lookahead``.

    Attributes:
      reference: ``"network"`` (Eq. 13 literally: Σ_{x∈U} ‖f_L(x) − f^∞_{L+}(x)‖ with
        ŷ' = argmax f_L(x') of the trained network) or ``"kernel"`` (the infinite-width
        model throughout: reference f^∞_L (Eq. 6) and ŷ' = argmax f^∞_L(x')).
      jitter, u_floor, chunk_size, w_std, b_std: see the base classes.
    """

    reference: Literal["network", "kernel"] = "network"


@dataclasses.dataclass(frozen=True)
class GPOptions(SystemOptions, PriorOptions):
    """Options of ``gp_lookahead``.

    Attributes:
      noise: observation noise σ² relative to mean diag K(X, X) (so it does not depend on
        the kernel's scale, which grows with the widths).
      prior: the GP covariance: the infinite-width ``"ntk"`` or ``"nngp"``.
      u_floor, chunk_size, w_std, b_std: see the base classes.
    """

    noise: float = 0.01
    prior: Literal["ntk", "nngp"] = "ntk"

    def check(self):
        super().check()
        if not self.noise > 0:
            raise OptionsError(f"option 'noise' must be positive, got {self.noise}")


def mlp_widths(ctx: AcquisitionContext, who: str) -> tuple[int, ...]:
    """The ReLU MLP's layer widths incl. the readout, from ``model.meta["mlp_widths"]``."""
    widths = ctx.model.meta.get("mlp_widths")
    if not widths:
        raise ValueError(f"strategy {who!r} uses the analytic infinite-width kernels of a ReLU "
                         f"MLP (lookahead_jax.ntk.infinite); model {ctx.model.name!r} is not "
                         "one (no meta['mlp_widths']): use model 'mlp' or the empirical-NTK "
                         "strategy 'mlmoc'")
    return tuple(int(w) for w in widths)


def infinite_kernel_blocks(ctx: AcquisitionContext, widths: Sequence[int], which: str,
                           opts: PriorOptions) -> tuple[Array, Array, Array]:
    """K(X, X) ``(N, N)``, K(U, X) ``(U, N)``, K(U, U) ``(U, U)`` of the infinite-width MLP.

    The labeled side is padded to the capacity N (zero rows; the look-ahead system masks
    them). ``which``: ``"ntk"`` or ``"nngp"``. Cost O((N + U)²·(d_0 + depth)).
    """
    x_l = pad_rows(ctx.x_labeled, ctx.capacity)
    x = jnp.concatenate([x_l, jnp.asarray(ctx.x_candidates)])
    nngp, ntk_k = ntk.infinite_mlp_kernels(x, widths=tuple(widths), w_std=opts.w_std,
                                           b_std=opts.b_std, parameterization="standard")
    k = ntk_k if which == "ntk" else nngp
    n = x_l.shape[0]
    return k[:n, :n], k[n:, :n], k[n:, n:]


def _info(state, clamped, **extra) -> dict:
    lam, clamped = jax.device_get((state.lam, clamped))
    return {"clamped": int(clamped), **{k: float(lam) for k in extra.values()}}


@register_strategy("infinite_ntk_lookahead", options=InfiniteNTKOptions, needs=("init",))
def infinite_ntk_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """MLMOC with the analytic infinite-width NTK and f_0 at initialisation (Borsos et al.).

    Eq. 7: f^∞_{L+}(x) = f_0(x) + K(x, X⁺) K(X⁺, X⁺)⁻¹ (Y⁺ − f_0(X⁺)), with K the
    infinite-width NTK of the same ReLU MLP and f_0 a freshly initialised network (key
    ``fold_in(ctx.key, 0)``), scored with the pseudo-label and reference chosen by the
    ``reference`` option. Cost: kernels O((L+U)²·d_0), Cholesky O(L³), scores
    O(U²·L + U²·C) (as ``mlmoc``); memory O(U² + U·L).
    """
    opts = ctx.options
    widths = mlp_widths(ctx, "infinite_ntk_lookahead")
    init = require(ctx.model, "init", "strategy 'infinite_ntk_lookahead'")
    v0 = init(jax.random.fold_in(ctx.key, 0), jnp.asarray(ctx.x_candidates[:1]))
    f0 = ctx.model.bind(v0.state)
    N = ctx.capacity
    f0_l = pad_rows(apply_in_chunks(f0, v0.params, ctx.x_labeled), N)
    f0_u = apply_in_chunks(f0, v0.params, ctx.x_candidates)
    k_ll, k_ul, k_uu = infinite_kernel_blocks(ctx, widths, "ntk", opts)
    y_l = pad_rows(jnp.asarray(ctx.y_labeled, jnp.int32), N)
    state, spec, _ = la.build_system(
        k_ll, k_ul, y_l, f0_l, f0_u, num_classes=ctx.num_classes, k_uu=k_uu,
        num_labeled=ctx.num_labeled, capacity=N, jitter=opts.jitter, u_floor=opts.u_floor,
        chunk_size=opts.chunk_size)
    if opts.reference == "network":
        ref = pad_rows(predict(ctx, ctx.x_candidates), state.ref_u.shape[0])
        state = state._replace(ref_u=ref.astype(state.ref_u.dtype))
    else:
        state = state._replace(ref_u=state.lin_u)
    scores, clamped = la.score_candidates("mlmoc", spec, state)
    return select_top(ctx, scores[:ctx.num_candidates], _info(state, clamped, lam="lambda"))


@register_strategy("gp_lookahead", options=GPOptions)
def gp_lookahead_strategy(ctx: AcquisitionContext) -> Selection:
    """Exact EMOC of a GP with the infinite-width NTK as kernel (Käding et al., 2018).

    One-vs-rest GP regression on one-hot targets, zero prior mean, observation noise
    σ² = ``noise`` · mean diag K(X, X). Posterior mean μ_L(x) = K(x, X)(K(X, X) + σ²I)⁻¹ Y;
    adding (x', y) changes it by k̃(x, x')(e_y − μ_L(x')) / (k̃(x', x') + σ²) with k̃ the
    posterior covariance, and

        EMOC(x') = Σ_y p(y | x') Σ_{x∈U} ‖μ_{L+(x',y)}(x) − μ_L(x)‖₂,
        p(· | x') = softmax(μ_L(x')),

    computed exactly by :mod:`lookahead_jax.lookahead`'s ``emoc`` score (its ridge λ is
    the GP noise: every augmented solve is the exact GP posterior). ReLU MLPs only.
    Cost: kernels O((L+U)²·d_0), Cholesky O(L³), scores O(U²·L + U²·C²); memory
    O(U² + U·L).
    """
    opts = ctx.options
    widths = mlp_widths(ctx, "gp_lookahead")
    k_ll, k_ul, k_uu = infinite_kernel_blocks(ctx, widths, opts.prior, opts)
    N, U, C = ctx.capacity, ctx.num_candidates, ctx.num_classes
    y_l = pad_rows(jnp.asarray(ctx.y_labeled, jnp.int32), N)
    state, spec, _ = la.build_system(
        k_ll, k_ul, y_l, jnp.zeros((N, C), k_ll.dtype), jnp.zeros((U, C), k_ll.dtype),
        num_classes=C, k_uu=k_uu, num_labeled=ctx.num_labeled, capacity=N,
        jitter=opts.noise, u_floor=opts.u_floor, chunk_size=opts.chunk_size)
    state = state._replace(ref_u=state.lin_u)     # reference and p(y|x'): the GP mean μ_L
    scores, clamped = la.score_candidates("emoc", spec, state)
    return select_top(ctx, scores[:U], _info(state, clamped, lam="noise_variance"))
