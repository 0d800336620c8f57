"""The paper's method: NTK look-ahead strategies (MLMOC, EMOC, EER, label-flip).

For every candidate x' with pseudo-label argmax f_L(x'), the retrained network is
predicted with the empirical NTK of f_L (Eq. 11) through the block form (Eq. 12), for
all candidates at once, and scored (Eq. 13 for MLMOC). This module is the glue: it pads
the labeled inputs to the run's capacity, asks the NTK engine (:mod:`lookahead_jax.ntk`)
for the kernel blocks, and runs the algebra of :mod:`lookahead_jax.lookahead`. From the
trained network to the chosen indices everything stays on the device: :func:`acquire`
returns the answer still there (an :class:`Acquisition`), and its ``fetch()`` brings the
chosen indices, two check values and the logged scalars to the host in one explicit
transfer (tests/test_device_resident.py runs it under transfer guards).

Sequential mode (``ctx.label_fn`` given): ``query_size`` steps of pick the best available
candidate → ``label_fn(j)`` (its TRUE label) → :func:`~lookahead_jax.lookahead.add_labeled`
(rank-one update, no new kernel entries) → re-score. Only the index leaves the device and
only the label comes in, per step (:class:`LookaheadSession`).

Greedy batch mode (option ``batch_mode="greedy"``, beyond the paper): the same steps with
the pick's *pseudo*-label in place of the true one, so a batch is chosen with each pick
already counted as if labelled (the paper takes the top ``query_size`` batch scores, with
no batch diversity). O(U² + nU) per pick, no new kernel entries; each pick and its
pseudo-label feed the next step on the device (:meth:`LookaheadSession.run_on_device`),
with no host round trip between picks.

Approximations (issue 21; options ``features``, ``projection_dim``, ``eval_subset``):
``features="projected"`` replaces the exact kernels and the dense algebra by projected NTK
features (:mod:`lookahead_jax.ntk.projected`) and the k × k feature-space algebra
(:mod:`lookahead_jax.feature_lookahead`) in every mode above; ``eval_subset=m`` scores
on m random evaluation points per cycle (sums rescaled by E/m) on either path.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import feature_lookahead as fla
from lookahead_jax import lookahead as la
from lookahead_jax import ntk
from lookahead_jax.ntk import projected
from lookahead_jax import precision as precision_policy
from lookahead_jax.strategies.base import (AcquisitionContext, Selection, check_top_k,
                                           pad_rows, predict, top_k_on_device)
from lookahead_jax.strategies.options import OptionsError, RidgeOptions, positive
from lookahead_jax.strategies.registry import register_strategy

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LookaheadOptions(RidgeOptions):
    """Options of the NTK look-ahead strategies (``mlmoc``, ``emoc``, ``eer``, ``label_flip``).

    Attributes:
      kernel: which empirical NTK: ``"first_logit"`` (the paper's single-logit kernel,
        used as Θ ⊗ I_C), ``"sum_logits"``, ``"trace"`` or ``"full"`` (all C × C logit
        pairs; Schur complements become C × C blocks).
      first_step: sequential (and greedy) mode's reference at step 0: ``"network"`` (the
        paper: scores and pseudo-labels from f_L, so step 0 equals the batch scores) or
        ``"linearised"`` (the linearised model f^lin_L throughout, as every later step
        uses); the two differ when f_L does not fit its labels (r ≠ 0).
      batch_mode: how a batch (no ``label_fn``) is chosen: ``"topk"`` (the paper: the top
        ``query_size`` scores, no diversity term) or ``"greedy"`` (batch-aware: pick the
        best candidate, absorb it into the kernel system with its pseudo-label through the
        sequential rank-one update, re-score the rest, ``query_size`` times; see
        :meth:`LookaheadSession.pseudo_label` for which label). Greedy holds Θ(U, U) and
        the U × U matrix A (twice batch mode's memory) and costs O(U² + nU) per pick;
        ``Selection.scores`` are then the step-0 scores. Sequential mode (``label_fn``
        given) absorbs the true labels instead, so this option does not change it.
      streaming: never hold Θ(U, U) (batch mode only): score from row blocks computed on
        demand (the whole-pool path).
      block: ``False`` solves every augmented system instead of Eq. 12 (the paper's
        "NTK w/o Block", Fig. 1a; batch MLMOC, scalar kernel, E = U only).
      ntk_implementation: the NTK engine's implementation (``"auto"``, ``"structured"``,
        ``"jacobian"``, ``"jvp_vjp"``).
      ntk_chunk_size: examples per NTK chunk (``None``: from the memory budget).
      gram_tile: tile size of the symmetric Θ(U, U) (only tiles on and above the
        diagonal are computed).
      eval_x: a separate evaluation set E (inputs ``(E, ...)``; API only), else E = U.
      features: ``"exact"`` (the default: the engine's exact kernels and the dense algebra
        of :mod:`lookahead_jax.lookahead`) or ``"projected"`` (issue 21: projected NTK
        features φ ∈ ℝᵏ, :mod:`lookahead_jax.ntk.projected`, and the k × k feature-space
        algebra of :mod:`lookahead_jax.feature_lookahead`: memory O((L + U + E)·k), no
        U × U kernel; scalar kernels only, ``jitter`` > 0). The projection's key is the
        acquisition key folded with :data:`PROJECTION_KEY`: one projection per cycle,
        shared by every block. ``streaming`` changes nothing on this path (it never
        holds Θ(U, U)).
      projection_dim: k, the projected feature width (split over the network's layers;
        ``"projected"`` only).
      sketch: the dense/conv layers' projection (``"projected"`` only):
        ``"khatri_rao"`` (default; one rank-one direction per feature, error ~1/√k) or
        ``"kronecker"`` (P_in ⊗ P_out, error ~k^(−1/4)); :mod:`lookahead_jax.ntk.projected`.
      eval_subset: m, score on a random subset of m evaluation points (of U, or of
        ``eval_x``) drawn each cycle from the acquisition key folded with
        :data:`EVAL_SUBSET_KEY`; the sums are rescaled by E/m (label-flip is a fraction
        already). ``None`` or m ≥ E: every point. Works on both paths; in sequential mode
        the subset is a separate evaluation set (a picked candidate stays in it).
      precision: matmul precision of the kernels and the algebra
        (:mod:`lookahead_jax.precision`): ``None`` (the library's policy, HIGHEST unless
        changed), a preset (``"highest"``, ``"fast_kernel"``, ``"default"``) or
        ``"algebra=highest,kernel=default,forward=default"``.
      jitter, u_floor, chunk_size: see :class:`~.options.RidgeOptions`.
    """

    kernel: Literal["first_logit", "sum_logits", "trace", "full"] = "first_logit"
    first_step: Literal["network", "linearised"] = "network"
    batch_mode: Literal["topk", "greedy"] = "topk"
    streaming: bool = False
    block: bool = True
    ntk_implementation: Literal["auto", "structured", "jacobian", "jvp_vjp"] = "auto"
    ntk_chunk_size: Optional[int] = None
    gram_tile: int = 512
    eval_x: Any = None
    precision: Optional[str] = None
    features: Literal["exact", "projected"] = "exact"
    projection_dim: int = 1024
    sketch: Literal["khatri_rao", "kronecker"] = "khatri_rao"
    eval_subset: Optional[int] = None

    def check(self):
        super().check()
        positive(self, "gram_tile", "ntk_chunk_size", "projection_dim", "eval_subset")
        try:
            precision_policy.parse(self.precision)
        except ValueError as e:
            raise OptionsError(f"option 'precision': {e}") from None
        if self.features == "projected":
            if self.kernel == "full":
                raise OptionsError("features='projected' takes a scalar kernel "
                                   "('first_logit', 'sum_logits', 'trace'), not 'full'")
            if not self.block:
                raise OptionsError("features='projected' needs block=True (block=False is "
                                   "the paper's dense 'NTK w/o Block' ablation)")
            if not self.jitter > 0:
                raise OptionsError("features='projected' needs jitter > 0 (with λ = 0 the "
                                   "labeled kernel Φ Φᵀ is singular once L > k)")
        if not self.block and (self.streaming or self.eval_x is not None
                               or self.kernel == "full"):
            raise OptionsError("block=False (the paper's 'NTK w/o Block') supports batch-mode "
                               "MLMOC with a scalar kernel and E = U only")
        if self.batch_mode == "greedy" and (self.streaming or not self.block):
            raise OptionsError("batch_mode='greedy' updates the kernel system in memory: it "
                               "needs block=True and streaming=False")


def _diagonal(k: Array) -> Array:
    """The diagonal of a square kernel block: ``(k,)`` or ``(k, C, C)``."""
    i = jnp.arange(k.shape[0])
    return k[i, i]


PROJECTION_KEY = 21    # fold_in tag of the acquisition key: the cycle's projection
EVAL_SUBSET_KEY = 22   # fold_in tag of the acquisition key: the cycle's evaluation subset
_OPTIONS = object()


def eval_subset_indices(key: Array, num_eval: int, m: Optional[int]) -> Optional[Array]:
    """Sorted ``(m,)`` indices of the cycle's evaluation subset, or ``None`` (every point).

    Drawn without replacement from ``fold_in(key, EVAL_SUBSET_KEY)`` (``key``: the
    acquisition key, already folded with the cycle): a new subset every cycle, the same
    one for every block and step of a cycle.
    """
    if m is None or int(m) >= int(num_eval):
        return None
    k = jax.random.fold_in(key, EVAL_SUBSET_KEY)
    return jnp.sort(jax.random.choice(k, int(num_eval), (int(m),), replace=False))


def evaluation_set(ctx: AcquisitionContext, opts: LookaheadOptions
                   ) -> tuple[Optional[Array], int, float]:
    """``(x_eval, E, weight)``: the evaluation inputs of this cycle (``None``: E = U), the
    size E of the full evaluation set, and the weight E/m of each subset point."""
    E = ctx.num_candidates if opts.eval_x is None else int(np.shape(opts.eval_x)[0])
    idx = eval_subset_indices(ctx.key, E, opts.eval_subset)
    if idx is None:
        return opts.eval_x, E, 1.0
    base = ctx.x_candidates if opts.eval_x is None else opts.eval_x
    return jnp.take(jnp.asarray(base), idx, axis=0), E, E / int(opts.eval_subset)


def kernels(ctx: AcquisitionContext, opts: LookaheadOptions, x_labeled: Array,
            streaming: bool, x_eval: Any = _OPTIONS, sequential: bool = True
            ) -> tuple[dict, Optional[Any]]:
    """The kernel blocks of one cycle, on device, and (streaming) a row-block function.

    Returns ``(blocks, row_block)``: ``blocks`` has ``k_ll`` Θ(X, X), ``k_ul`` Θ(U, X),
    ``k_uu`` Θ(U, U) (or ``kappa``, its diagonal, when streaming, or in batch mode
    (``sequential=False``) with a separate evaluation set, which needs only Θ(E, U)) and,
    with an evaluation set, ``k_el``, ``k_eu``. ``row_block(start, stop)`` gives
    Θ(U[start:stop], E). ``x_eval``: the evaluation inputs (default ``opts.eval_x``).
    """
    f, params = ctx.apply_fn, ctx.params
    if x_eval is _OPTIONS:
        x_eval = opts.eval_x
    kw = dict(output=opts.kernel, implementation=opts.ntk_implementation,
              chunk_size=opts.ntk_chunk_size, precision=precision_policy.parse(opts.precision))
    if opts.ntk_implementation == "jvp_vjp" and not streaming and x_eval is None:
        ks = ntk.kernel_set(f, params, x_labeled, ctx.x_candidates, **kw)
        return dict(k_ll=ks.ll, k_ul=ks.ul, k_uu=ks.uu), None
    fl = ntk.ntk_features(f, params, x_labeled, **kw)
    fu = ntk.ntk_features(f, params, jnp.asarray(ctx.x_candidates), **kw)
    kf = functools.partial(ntk.kernel_from_features, chunk_size=opts.ntk_chunk_size,
                           precision=kw["precision"])
    out = dict(k_ll=kf(fl, fl), k_ul=kf(fu, fl))
    fe = fu if x_eval is None else ntk.ntk_features(f, params, jnp.asarray(x_eval), **kw)
    if x_eval is not None:
        out["k_el"] = kf(fe, fl)
    k, U = opts.chunk_size, ctx.num_candidates
    if not streaming and (sequential or x_eval is None):
        # Θ(U, U) is symmetric: the engine computes the tiles on and above the diagonal
        out["k_uu"] = ntk.kernel_from_features(fu, fu, chunk_size=opts.gram_tile,
                                               precision=kw["precision"])
        if x_eval is not None:
            out["k_eu"] = kf(fe, fu)
        return out, None
    # Θ(U, U) is not needed (streaming, or batch scores against a separate E): only its
    # diagonal. Before this, a batch acquisition with eval_x still paid for all U² pairs.
    out["kappa"] = jnp.concatenate([
        _diagonal(kf(ntk.slice_features(fu, s, min(s + k, U)),
                     ntk.slice_features(fu, s, min(s + k, U))))
        for s in range(0, U, k)])
    if not streaming:
        out["k_eu"] = kf(fe, fu)
        return out, None

    def row_block(start, stop):
        return kf(ntk.slice_features(fu, start, min(stop, U)), fe)

    return out, row_block


def projected_system(ctx: AcquisitionContext, opts: LookaheadOptions, x_l: Array,
                     y_l: Array, x_eval: Optional[Array], weight: float):
    """The feature-space system (``features="projected"``): ``(state, spec, info)``.

    Projected features of X (padded to N), U and E with ONE projection (the acquisition
    key folded with :data:`PROJECTION_KEY`), then
    :func:`~lookahead_jax.feature_lookahead.build_feature_system`.
    """
    t0 = time.perf_counter()
    f, params = ctx.apply_fn, ctx.params
    kw = dict(key=jax.random.fold_in(ctx.key, PROJECTION_KEY),
              projection_dim=opts.projection_dim, output=opts.kernel, sketch=opts.sketch,
              chunk_size=opts.ntk_chunk_size or 256)
    phi_l = projected.projected_features(f, params, x_l, **kw)
    phi_u = projected.projected_features(f, params, jnp.asarray(ctx.x_candidates), **kw)
    phi_e = None if x_eval is None else projected.projected_features(f, params, x_eval, **kw)
    jax.block_until_ready((phi_l, phi_u, phi_e))
    t_kernel = time.perf_counter() - t0
    f_e = mask_e = None
    if x_eval is not None:
        f_e = predict(ctx, x_eval)
        mask_e = jnp.full((phi_e.shape[0],), weight, phi_u.dtype)
    state, spec, info = fla.build_feature_system(
        phi_l, y_l, predict(ctx, x_l), phi_u, predict(ctx, ctx.x_candidates),
        num_classes=ctx.num_classes, phi_e=phi_e, f_e=f_e, mask_e=mask_e,
        num_labeled=ctx.num_labeled, jitter=opts.jitter, u_floor=opts.u_floor,
        chunk_size=opts.chunk_size)
    return state, spec, dict(info, kernel_s=t_kernel)


@functools.partial(jax.jit, static_argnums=(2,))
def _pad_labeled(x_l: Array, y_l: Array, capacity: int) -> tuple[Array, Array]:
    """Labeled inputs and labels padded to the capacity N, on device (one program).

    Inputs are padded with copies of the first one (so the padding's NTK features stay
    finite; the look-ahead system ignores rows past the real L, lookahead.build_system),
    labels with 0.
    """
    y = jnp.zeros((capacity,), jnp.int32).at[:y_l.shape[0]].set(y_l.astype(jnp.int32))
    return pad_rows(x_l, capacity, fill="first"), y


def _system(ctx: AcquisitionContext, opts: LookaheadOptions, extra: int, sequential: bool,
            streaming: bool):
    """Kernels and the padded, factored system of one cycle: ``(state, spec, info, rows)``.

    ``extra``: labeled slots beyond the run's capacity (sequential steps add points).
    Nothing comes to the host: the padding, the kernels (:func:`kernels`), the network
    outputs and :func:`~lookahead_jax.lookahead.build_system` are device computations.
    The host waits once, for the kernels, to log ``kernel_s``. ``features="projected"``
    gives a :class:`~lookahead_jax.feature_lookahead.FeatureState` (no row function).
    The evaluation set is :func:`evaluation_set`'s (a subset weighted E/m).
    """
    t0 = time.perf_counter()
    L, C = ctx.num_labeled, ctx.num_classes
    N = max(ctx.capacity, L + extra)
    x_l, y_l = _pad_labeled(ctx.x_labeled, ctx.y_labeled, N)
    x_eval, _, weight = evaluation_set(ctx, opts)
    if opts.features == "projected":
        state, spec, info = projected_system(ctx, opts, x_l, y_l, x_eval, weight)
        return state, spec, info, None
    blocks, row_block = kernels(ctx, opts, x_l, streaming, x_eval, sequential)
    jax.block_until_ready(blocks)
    t_kernel = time.perf_counter() - t0
    f_l = predict(ctx, x_l)
    f_u = predict(ctx, ctx.x_candidates)
    if not opts.block:
        return blocks, None, dict(kernel_s=t_kernel, f_l=f_l, f_u=f_u, y_l=y_l), None
    f_e = None if x_eval is None else predict(ctx, x_eval)
    state, spec, info = la.build_system(
        y_l=y_l, f_l=f_l, f_u=f_u, f_e=f_e, num_classes=C, num_labeled=L, capacity=N,
        jitter=opts.jitter, u_floor=opts.u_floor, chunk_size=opts.chunk_size,
        sequential=sequential, precision=precision_policy.parse(opts.precision), **blocks)
    if weight != 1.0:
        state = state._replace(mask_e=_scale(state.mask_e, la.to_device(weight,
                                                                         state.mask_e.dtype)))
    return state, spec, dict(info, kernel_s=t_kernel), row_block


@jax.jit
def _scale(mask: Array, weight: Array) -> Array:
    return mask * weight


def _algebra(state):
    """The module whose ``score_candidates`` / ``add_labeled`` take ``state``."""
    return fla if isinstance(state, fla.FeatureState) else la


# ----------------------------------------------------------------------------- on device


@functools.partial(jax.jit, static_argnums=(1,))
def _head(scores: Array, num_candidates: int) -> Array:
    """The real candidates' scores ``(U,)`` of padded ones ``(U_pad,)``."""
    return scores[:num_candidates]


