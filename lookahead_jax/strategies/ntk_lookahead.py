"""The paper's method: NTK look-ahead strategies (MLMOC, EMOC, EER, label-flip).

For every candidate x' with pseudo-label argmax f_L(x'), the retrained network is
predicted with the empirical NTK of f_L (Eq. 11) through the block form (Eq. 12), for
all candidates at once, and scored (Eq. 13 for MLMOC). This module is the glue: it pads
the labeled inputs to the run's capacity, asks the NTK engine (:mod:`lookahead_jax.ntk`)
for the kernel blocks, and runs the algebra of :mod:`lookahead_jax.lookahead`. From the
trained network to the chosen indices everything stays on the device; only the chosen
indices and the logged scalars come to the host (explicitly).

Sequential mode (``ctx.label_fn`` given): ``query_size`` steps of pick the best available
candidate → ``label_fn(j)`` (its TRUE label) → :func:`~lookahead_jax.lookahead.add_labeled`
(rank-one update, no new kernel entries) → re-score. Only the index leaves the device and
only the label comes in, per step.

Greedy batch mode (option ``batch_mode="greedy"``, beyond the paper): the same steps with
the pick's *pseudo*-label in place of the true one, so a batch is chosen with each pick
already counted as if labelled (the paper takes the top ``query_size`` batch scores, with
no batch diversity). O(U² + nU) per pick, no new kernel entries.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import lookahead as la
from lookahead_jax import ntk
from lookahead_jax.strategies.base import (AcquisitionContext, Selection, pad_rows, predict,
                                           select_top)
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

    def check(self):
        super().check()
        positive(self, "gram_tile", "ntk_chunk_size")
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


def kernels(ctx: AcquisitionContext, opts: LookaheadOptions, x_labeled: Array,
            streaming: bool) -> tuple[dict, Optional[Any]]:
    """The kernel blocks of one cycle, on device, and (streaming) a row-block function.

    Returns ``(blocks, row_block)``: ``blocks`` has ``k_ll`` Θ(X, X), ``k_ul`` Θ(U, X),
    ``k_uu`` Θ(U, U) (or ``kappa``, its diagonal, when streaming) and, with ``eval_x``,
    ``k_el``, ``k_eu``. ``row_block(start, stop)`` gives Θ(U[start:stop], E).
    """
    f, params = ctx.apply_fn, ctx.params
    kw = dict(output=opts.kernel, implementation=opts.ntk_implementation,
              chunk_size=opts.ntk_chunk_size)
    if opts.ntk_implementation == "jvp_vjp" and not streaming and opts.eval_x is None:
        ks = ntk.kernel_set(f, params, x_labeled, ctx.x_candidates, **kw)
        return dict(k_ll=ks.ll, k_ul=ks.ul, k_uu=ks.uu), None
    fl = ntk.ntk_features(f, params, x_labeled, **kw)
    fu = ntk.ntk_features(f, params, jnp.asarray(ctx.x_candidates), **kw)
    kf = functools.partial(ntk.kernel_from_features, chunk_size=opts.ntk_chunk_size)
    out = dict(k_ll=kf(fl, fl), k_ul=kf(fu, fl))
    x_eval = opts.eval_x
    fe = fu if x_eval is None else ntk.ntk_features(f, params, jnp.asarray(x_eval), **kw)
    if x_eval is not None:
        out["k_el"] = kf(fe, fl)
    if not streaming:
        # Θ(U, U) is symmetric: the engine computes the tiles on and above the diagonal
        out["k_uu"] = ntk.kernel_from_features(fu, fu, chunk_size=opts.gram_tile)
        if x_eval is not None:
            out["k_eu"] = kf(fe, fu)
        return out, None
    # streaming: Θ(U, U) / Θ(U, E) are never held, only the diagonal and row blocks.
    k, U = opts.chunk_size, ctx.num_candidates
    out["kappa"] = jnp.concatenate([
        _diagonal(kf(ntk.slice_features(fu, s, min(s + k, U)),
                     ntk.slice_features(fu, s, min(s + k, U))))
        for s in range(0, U, k)])

    def row_block(start, stop):
        return kf(ntk.slice_features(fu, start, min(stop, U)), fe)

    return out, row_block


def _system(ctx: AcquisitionContext, opts: LookaheadOptions, extra: int, sequential: bool,
            streaming: bool):
    """Kernels and the padded, factored system of one cycle: ``(state, spec, info, rows)``.

    ``extra``: labeled slots beyond the run's capacity (sequential steps add points).
    """
    t0 = time.perf_counter()
    L, C = ctx.num_labeled, ctx.num_classes
    N = max(ctx.capacity, L + extra)
    # copies of a real input keep the padding's NTK features finite; the look-ahead system
    # ignores rows past the real L (lookahead.build_system)
    x_l = pad_rows(ctx.x_labeled, N, fill="first")
    y_l = jnp.zeros((N,), jnp.int32).at[:L].set(jnp.asarray(ctx.y_labeled, jnp.int32))
    blocks, row_block = kernels(ctx, opts, x_l, streaming)
    jax.block_until_ready(blocks)
    t_kernel = time.perf_counter() - t0
    f_l = predict(ctx, x_l)
    f_u = predict(ctx, ctx.x_candidates)
    if not opts.block:
        return blocks, None, dict(kernel_s=t_kernel, f_l=f_l, f_u=f_u, y_l=y_l), None
    f_e = None if opts.eval_x is None else predict(ctx, opts.eval_x)
    state, spec, info = la.build_system(
        y_l=y_l, f_l=f_l, f_u=f_u, f_e=f_e, num_classes=C, num_labeled=L, capacity=N,
        jitter=opts.jitter, u_floor=opts.u_floor, chunk_size=opts.chunk_size,
        sequential=sequential, **blocks)
    return state, spec, dict(info, kernel_s=t_kernel), row_block


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


class LookaheadSession:
    """A look-ahead system over one candidate set, stepped one label at a time, on device.

    The sequential machinery (MATH.md, "Sequential mode") as an object: the kernels and the
    factored system are built once; :meth:`best` picks the most informative available
    candidate, :meth:`absorb` adds it with a label (the rank-one update: no new kernel
    entries, no refactorisation) and re-scoring follows on the next :meth:`scores`;
    :meth:`skip` withdraws a candidate without a label; :meth:`run` does ``steps`` of
    pick → label → absorb, with true labels (sequential mode) or pseudo-labels (greedy
    batch mode). The strategies' sequential and greedy modes and the notebook labeler run
    on it. Per step only the chosen index leaves the device and only the label comes in.

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
        num_eval = ctx.num_candidates if ctx.options.eval_x is None else \
            int(np.shape(ctx.options.eval_x)[0])
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
        a capacity of at least L + ``max_steps``; ``num_candidates``: the real U (before
        chunk padding); ``options``: only ``first_step`` is read (default: the defaults).
        """
        if state.a_uu is None:
            raise ValueError("the system was not built with sequential=True")
        capacity = state.chol.shape[0] // spec.block
        n = int(jax.device_get(state.n))
        if n + int(max_steps) > capacity:
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
        """``((U,) scores, () number clamped)`` now; unavailable candidates score −inf.

        Step 0 uses the reference the ``first_step`` option names; later steps the
        linearised model f^lin of everything absorbed so far.
        """
        s, clamped = la.score_candidates(
            self.kind, self.spec, self.state,
            ref_is_lin=self.steps > 0 or self.opts.first_step == "linearised")
        return s[:self.num_candidates], clamped

    def best(self, scores: Optional[Array] = None) -> int:
        """The available candidate with the highest score (one index to the host)."""
        scores = self.scores()[0] if scores is None else scores
        j, bad, top = jax.device_get((jnp.argmax(scores), jnp.any(jnp.isnan(scores)),
                                      jnp.max(scores)))
        if bad:
            raise FloatingPointError(f"look-ahead scores at step {self.steps} are NaN")
        if top == -np.inf:
            raise ValueError("no candidate is left to pick")
        return int(j)

    def pseudo_label(self, j: int) -> int:
        """The pseudo-label of candidate ``j`` that its current score used.

        argmax of its reference prediction now: f_L(x′_j) at step 0 with
        ``first_step="network"`` (MLMOC's y′ = argmax f_L(x′), Eq. 13), otherwise the
        linearised model f^lin of the labeled set plus everything absorbed so far. MLMOC and
        label-flip score exactly this label; EMOC and EER average over labels, and this is
        their most likely one.
        """
        ref = self.state.ref_u.reshape(-1, self.spec.num_classes)
        return int(jax.device_get(jnp.argmax(ref[int(j)])))

    def absorb(self, j: int, label: int) -> None:
        """Adds candidate ``j`` with ``label`` to the system (Eq. 12's rank-one update)."""
        if self.steps >= self.max_steps:
            raise ValueError(f"the session holds at most {self.max_steps} new labels")
        C = self.spec.num_classes
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 <= int(label) < C:
            raise ValueError(f"label {label!r} for candidate {j} is not an integer in [0, {C})")
        if not 0 <= int(j) < self.num_candidates:
            raise ValueError(f"candidate {j} is outside [0, {self.num_candidates})")
        self.state = la.add_labeled(self.spec, self.state, jnp.int32(j), jnp.int32(label))
        self.steps += 1

    def skip(self, j: int) -> None:
        """Withdraws candidate ``j`` (never picked again; it stays an evaluation point)."""
        self.state = self.state._replace(available=self.state.available.at[int(j)].set(False))

    def run(self, steps: int, label_fn: Optional[Callable[[int], int]] = None) -> Steps:
        """``steps`` times: pick the best candidate, label it, absorb it, re-score.

        ``label_fn(j)``: the TRUE label of candidate ``j`` (sequential mode, asked once per
        pick, in pick order); ``None``: its :meth:`pseudo_label` (greedy batch mode).
        """
        picked, labels, clamped_steps, first, first_clamped = [], [], [], None, None
        C = self.spec.num_classes
        for _ in range(int(steps)):
            scores, clamped = self.scores()
            j = self.best(scores)
            if first is None:
                first, first_clamped = scores, clamped
            clamped_steps.append(clamped)
            y = self.pseudo_label(j) if label_fn is None else label_fn(j)
            if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or \
                    not 0 <= int(y) < C:
                raise ValueError(f"label_fn returned {y!r} for candidate {j}; labels must be "
                                 f"integers in [0, {C})")
            self.absorb(j, int(y))
            picked.append(j)
            labels.append(int(y))
        c0, call = jax.device_get((first_clamped, jnp.sum(jnp.stack(clamped_steps))))
        return Steps(indices=np.asarray(picked, np.int64), labels=np.asarray(labels, np.int64),
                     first_scores=first, first_clamped=int(c0), clamped_all_steps=int(call))

    def linearised_predictions(self) -> Array:
        """f^lin on the evaluation set after every absorbed label, ``(E, C)``."""
        st, spec = self.state, self.spec
        lin = st.lin_u if spec.eval_is_cand else st.lin_e
        return lin.reshape(-1, spec.num_classes)[:self.num_eval]


def lookahead_select(ctx: AcquisitionContext, kind: str) -> Selection:
    """One look-ahead acquisition (batch, or sequential when ``ctx.label_fn`` is given).

    Batch selection with ``batch_mode="topk"`` (the default, the paper) is the top
    ``query_size`` scores (no diversity term); with ``"greedy"`` each pick is absorbed
    with its pseudo-label and the rest re-scored before the next pick. Sequential (and
    greedy): ``Selection.indices`` are in pick order, ``revealed`` the true labels
    (sequential only), and ``scores`` the step-0 scores (later picks used re-scored
    values, so ``indices`` need not be the top-k of ``scores``).

    ``info``: ``jitter`` (relative), ``lambda`` (absolute), ``u_floor``, ``clamped``
    (Schur complements clamped at step 0 / in the batch), ``clamped_all_steps``,
    ``capacity``, ``block``, ``kernel_s`` and ``total_s`` (seconds), ``top_score``
    (the best step-0 score, divided by the number of evaluation points).
    """
    opts: LookaheadOptions = ctx.options
    t0 = time.perf_counter()
    sequential = ctx.label_fn is not None
    if not opts.block and (kind != "mlmoc" or sequential):
        raise ValueError("block=False (the paper's 'NTK w/o Block') supports batch-mode "
                         "MLMOC only")
    U = ctx.num_candidates
    if sequential or opts.batch_mode == "greedy":
        return _stepwise(LookaheadSession(ctx, kind), ctx.label_fn, t0)
    streaming = opts.streaming
    state, spec, info, row_block = _system(ctx, opts, 0, False, streaming)
    if not opts.block:
        blocks = state
        lam = _ridge(blocks["k_ll"], ctx.num_labeled, opts.jitter)
        scores = la.augmented_system_scores(blocks["k_ll"], blocks["k_ul"], blocks["k_uu"],
                                            info["f_l"], info["y_l"], info["f_u"], lam,
                                            opts.chunk_size, num_labeled=ctx.num_labeled)
        top = float(jax.device_get(jnp.max(scores))) / U
        return select_top(ctx, scores, dict(jitter=opts.jitter, kernel_s=info["kernel_s"],
                                            top_score=top, total_s=time.perf_counter() - t0))
    E = U if opts.eval_x is None else int(np.shape(opts.eval_x)[0])
    if streaming:
        scores, clamped = la.streaming_scores(kind, spec, state, row_block)
    else:
        scores, clamped = la.score_candidates(kind, spec, state)
    scores = scores[:U]
    lam, clamped, top = jax.device_get((state.lam, clamped, jnp.max(scores) / E))
    info.update(clamped=int(clamped), total_s=time.perf_counter() - t0,
                top_score=float(top), **{"lambda": float(lam)})
    return select_top(ctx, scores, info)


def _stepwise(session: LookaheadSession, label_fn, t0: float) -> Selection:
    """Sequential mode (``label_fn``: TRUE labels, the paper) or greedy batch mode
    (``label_fn`` None: pseudo-labels): ``query_size`` picks, each absorbed before the next."""
    run = session.run(session.ctx.query_size, label_fn)
    lam, top = jax.device_get((session.state.lam, jnp.max(run.first_scores) / session.num_eval))
    info = dict(session.info, clamped=run.first_clamped,
                clamped_all_steps=run.clamped_all_steps, top_score=float(top),
                total_s=time.perf_counter() - t0, **{"lambda": float(lam)})
    return Selection(indices=run.indices, scores=run.first_scores,
                     revealed=None if label_fn is None else run.labels, info=info)


@jax.jit
def _ridge_jit(k_ll, n, jitter):
    real = jnp.arange(k_ll.shape[0]) < n
    return jitter * jnp.sum(jnp.where(real, jnp.diagonal(k_ll), 0)) / jnp.maximum(n, 1)


def _ridge(k_ll: Array, n: int, jitter: float) -> Array:
    """λ = jitter · mean of the real diagonal of Θ(X, X) (as :func:`la.build_system`)."""
    return _ridge_jit(k_ll, jnp.int32(n), jnp.asarray(jitter, k_ll.dtype))


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