class Pick(NamedTuple):
    """One pick made on the device (:meth:`LookaheadSession.pick`); nothing has moved.

    Attributes:
      index: ``()`` int, the best available candidate (argmax of the scores).
      nan: ``()`` bool, some score is NaN (the pick is then meaningless).
      top: ``()`` the best score (``-inf``: no candidate was left to pick).
    """

    index: Array
    nan: Array
    top: Array


@jax.jit
def _pick(scores: Array) -> Pick:
    return Pick(jnp.argmax(scores), jnp.any(jnp.isnan(scores)), jnp.max(scores))


def _check_pick(step: int, nan, top) -> None:
    """Host half of a pick: raises what :meth:`LookaheadSession.best` raises."""
    if nan:
        raise FloatingPointError(f"look-ahead scores at step {step} are NaN")
    if top == -np.inf:
        raise ValueError("no candidate is left to pick")


@functools.partial(jax.jit, static_argnums=(2,))
def _pseudo_label(ref_u: Array, j: Array, num_classes: int) -> Array:
    return jnp.argmax(ref_u.reshape(-1, num_classes)[j])


@jax.jit
def _withdraw(available: Array, j: Array) -> Array:
    return available.at[j].set(False)


@jax.jit
def _top_score_jit(scores: Array, num_eval: Array) -> Array:
    return jnp.max(scores) / num_eval


def _top_score(scores: Array, num_eval: int) -> Array:
    """The best score divided by the number of evaluation points (logged), on device.

    The divisor is a run-time value, as it was when this was two eager operations: a
    compile-time constant lets XLA multiply by its reciprocal instead (1 ulp apart).
    """
    return _top_score_jit(scores, la.to_device(num_eval, scores.dtype))


class Steps(NamedTuple):
    """What :meth:`LookaheadSession.run` did, step by step (host arrays, small).

    Attributes:
      indices: ``(steps,)`` int64 candidate positions, in pick order.
      labels: ``(steps,)`` int64 labels absorbed (true or pseudo).
      first_scores: ``(U,)`` the step-0 scores (device).
      first_clamped: Schur complements clamped at step 0.
      clamped_all_steps: summed over the steps.
    """

    indices: np.ndarray
    labels: np.ndarray
    first_scores: Array
    first_clamped: int
    clamped_all_steps: int


class DeviceSteps(NamedTuple):
    """:meth:`LookaheadSession.run_on_device`'s record: :class:`Steps` still on the device.

    :meth:`fetch` brings it to the host in one explicit transfer and raises what
    :meth:`LookaheadSession.best` would have raised at the first bad step.

    Attributes:
      indices, labels: ``(steps,)`` int picks and the labels absorbed, in pick order.
      first_scores: ``(U,)`` the step-0 scores.
      first_clamped, clamped_all_steps: ``()`` int.
      nan: ``(steps,)`` bool, a score was NaN at that step; top: ``(steps,)`` best score.
      first_step: the session's step count before these steps (for error messages).
    """

    indices: Array
    labels: Array
    first_scores: Array
    first_clamped: Array
    clamped_all_steps: Array
    nan: Array
    top: Array
    first_step: int = 0

    def check(self, nan, top) -> None:
        """Raises for the first bad step, given host copies of ``nan`` and ``top``."""
        for t, (bad, best) in enumerate(zip(nan, top)):
            _check_pick(self.first_step + t, bad, best)

    def fetch(self) -> Steps:
        idx, labels, c0, call, nan, top = jax.device_get((
            self.indices, self.labels, self.first_clamped, self.clamped_all_steps,
            self.nan, self.top))
        self.check(nan, top)
        return Steps(indices=np.asarray(idx, np.int64), labels=np.asarray(labels, np.int64),
                     first_scores=self.first_scores, first_clamped=int(c0),
                     clamped_all_steps=int(call))


@jax.jit
def _stack_steps(picks: list, labels: list, clamped: list):
    """Per-step device scalars as ``(steps,)`` arrays, and the clamped total."""
    return (jnp.stack([p.index for p in picks]), jnp.stack(labels),
            jnp.stack([p.nan for p in picks]), jnp.stack([p.top for p in picks]),
            jnp.sum(jnp.stack(clamped)))


class LookaheadSession:
    """A look-ahead system over one candidate set, stepped one label at a time, on device.

    The sequential machinery (docs/ALGEBRA.md §5) as an object: the kernels and the
    factored system are built once; :meth:`best` picks the most informative available
    candidate, :meth:`absorb` adds it with a label (the rank-one update: no new kernel
    entries, no refactorisation) and re-scoring follows on the next :meth:`scores`;
    :meth:`skip` withdraws a candidate without a label; :meth:`run` does ``steps`` of
    pick → label → absorb, with true labels (sequential mode) or pseudo-labels (greedy
    batch mode). The strategies' sequential and greedy modes and the notebook labeler run
    on it.

    Device residency: every step is device computations. :meth:`pick` leaves the chosen
    index on the device, :meth:`absorb` takes it (or a host integer, sent explicitly) and
    the label; so per step only the index leaves the device (:meth:`best`, when a person
    or an oracle must see it) and only the label comes in. :meth:`run_on_device` (greedy)
    keeps every step on the device and moves nothing at all.

    Args:
      ctx: the acquisition context (``ctx.options`` a :class:`LookaheadOptions`, or a
        mapping / ``None``: parsed here).
      kind: the score (``"mlmoc"``, ``"emoc"``, ``"eer"``, ``"label_flip"``).
      max_steps: how many labels may be absorbed (labeled buffers are padded for them).
    """

    def __init__(self, ctx: AcquisitionContext, kind: str = "mlmoc", *,
                 max_steps: Optional[int] = None):
        if not isinstance(ctx.options, LookaheadOptions):
            ctx = dataclasses.replace(ctx, options=LookaheadOptions.parse(ctx.options,
                                                                          strategy=kind))
        max_steps = ctx.query_size if max_steps is None else int(max_steps)
        state, spec, info, _ = _system(ctx, ctx.options, max_steps, True, False)
        num_eval = evaluation_set(ctx, ctx.options)[1]
        self._setup(state, spec, info, kind, ctx.options, max_steps, ctx.num_candidates,
                    num_eval)
        self.ctx = ctx

    @classmethod
    def from_system(cls, state: la.LookaheadState, spec: la.Spec, kind: str = "mlmoc", *,
                    num_candidates: int, max_steps: int,
                    options: Optional[LookaheadOptions] = None,
                    num_eval: Optional[int] = None) -> "LookaheadSession":
        """A session on an already built sequential-mode system (kernels from elsewhere).

        ``state``, ``spec``: from :func:`lookahead.build_system` with ``sequential=True`` and
        a capacity of at least L + ``max_steps``, or from
        :func:`~lookahead_jax.feature_lookahead.build_feature_system` (any capacity);
        ``num_candidates``: the real U (before chunk padding); ``options``: only ``first_step`` is read (default: the defaults).
        Reads the system's labeled count ``state.n`` (one explicit transfer) to check the
        capacity.
        """
        feature_space = isinstance(state, fla.FeatureState)   # no capacity: any L
        if not feature_space and state.a_uu is None:
            raise ValueError("the system was not built with sequential=True")
        capacity = None if feature_space else state.chol.shape[0] // spec.block
        n = int(jax.device_get(state.n))
        if capacity is not None and n + int(max_steps) > capacity:
            raise ValueError(f"the system holds {capacity} labeled points, {n} already used: "
                             f"no room for {max_steps} more (build it with capacity >= "
                             f"{n + int(max_steps)})")
        opts = LookaheadOptions() if options is None else options
        self = cls.__new__(cls)
        self._setup(state, spec, {}, kind, opts, int(max_steps), int(num_candidates),
                    int(num_candidates if num_eval is None else num_eval))
        self.ctx = None
        return self

    def _setup(self, state, spec, info, kind, opts, max_steps, num_candidates, num_eval):
        self.state, self.spec, self.info = state, spec, info
        self.kind, self.opts, self.max_steps = kind, opts, max_steps
        self.num_candidates, self.num_eval = num_candidates, num_eval
        self.steps = 0
        if opts.first_step == "linearised":
            self.state = self.state._replace(ref_u=self.state.lin_u, ref_e=self.state.lin_e)

    def scores(self) -> tuple[Array, Array]:
        """``((U,) scores, () number clamped)`` now, on device; unavailable candidates
        score −inf.

        Step 0 uses the reference the ``first_step`` option names; later steps the
        linearised model f^lin of everything absorbed so far.
        """
        s, clamped = _algebra(self.state).score_candidates(
            self.kind, self.spec, self.state,
            ref_is_lin=self.steps > 0 or self.opts.first_step == "linearised")
        return _head(s, self.num_candidates), clamped

    def pick(self, scores: Optional[Array] = None) -> Pick:
        """The available candidate with the highest score, left on the device.

        Returns a :class:`Pick` (index, NaN flag, best score) of device scalars; pass
        ``pick.index`` to :meth:`absorb` as it is. Nothing is checked or moved:
        :meth:`best` is this plus one explicit transfer and the checks.
        """
        return _pick(self.scores()[0] if scores is None else scores)

    def best(self, scores: Optional[Array] = None) -> int:
        """The available candidate with the highest score (one index to the host).

        Raises:
          FloatingPointError: a score is NaN.
          ValueError: no candidate is left to pick.
        """
        j, nan, top = jax.device_get(self.pick(scores))
        _check_pick(self.steps, nan, top)
        return int(j)

    def pseudo_label(self, j: int) -> int:
        """The pseudo-label of candidate ``j`` that its current score used.

        argmax of its reference prediction now: f_L(x′_j) at step 0 with
        ``first_step="network"`` (MLMOC's y′ = argmax f_L(x′), Eq. 13), otherwise the
        linearised model f^lin of the labeled set plus everything absorbed so far. MLMOC and
        label-flip score exactly this label; EMOC and EER average over labels, and this is
        their most likely one. (On the device: :meth:`run_on_device`.)
        """
        return int(jax.device_get(self._pseudo_label(la.to_device(int(j), jnp.int32))))

    def _pseudo_label(self, j: Array) -> Array:
        return _pseudo_label(self.state.ref_u, j, self.spec.num_classes)

    def absorb(self, j, label) -> None:
        """Adds candidate ``j`` with ``label`` to the system (Eq. 12's rank-one update).

        ``j`` and ``label``: host integers (checked, then sent to the device explicitly),
        or device scalars (e.g. :attr:`Pick.index`), taken as they are: checking them
        would bring them to the host.
        """
        if self.steps >= self.max_steps:
            raise ValueError(f"the session holds at most {self.max_steps} new labels")
        C = self.spec.num_classes
        if not isinstance(label, jax.Array) and (
                isinstance(label, bool) or not isinstance(label, (int, np.integer))
                or not 0 <= int(label) < C):
            raise ValueError(f"label {label!r} for candidate {j} is not an integer in [0, {C})")
        if not isinstance(j, jax.Array) and not 0 <= int(j) < self.num_candidates:
            raise ValueError(f"candidate {j} is outside [0, {self.num_candidates})")
        self.state = _algebra(self.state).add_labeled(self.spec, self.state, j, label)
        self.steps += 1

    def skip(self, j) -> None:
        """Withdraws candidate ``j`` (never picked again; it stays an evaluation point)."""
        self.state = self.state._replace(
            available=_withdraw(self.state.available, la.to_device(j, jnp.int32)))

    def run_on_device(self, steps: int) -> DeviceSteps:
        """``steps`` greedy steps (pick, pseudo-label, absorb, re-score), all on the device.

        Every step's index and pseudo-label stay on the device and feed the next step, so
        the host only enqueues work and nothing is transferred; checks (a NaN score, no
        candidate left) happen in :meth:`DeviceSteps.fetch`.
        """
        first_step = self.steps
        picks, labels, clamped_steps, first, first_clamped = [], [], [], None, None
        for _ in range(int(steps)):
            scores, clamped = self.scores()
            p = self.pick(scores)
            if first is None:
                first, first_clamped = scores, clamped
            clamped_steps.append(clamped)
            y = self._pseudo_label(p.index)
            self.absorb(p.index, y)
            picks.append(p)
            labels.append(y)
        idx, ys, nan, top, call = _stack_steps(picks, labels, clamped_steps)
        return DeviceSteps(indices=idx, labels=ys, first_scores=first,
                           first_clamped=first_clamped, clamped_all_steps=call, nan=nan,
                           top=top, first_step=first_step)

    def run(self, steps: int, label_fn: Optional[Callable[[int], int]] = None) -> Steps:
        """``steps`` times: pick the best candidate, label it, absorb it, re-score.

        ``label_fn(j)``: the TRUE label of candidate ``j`` (sequential mode, asked once per
        pick, in pick order): per step the index comes to the host (one explicit transfer)
        and the label goes to the device. ``None``: its :meth:`pseudo_label` (greedy batch
        mode), :meth:`run_on_device` and one transfer at the end.
        """
        if label_fn is None:
            return self.run_on_device(steps).fetch()
        picked, labels, clamped_steps, first, first_clamped = [], [], [], None, None
        C = self.spec.num_classes
        for _ in range(int(steps)):
            scores, clamped = self.scores()
            p = self.pick(scores)
            j, nan, top = jax.device_get(p)                  # the index goes out
            _check_pick(self.steps, nan, top)
            j = int(j)
            if first is None:
                first, first_clamped = scores, clamped
            clamped_steps.append(clamped)
            y = label_fn(j)
            if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or \
                    not 0 <= int(y) < C:
                raise ValueError(f"label_fn returned {y!r} for candidate {j}; labels must be "
                                 f"integers in [0, {C})")
            self.absorb(p.index, int(y))                      # the label comes in
            picked.append(j)
            labels.append(int(y))
        c0, call = jax.device_get((first_clamped, _sum_counts(clamped_steps)))
        return Steps(indices=np.asarray(picked, np.int64), labels=np.asarray(labels, np.int64),
                     first_scores=first, first_clamped=int(c0), clamped_all_steps=int(call))

    def linearised_predictions(self) -> Array:
        """f^lin on the evaluation set after every absorbed label, ``(E, C)``."""
        st, spec = self.state, self.spec
        lin = st.lin_u if spec.eval_is_cand else st.lin_e
        return lin.reshape(-1, spec.num_classes)[:self.num_eval]


@jax.jit
def _sum_counts(counts: list) -> Array:
    return jnp.sum(jnp.stack(counts))


class Acquisition(NamedTuple):
    """One batch acquisition whose answer is still on the device (:func:`acquire`).

    Nothing here has left the device. :meth:`fetch` brings the indices, the check values
    and the logged scalars to the host in ONE explicit transfer and returns the
    :class:`~lookahead_jax.strategies.base.Selection`, raising what the host-side path
    raises (NaN scores, too few candidates to pick).

    Attributes:
      indices: ``(query_size,)`` int chosen positions, in pick order.
      scores: ``(U,)`` scores (the step-0 scores in greedy mode).
      logged: device scalars fetched with the indices: the logged ``clamped``,
        ``clamped_all_steps``, ``top_score``, ``lambda`` and the checks' inputs.
      info: host values known without a transfer (``jitter``, ``capacity``, ``block``,
        ``u_floor``, ``kernel_s``).
      finish: ``finish(host copy of logged) -> dict``: checks (raising), and the logged
        scalars as Python numbers.
      started: ``time.perf_counter()`` at the start (``total_s`` ends at the fetch).
    """

    indices: Array
    scores: Array
    logged: dict
    info: dict
    finish: Callable[[dict], dict]
    started: float

    def fetch(self) -> Selection:
        idx, logged = jax.device_get((self.indices, self.logged))
        info = dict(self.info, **self.finish(logged))
        info["total_s"] = time.perf_counter() - self.started
        return Selection(indices=np.asarray(idx, np.int64), scores=self.scores, info=info)


def lookahead_select(ctx: AcquisitionContext, kind: str) -> Selection:
    """One look-ahead acquisition (batch, or sequential when ``ctx.label_fn`` is given).

    Batch selection with ``batch_mode="topk"`` (the default, the paper) is the top
    ``query_size`` scores (no diversity term); with ``"greedy"`` each pick is absorbed
    with its pseudo-label and the rest re-scored before the next pick. Sequential (and
    greedy): ``Selection.indices`` are in pick order, ``revealed`` the true labels
    (sequential only), and ``scores`` the step-0 scores (later picks used re-scored
    values, so ``indices`` need not be the top-k of ``scores``).

    Batch modes are :func:`acquire` (on the device) and one transfer; sequential mode
    moves one index out and one label in per step.

    ``info``: ``jitter`` (relative), ``lambda`` (absolute), ``u_floor``, ``clamped``
    (Schur complements clamped at step 0 / in the batch), ``clamped_all_steps``,
    ``capacity``, ``block``, ``kernel_s`` and ``total_s`` (seconds), ``top_score``
    (the best step-0 score, divided by the number of evaluation points).
    """
    if ctx.label_fn is not None:
        if not ctx.options.block:
            raise ValueError("block=False (the paper's 'NTK w/o Block') supports batch-mode "
                             "MLMOC only")
        return _sequential(ctx, kind)
    return acquire(ctx, kind).fetch()


def acquire(ctx: AcquisitionContext, kind: str) -> Acquisition:
    """One batch look-ahead acquisition, from the trained network to the chosen indices,
    as device computations: nothing comes to the host (``fetch()`` the answer).

    Padding, kernels (:func:`kernels`), network outputs, the factored system, the scores
    and the top-k (or the greedy steps) are jitted device programs fed by each other's
    device outputs; host numbers (L, the jitter) go to the device explicitly. The host
    waits once, for the kernels, to log ``kernel_s``.

    Args:
      ctx: the context (no ``label_fn``: sequential mode exchanges an index and a label
        with the host every step, :func:`lookahead_select`); ``ctx.options`` a
        :class:`LookaheadOptions` or a mapping / ``None`` (parsed here).
      kind: the score (``"mlmoc"``, ``"emoc"``, ``"eer"``, ``"label_flip"``).
    """
    if ctx.label_fn is not None:
        raise ValueError("acquire is batch-only; sequential mode (label_fn) runs through "
                         "lookahead_select or LookaheadSession")
    if not isinstance(ctx.options, LookaheadOptions):
        ctx = dataclasses.replace(ctx, options=LookaheadOptions.parse(ctx.options,
                                                                      strategy=kind))
    opts: LookaheadOptions = ctx.options
    t0 = time.perf_counter()
    if not opts.block and kind != "mlmoc":
        raise ValueError("block=False (the paper's 'NTK w/o Block') supports batch-mode "
                         "MLMOC only")
    U, q = ctx.num_candidates, ctx.query_size
    if opts.batch_mode == "greedy":
        session = LookaheadSession(ctx, kind)
        run = session.run_on_device(q)
        logged = dict(first_clamped=run.first_clamped, clamped_all_steps=run.clamped_all_steps,
                      top_score=_top_score(run.first_scores, session.num_eval),
                      lam=session.state.lam, nan=run.nan, top=run.top)

        def finish(h):
            run.check(h["nan"], h["top"])
            return {"clamped": int(h["first_clamped"]),
                    "clamped_all_steps": int(h["clamped_all_steps"]),
                    "top_score": float(h["top_score"]), "lambda": float(h["lam"])}

        return Acquisition(run.indices, run.first_scores, logged, dict(session.info), finish,
                           t0)
    state, spec, info, row_block = _system(ctx, opts, 0, False, opts.streaming)
    if not opts.block:
        blocks = state
        lam = _ridge(blocks["k_ll"], ctx.num_labeled, opts.jitter)
        scores = la.augmented_system_scores(blocks["k_ll"], blocks["k_ul"], blocks["k_uu"],
                                            info["f_l"], info["y_l"], info["f_u"], lam,
                                            opts.chunk_size, num_labeled=ctx.num_labeled,
                                            precision=precision_policy.parse(opts.precision))
        idx, bad, worst = top_k_on_device(scores, q)
        # the best score comes to the host and is divided there (as it always was)
        logged = dict(bad=bad, worst=worst, top=_top_score(scores, 1))
        info = dict(jitter=opts.jitter, kernel_s=info["kernel_s"])

        def finish(h):
            check_top_k(h["bad"], h["worst"], q, U)
            return {"top_score": float(h["top"]) / U}

        return Acquisition(idx, scores, logged, info, finish, t0)
    E = evaluation_set(ctx, opts)[1]
    if row_block is not None:
        scores, clamped = la.streaming_scores(kind, spec, state, row_block)
    else:
        scores, clamped = _algebra(state).score_candidates(kind, spec, state)
    scores = _head(scores, U)
    idx, bad, worst = top_k_on_device(scores, q)
    logged = dict(bad=bad, worst=worst, clamped=clamped, top_score=_top_score(scores, E),
                  lam=state.lam)

    def finish(h):
        check_top_k(h["bad"], h["worst"], q, U)
        return {"clamped": int(h["clamped"]), "top_score": float(h["top_score"]),
                "lambda": float(h["lam"])}

    return Acquisition(idx, scores, logged, info, finish, t0)


def _sequential(ctx: AcquisitionContext, kind: str) -> Selection:
    """Sequential mode (``ctx.label_fn``: TRUE labels, the paper): ``query_size`` picks,
    each absorbed before the next; per step the index goes out and the label comes in."""
    t0 = time.perf_counter()
    session = LookaheadSession(ctx, kind)
    run = session.run(session.ctx.query_size, ctx.label_fn)
    lam, top = jax.device_get((session.state.lam,
                               _top_score(run.first_scores, session.num_eval)))
    info = dict(session.info, clamped=run.first_clamped,
                clamped_all_steps=run.clamped_all_steps, top_score=float(top),
                total_s=time.perf_counter() - t0, **{"lambda": float(lam)})
    return Selection(indices=run.indices, scores=run.first_scores, revealed=run.labels,
                     info=info)


@jax.jit
def _ridge_jit(k_ll, n, jitter):
    real = jnp.arange(k_ll.shape[0]) < n
    return jitter * jnp.sum(jnp.where(real, jnp.diagonal(k_ll), 0)) / jnp.maximum(n, 1)


def _ridge(k_ll: Array, n: int, jitter: float) -> Array:
    """λ = jitter · mean of the real diagonal of Θ(X, X) (as :func:`la.build_system`)."""
    return _ridge_jit(k_ll, la.to_device(n, jnp.int32), la.to_device(jitter, k_ll.dtype))


def _lookahead(kind: str, doc: str):
    def select(ctx: AcquisitionContext) -> Selection:
        return lookahead_select(ctx, kind)

    select.__doc__ = doc
    select.__name__ = f"{kind}_strategy"
    register_strategy(kind, options=LookaheadOptions, sequential=True)(select)
    return select


mlmoc_strategy = _lookahead(
    "mlmoc", "NTK look-ahead MLMOC (Eq. 13): Σ_x ‖f_L(x) − f^lin_{L+}(x)‖, y' = argmax f_L(x').")
emoc_strategy = _lookahead(
    "emoc", "NTK look-ahead EMOC (Eq. 3): MLMOC's sum in expectation over softmax(f_L(x')).")
eer_strategy = _lookahead(
    "eer", "NTK look-ahead expected error reduction (Eq. 2): −E_y Σ_x H(softmax f^lin_{L+}(x)).")
label_flip_strategy = _lookahead(
    "label_flip", "Fraction of evaluation points whose argmax flips (the authors' code's score).")
