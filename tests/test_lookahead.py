"""Tests of the NTK look-ahead (lookahead_jax/lookahead.py) against slow, obvious twins.

Every fast path is compared in float64 with: explicit (n+1)×(n+1) augmented-system
solves (Eq. 11), fresh Cholesky factorisations, straightforward loops over candidates and
labels, brute-force jacrev kernels, and (Theorem 3.1) real gradient-descent retraining.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import lookahead as la
from lookahead_jax import models, strategies
from lookahead_jax.strategies import AcquisitionContext, get_strategy, ntk_lookahead

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures


def bruteforce_kernel_set(f, params, x_l, x_u, output):
    """The slow twin: per-example ``jacrev`` rows, flattened, contracted."""
    def jac(x):
        def g(p, xi):
            out = f(p, xi[None])[0]
            if output == "first_logit":
                return out[0]
            if output == "sum_logits":
                return jnp.sum(out) / jnp.sqrt(out.shape[0])
            return out
        j = jax.vmap(jax.jacrev(g), in_axes=(None, 0))(params, x)
        leaves = [a.reshape(x.shape[0], -1) if output in ("first_logit", "sum_logits")
                  else a.reshape(x.shape[0], a.shape[1], -1) for a in jax.tree.leaves(j)]
        return jnp.concatenate(leaves, axis=-1)

    jl, ju = jac(x_l), jac(x_u)
    if output in ("first_logit", "sum_logits"):
        k = lambda a, c: a @ c.T
    elif output == "trace":
        k = lambda a, c: jnp.einsum("icp,jcp->ij", a, c)
    else:
        k = lambda a, c: jnp.einsum("icp,jdp->ijcd", a, c)
    return k(jl, jl), k(ju, jl), k(ju, ju)


def random_problem(seed, L=7, U=12, E=None, C=3, full=False, resid=True, P=40):
    """Random PSD kernels from random features, labels and network outputs (float64).

    Returns a dict of numpy arrays; kernels are (n1, n2) or (n1, n2, C, C) when ``full``.
    """
    rng = np.random.RandomState(seed)
    n = L + U + (E or 0)
    z = rng.randn(n, C, P) if full else rng.randn(n, P)
    k = np.einsum("icp,jdp->ijcd", z, z) / P if full else z @ z.T / P
    sl = lambda a, b: k[a][:, b]
    iL, iU, iE = np.arange(L), np.arange(L, L + U), np.arange(L + U, n)
    y = rng.randint(0, C, L)
    f_l = rng.randn(L, C) * 0.3 + (0 if resid else np.eye(C)[y])
    if not resid:
        f_l = np.eye(C)[y].astype(np.float64)
    out = dict(k_ll=sl(iL, iL), k_ul=sl(iU, iL), k_uu=sl(iU, iU), y_l=y, f_l=f_l,
               f_u=rng.randn(U, C) * 0.5, num_classes=C, k_all=k, idx=(iL, iU, iE))
    if E:
        out.update(k_el=sl(iE, iL), k_eu=sl(iE, iU), f_e=rng.randn(E, C) * 0.5)
    return out


def system_kwargs(p):
    return {k: v for k, v in p.items() if k not in ("k_all", "idx")}


def flat(k):
    return la.flatten_kernel(k)


def krr(k_all, train, test, targets, f_test, f_train, lam, full):
    """f(test) + Θ(test, train) (Θ(train, train) + λI)⁻¹ (targets − f(train)); (n, C)."""
    kt = flat(k_all[np.ix_(train, train)])
    ks = flat(k_all[np.ix_(test, train)])
    r = (targets - f_train).reshape(len(train) * (kt.shape[0] // len(train)), -1)
    alpha = np.linalg.solve(kt + lam * np.eye(kt.shape[0]), r)
    return f_test + (ks @ alpha).reshape(f_test.shape)


def direct_lookahead(p, lam, labels, full):
    """(U, E, C): f^lin_{L+} by solving each augmented system (the 'w/o block' twin)."""
    iL, iU, iE = p["idx"]
    C = p["num_classes"]
    ev = iE if len(iE) else iU
    f_ev = p["f_e"] if len(iE) else p["f_u"]
    onehot = np.eye(C)
    out = []
    for j in range(len(iU)):
        train = np.concatenate([iL, iU[j:j + 1]])
        tgt = np.concatenate([onehot[p["y_l"]], onehot[labels[j]][None]])
        ftr = np.concatenate([p["f_l"], p["f_u"][j:j + 1]])
        out.append(krr(p["k_all"], train, ev, tgt, f_ev, ftr, lam, full))
    return np.stack(out)


def lam_of(p, jitter):
    return jitter * np.mean(np.diagonal(flat(p["k_ll"])))


# ----------------------------------------------------------------------------- Eq. 12


@pytest.mark.parametrize("full,resid,jitter,E", [
    (False, True, 1e-3, None), (False, False, 0.0, None), (False, True, 0.0, 5),
    (True, True, 1e-3, None), (True, False, 0.0, 5), (True, True, 0.0, None)],
    ids=["first_logit-r-ridge", "first_logit-r0", "first_logit-r-Esep", "full-r-ridge",
         "full-r0-Esep", "full-r"])
def test_eq12_equals_augmented_solve(full, resid, jitter, E):
    with jax.enable_x64(True):
        p = random_problem(0, E=E, full=full, resid=resid)
        st, spec, info = la.build_system(**system_kwargs(p), jitter=jitter, chunk_size=4)
        fast = np.asarray(la.lookahead_outputs(spec, st))[:12]
        labels = np.argmax(p["f_u"], -1)
        ref = direct_lookahead(p, lam_of(p, jitter), labels, full)
        np.testing.assert_allclose(float(st.lam), lam_of(p, jitter), rtol=1e-15)
        # measured at most 9.4e-16 over these cases (full-r); 1e-14 is ~10x
        assert np.max(np.abs(fast - ref)) / np.max(np.abs(ref)) < 1e-14


# ----------------------------------------------------------------------------- scores vs loops


def loop_scores(p, kind, lam, full):
    """Straightforward loops over candidates and labels (Eq. 2, 3, 13, label flips)."""
    C = p["num_classes"]
    U = len(p["idx"][1])
    f_ref = p["f_e"] if "f_e" in p else p["f_u"]
    per_label = [direct_lookahead(p, lam, np.full(U, y), full) for y in range(C)]
    scores = []
    for j in range(U):
        logits = p["f_u"][j]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        yhat = int(np.argmax(logits))
        if kind == "mlmoc":
            s = np.sum(np.linalg.norm(per_label[yhat][j] - f_ref, axis=-1))
        elif kind == "label_flip":
            s = np.mean(np.argmax(per_label[yhat][j], -1) != np.argmax(f_ref, -1))
        elif kind == "emoc":
            s = sum(probs[y] * np.sum(np.linalg.norm(per_label[y][j] - f_ref, axis=-1))
                    for y in range(C))
        else:
            s = 0.0
            for y in range(C):
                z = per_label[y][j]
                q = np.exp(z - z.max(-1, keepdims=True))
                q /= q.sum(-1, keepdims=True)
                s -= probs[y] * np.sum(-np.sum(q * np.log(q), -1))
        scores.append(s)
    return np.array(scores)


@pytest.mark.parametrize("kind,full,E", [(k, False, None) for k in la.KINDS] + [
    ("mlmoc", True, 6), ("emoc", False, 6), ("eer", True, None), ("label_flip", True, 6)])
def test_scores_match_loops(kind, full, E):
    with jax.enable_x64(True):
        p = random_problem(1, E=E, full=full)
        st, spec, _ = la.build_system(**system_kwargs(p), jitter=1e-4, chunk_size=5)
        fast, _ = la.score_candidates(kind, spec, st)
        fast = np.asarray(fast)[:12]
        ref = loop_scores(p, kind, lam_of(p, 1e-4), full)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlmoc", "label_flip"])
def test_permutation_chunk_and_padding_invariance(kind):
    with jax.enable_x64(True):
        p = random_problem(2, U=13)
        base, _ = la.score_candidates(kind, *la.build_system(**system_kwargs(p),
                                                             chunk_size=13)[1::-1])
        base = np.asarray(base)
        for chunk, cap in [(4, None), (5, 30)]:
            st, spec, _ = la.build_system(**system_kwargs(p), chunk_size=chunk, capacity=cap)
            s, _ = la.score_candidates(kind, spec, st)
            np.testing.assert_allclose(np.asarray(s)[:13], base, rtol=1e-10, atol=1e-13)
        perm = np.random.RandomState(0).permutation(13)
        q = dict(system_kwargs(p), k_ul=p["k_ul"][perm], k_uu=p["k_uu"][np.ix_(perm, perm)],
                 f_u=p["f_u"][perm])
        s, _ = la.score_candidates(kind, *la.build_system(**q, chunk_size=4)[1::-1])
        np.testing.assert_allclose(np.asarray(s)[:13], base[perm], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("resid", [True, False], ids=["r", "r0"])
def test_duplicate_candidate_is_clamped(resid):
    """Candidate 0 duplicates labeled point 0: its Schur complement u is exactly 0 and is
    clamped (docs/ALGEBRA.md A4). Then v = K⁻¹k = e₀, so a(x, x′) = Θ(x,X)v − Θ(x,x′) = 0
    at every x: its look-ahead changes nothing beyond f^lin_L, and its MLMOC score is
    Σ_i ‖f^lin_L(x_i) − f(x_i)‖ (measured agreement 1.2e-10 relative: a(x, x′) is zero
    up to rounding, times c ∝ 1/(u_floor·κ)). With r = 0 that is 0 (measured 4.3e-10,
    the others ≥ 1.06): the duplicate ranks last."""
    with jax.enable_x64(True):
        p = random_problem(3, resid=resid)
        k = p["k_all"].copy()
        iL, iU, _ = p["idx"]
        k[iU[0]] = k[iL[0]]
        k[:, iU[0]] = k[:, iL[0]]
        p.update(k_all=k, k_ul=k[np.ix_(iU, iL)], k_uu=k[np.ix_(iU, iU)])
        st, spec, _ = la.build_system(**system_kwargs(p), jitter=0.0, u_floor=1e-6)
        s, clamped = la.score_candidates("mlmoc", spec, st)
    s = np.asarray(s)[:12]
    assert int(clamped) == 1 and np.all(np.isfinite(s))        # only the duplicate
    lin = krr(k, iL, iU, np.eye(p["num_classes"])[p["y_l"]], p["f_u"], p["f_l"], 0.0, False)
    nothing_learned = np.sum(np.linalg.norm(lin - p["f_u"], axis=-1))
    if resid:
        np.testing.assert_allclose(s[0], nothing_learned, rtol=1e-8)
    else:
        assert nothing_learned == 0.0 and s[0] < 1e-8 * np.min(s[1:])
        assert np.argmin(s) == 0


# ----------------------------------------------------------------------------- sequential


@pytest.mark.parametrize("full,E", [(False, None), (True, 5)], ids=["first_logit-E=U",
                                                                    "full-E_sep"])
def test_sequential_updates_match_fresh_solves(full, E):
    with jax.enable_x64(True):
        p = random_problem(4, E=E, full=full, U=10)
        C, jitter = p["num_classes"], 1e-3
        lam = lam_of(p, jitter)
        st, spec, _ = la.build_system(**system_kwargs(p), jitter=jitter, chunk_size=5,
                                      capacity=12, sequential=True)
        iL, iU, iE = p["idx"]
        picks, labels = [3, 7, 0, 9], [1, 0, 2, 1]
        for k, (j, y) in enumerate(zip(picks, labels), start=1):
            st = la.add_labeled(spec, st, np.int32(j), np.int32(y))
            train = np.concatenate([iL, iU[picks[:k]]])
            m = len(train) * spec.block
            fresh = np.linalg.cholesky(flat(p["k_all"][np.ix_(train, train)]) + lam * np.eye(m))
            np.testing.assert_allclose(np.asarray(st.chol)[:m, :m], fresh, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(np.asarray(st.chol)[:m, m:], 0.0, atol=1e-14)
            tgt = np.eye(C)[np.concatenate([p["y_l"], labels[:k]])]
            ftr = np.concatenate([p["f_l"], p["f_u"][picks[:k]]])
            lin_u = krr(p["k_all"], train, iU, tgt, p["f_u"], ftr, lam, full)
            np.testing.assert_allclose(np.asarray(st.lin_u).reshape(-1, C)[:10], lin_u,
                                       rtol=1e-9, atol=1e-11)
            if E:
                lin_e = krr(p["k_all"], train, iE, tgt, p["f_e"], ftr, lam, full)
                np.testing.assert_allclose(np.asarray(st.lin_e).reshape(-1, C), lin_e,
                                           rtol=1e-9, atol=1e-11)
        # The incrementally updated A equals the one of a fresh system on L ∪ picks.
        q = dict(system_kwargs(p), k_ll=p["k_all"][np.ix_(train, train)],
                 k_ul=p["k_all"][np.ix_(iU, train)], y_l=np.concatenate([p["y_l"], labels]),
                 f_l=ftr)
        if E:
            q["k_el"] = p["k_all"][np.ix_(iE, train)]
        # (the fresh λ must equal the sequential λ: pass it through the jitter ratio)
        st2, _, _ = la.build_system(**q, jitter=lam / np.mean(np.diagonal(flat(q["k_ll"]))),
                                    chunk_size=5, sequential=True)
        np.testing.assert_allclose(np.asarray(st.a_uu), np.asarray(st2.a_uu), rtol=1e-8,
                                   atol=1e-10)
        avail = np.asarray(st.available)
        np.testing.assert_allclose(np.asarray(st.schur)[avail], np.asarray(st2.schur)[avail],
                                   rtol=1e-8, atol=1e-10)


def test_sequential_step0_equals_batch_and_later_steps_rescore():
    with jax.enable_x64(True):
        p = random_problem(5, U=10)
        sb, spec_b, _ = la.build_system(**system_kwargs(p), chunk_size=5)
        ss, spec_s, _ = la.build_system(**system_kwargs(p), chunk_size=5, capacity=20,
                                        sequential=True)
        for kind in ("mlmoc", "eer"):
            b, _ = la.score_candidates(kind, spec_b, sb)
            s, _ = la.score_candidates(kind, spec_s, ss)
            np.testing.assert_allclose(np.asarray(s), np.asarray(b), rtol=1e-9, atol=1e-12)
        ss = la.add_labeled(spec_s, ss, np.int32(2), np.int32(0))
        s, _ = la.score_candidates("mlmoc", spec_s, ss, ref_is_lin=True)
        s = np.asarray(s)
        assert s[2] == -np.inf and np.all(np.isfinite(np.delete(s, 2)))
        # MLMOC after a step: Σ_{i ≠ picked} ‖f^lin_{+}(x_i) − f^lin(x_i)‖, by direct solves.
        C, lam = p["num_classes"], lam_of(p, 1e-5)   # build_system's default jitter
        iL, iU, _ = p["idx"]
        train = np.concatenate([iL, iU[[2]]])
        tgt = np.eye(C)[np.concatenate([p["y_l"], [0]])]
        ftr = np.concatenate([p["f_l"], p["f_u"][[2]]])
        lin = krr(p["k_all"], train, iU, tgt, p["f_u"], ftr, lam, False)
        keep = np.arange(10) != 2
        for j in [0, 5, 9]:
            yj = int(np.argmax(lin[j]))
            tr2 = np.concatenate([train, iU[[j]]])
            new = krr(p["k_all"], tr2, iU, np.concatenate([tgt, np.eye(C)[[yj]]]), p["f_u"],
                      np.concatenate([ftr, p["f_u"][[j]]]), lam, False)
            ref = np.sum(np.linalg.norm(new - lin, axis=-1)[keep])
            np.testing.assert_allclose(s[j], ref, rtol=1e-8)


# ----------------------------------------------------------------------------- step by step
# The greedy batch mode (pseudo-labels) and sequential mode (true labels) of
# ntk_lookahead.LookaheadSession, against a twin that rebuilds the augmented system of
# L ∪ {picks so far} from scratch at every step and scores every candidate by direct solves.


def stepwise_twin(p, lam, steps, *, first_step="network", true_labels=None, full=False):
    """MLMOC picks by explicit float64 solves: ``(picks, labels, scores per step)``.

    Step t's reference model is f_L (t = 0 and ``first_step="network"``) or f^lin of
    L ∪ {picks so far}; candidate j's look-ahead adds it with the pseudo-label argmax of
    its reference prediction; the score sums ‖f^lin_{+j} − reference‖ over the evaluation
    points (without the picks when E = U). The pick is absorbed with ``true_labels[j]``,
    or (``None``, greedy) with its pseudo-label.
    """
    iL, iU, iE = p["idx"]
    C = p["num_classes"]
    sep = len(iE) > 0
    ev, f_ev = (iE, p["f_e"]) if sep else (iU, p["f_u"])
    onehot = np.eye(C)
    train, tgt, ftr = list(iL), onehot[p["y_l"]], p["f_l"]
    picks, labels, all_scores = [], [], []
    for t in range(steps):
        if t == 0 and first_step == "network":
            ref_u, ref_ev = p["f_u"], f_ev
        else:
            ref_u = krr(p["k_all"], train, iU, tgt, p["f_u"], ftr, lam, full)
            ref_ev = krr(p["k_all"], train, ev, tgt, f_ev, ftr, lam, full)
        keep = np.ones(len(ev), bool) if sep else ~np.isin(np.arange(len(iU)), picks)
        scores = np.full(len(iU), -np.inf)
        for j in range(len(iU)):
            if j in picks:
                continue
            yj = int(np.argmax(ref_u[j]))
            new = krr(p["k_all"], train + [iU[j]], ev, np.vstack([tgt, onehot[yj]]), f_ev,
                      np.vstack([ftr, p["f_u"][j:j + 1]]), lam, full)
            scores[j] = np.sum(np.linalg.norm(new - ref_ev, axis=-1)[keep])
        j = int(np.argmax(scores))
        y = int(np.argmax(ref_u[j])) if true_labels is None else int(true_labels[j])
        picks.append(j)
        labels.append(y)
        all_scores.append(scores)
        train, tgt, ftr = train + [iU[j]], np.vstack([tgt, onehot[y]]), \
            np.vstack([ftr, p["f_u"][j:j + 1]])
    return picks, labels, all_scores


def _margin(scores):
    """Relative gap between the best and the second-best score (ties would make a pick
    comparison meaningless)."""
    top = np.sort(scores[np.isfinite(scores)])[::-1]
    return (top[0] - top[1]) / abs(top[0])


def _session(p, jitter, steps, first_step, chunk_size=5):
    st, spec, _ = la.build_system(**system_kwargs(p), jitter=jitter, chunk_size=chunk_size,
                                  capacity=len(p["y_l"]) + steps, sequential=True)
    return ntk_lookahead.LookaheadSession.from_system(
        st, spec, "mlmoc", num_candidates=len(p["idx"][1]), max_steps=steps,
        options=ntk_lookahead.LookaheadOptions(first_step=first_step))


# Largest relative deviation of a step's scores from the twin's, in float64: the fast
# path's rank-one updates and the twin's fresh solves round differently, at ~1e-14 here
# (measured max 1.1e-14 over these cases, full kernel with a separate E); 1e-12 leaves a
# margin of ~100x for other BLAS / summation orders.
STEP_RTOL = 1e-12


@pytest.mark.parametrize("full,E,jitter,first_step", [
    (False, None, 1e-3, "network"), (False, None, 0.0, "linearised"),
    (False, 5, 1e-3, "network"), (True, None, 1e-3, "network"), (True, 5, 0.0, "linearised")],
    ids=["first_logit", "first_logit-linearised", "first_logit-Esep", "full", "full-Esep-lin"])
def test_greedy_batch_matches_rebuilt_augmented_systems(full, E, jitter, first_step):
    """Greedy batch mode: each pick absorbed with its pseudo-label, the rest re-scored."""
    steps = 5
    with jax.enable_x64(True):
        p = random_problem(11, L=6, U=14, E=E, full=full)
        picks, labels, twin_scores = stepwise_twin(p, lam_of(p, jitter), steps,
                                                   first_step=first_step, full=full)
        session = _session(p, jitter, steps, first_step)
        worst = 0.0
        for t in range(steps):
            s = np.asarray(session.scores()[0])
            fin = np.isfinite(twin_scores[t])
            np.testing.assert_array_equal(np.isfinite(s), fin)
            worst = max(worst, np.max(np.abs(s[fin] - twin_scores[t][fin])
                                      / np.abs(twin_scores[t][fin])))
            assert _margin(twin_scores[t]) > 1e-6
            j = session.best()
            assert (j, session.pseudo_label(j)) == (picks[t], labels[t])
            session.absorb(j, session.pseudo_label(j))
        print(f"max relative score deviation from the twin: {worst:.2e}")
        assert worst < STEP_RTOL
        run = _session(p, jitter, steps, first_step).run(steps)     # the same, in one call
        assert run.indices.tolist() == picks and run.labels.tolist() == labels
        assert len(set(picks)) == steps


def test_first_step_network_vs_linearised_against_twin():
    """Sequential mode with TRUE labels, both first-step references, against the twin.

    With r = Y − f_L(X) ≠ 0, f^lin_L ≠ f_L: the step-0 scores differ, and on this problem
    (seed 3, found by scanning seeds 0-11: 6 of 12 differ) so does the first pick: 13 with
    f_L as reference, 1 with f^lin_L. The twin shows the difference is real (each mode's
    best score leads its runner-up by > 3%, far above rounding), and each mode reproduces
    its twin's picks.
    With r = 0 (f_L fits its labels) f^lin_L = f_L and the two step-0 scores agree.
    """
    steps, jitter = 4, 1e-3
    with jax.enable_x64(True):
        p = random_problem(3, L=6, U=14)
        true = np.random.RandomState(1).randint(0, p["num_classes"], 14)
        lam = lam_of(p, jitter)
        firsts = {}
        for mode in ("network", "linearised"):
            picks, labels, twin_scores = stepwise_twin(p, lam, steps, first_step=mode,
                                                       true_labels=true)
            session = _session(p, jitter, steps, mode)
            s0 = np.asarray(session.scores()[0])
            np.testing.assert_allclose(s0, twin_scores[0], rtol=STEP_RTOL)
            assert all(_margin(ts) > 1e-6 for ts in twin_scores)
            run = session.run(steps, label_fn=lambda j: int(true[j]))
            assert run.indices.tolist() == picks and run.labels.tolist() == labels
            np.testing.assert_allclose(np.asarray(run.first_scores), twin_scores[0],
                                       rtol=STEP_RTOL)
            firsts[mode] = picks[0]
        assert firsts["network"] != firsts["linearised"]
        # r = 0: the two references coincide, and so do the step-0 scores.
        q = random_problem(3, L=6, U=14, resid=False)
        s_net = np.asarray(_session(q, jitter, 1, "network").scores()[0])
        s_lin = np.asarray(_session(q, jitter, 1, "linearised").scores()[0])
        np.testing.assert_allclose(s_net, s_lin, rtol=STEP_RTOL)


def _float64_context(**kw):
    """test_strategies' tiny context (an untrained MLP, so r ≠ 0), cast to float64."""
    from test_strategies import make_context

    ctx = make_context(**kw)
    return dataclasses.replace(
        ctx, x_labeled=jnp.asarray(ctx.x_labeled, jnp.float64),
        x_candidates=jnp.asarray(ctx.x_candidates, jnp.float64),
        params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ctx.params))


def _twin_problem(ctx, output):
    """``random_problem``'s layout with brute-force jacrev kernels of the context's network."""
    x = jnp.concatenate([ctx.x_labeled, ctx.x_candidates])
    k_all = np.asarray(bruteforce_kernel_set(ctx.apply_fn, ctx.params, x, x, output)[0])
    L, U = ctx.num_labeled, ctx.num_candidates
    iL, iU = np.arange(L), np.arange(L, L + U)
    return dict(k_all=k_all, idx=(iL, iU, np.arange(0)), k_ll=k_all[np.ix_(iL, iL)],
                y_l=np.asarray(ctx.y_labeled), num_classes=ctx.num_classes,
                f_l=np.asarray(ctx.apply_fn(ctx.params, ctx.x_labeled)),
                f_u=np.asarray(ctx.apply_fn(ctx.params, ctx.x_candidates)))


@pytest.mark.parametrize("kernel,first_step", [
    ("first_logit", "network"), ("first_logit", "linearised"), ("full", "network")])
def test_strategy_greedy_batch_picks_equal_the_twin(kernel, first_step):
    jitter = 1e-3
    with jax.enable_x64(True):
        opts = dict(batch_mode="greedy", kernel=kernel, first_step=first_step,
                    jitter=jitter, chunk_size=8)
        ctx = _float64_context(options=opts)
        sel = get_strategy("mlmoc")(ctx)
        p = _twin_problem(ctx, kernel)
        picks, _, twin_scores = stepwise_twin(p, lam_of(p, jitter), ctx.query_size,
                                              first_step=first_step, full=kernel == "full")
        topk = get_strategy("mlmoc")(dataclasses.replace(
            ctx, options=dict(opts, batch_mode="topk")))
    assert all(_margin(ts) > 1e-6 for ts in twin_scores)
    assert sel.indices.tolist() == picks and len(set(picks)) == ctx.query_size
    assert sel.revealed is None
    # Selection.scores are the step-0 scores. The strategy's kernels come from the NTK
    # engine, the twin's from jacrev; both float64 (measured agreement ~1e-14 relative).
    np.testing.assert_allclose(np.asarray(sel.scores), twin_scores[0], rtol=1e-10)
    if first_step == "network":      # step 0 is the paper's batch score
        np.testing.assert_allclose(np.asarray(topk.scores), np.asarray(sel.scores),
                                   rtol=1e-10)
        assert topk.indices[0] == sel.indices[0]


@pytest.mark.parametrize("kind", la.KINDS)
def test_greedy_batch_every_kind(kind):
    """Every look-ahead score runs greedy: distinct picks, the first one the top-k's, and
    step-0 scores equal to the batch scores (float64: only rounding separates them)."""
    with jax.enable_x64(True):
        ctx = _float64_context(options=dict(batch_mode="greedy", chunk_size=8))
        sel = get_strategy(kind)(ctx)
        topk = get_strategy(kind)(dataclasses.replace(ctx, options=dict(chunk_size=8)))
    assert len(set(sel.indices.tolist())) == ctx.query_size and sel.revealed is None
    assert np.all((0 <= sel.indices) & (sel.indices < ctx.num_candidates))
    np.testing.assert_allclose(np.asarray(sel.scores), np.asarray(topk.scores), rtol=1e-10)
    assert sel.indices[0] == topk.indices[0]


def test_strategy_sequential_first_step_both_ways_against_twin():
    """Sequential MLMOC with true labels, first_step network and linearised, against the
    twin. On this untrained network (r ≠ 0; context seed 6, found by scanning seeds 0-7:
    4 of 8 differ) the first picks differ: 24 from f_L, 27 from f^lin_L, each leading its
    runner-up by > 3%."""
    jitter = 1e-3
    true = np.random.RandomState(0).randint(0, 4, 30)
    firsts = {}
    with jax.enable_x64(True):
        for mode in ("network", "linearised"):
            ctx = _float64_context(seed=6, label_fn=lambda j: int(true[j]),
                                   options=dict(first_step=mode, jitter=jitter, chunk_size=8))
            sel = get_strategy("mlmoc")(ctx)
            p = _twin_problem(ctx, "first_logit")
            picks, labels, twin_scores = stepwise_twin(p, lam_of(p, jitter), ctx.query_size,
                                                       first_step=mode, true_labels=true)
            assert all(_margin(ts) > 1e-6 for ts in twin_scores)
            assert sel.indices.tolist() == picks
            assert sel.revealed.tolist() == labels == true[picks].tolist()
            np.testing.assert_allclose(np.asarray(sel.scores), twin_scores[0], rtol=1e-10)
            firsts[mode] = picks[0]
    assert firsts["network"] != firsts["linearised"], firsts


def test_session_from_system_refuses_a_system_without_room():
    p = random_problem(0, L=6, U=10)
    st, spec, _ = la.build_system(**system_kwargs(p), capacity=8, sequential=True)
    ntk_lookahead.LookaheadSession.from_system(st, spec, num_candidates=10, max_steps=2)
    with pytest.raises(ValueError, match="no room for 3 more"):
        ntk_lookahead.LookaheadSession.from_system(st, spec, num_candidates=10, max_steps=3)
    batch, spec_b, _ = la.build_system(**system_kwargs(p), capacity=8)
    with pytest.raises(ValueError, match="sequential=True"):
        ntk_lookahead.LookaheadSession.from_system(batch, spec_b, num_candidates=10,
                                                   max_steps=1)


def test_greedy_option_is_validated():
    with pytest.raises(ValueError, match="batch_mode"):
        get_strategy("mlmoc").parse_options({"batch_mode": "diverse"})
    for bad in ({"streaming": True}, {"block": False}):
        with pytest.raises(ValueError, match="greedy"):
            get_strategy("mlmoc").parse_options({"batch_mode": "greedy", **bad})


def _pad_labeled_side(kw, capacity):
    """The labeled side padded to ``capacity`` with junk rows, as the strategies pass it."""
    L = kw["k_ll"].shape[0]
    junk = np.random.RandomState(9)

    def pad(a, axes):
        shape = list(a.shape)
        for ax in axes:
            shape[ax] = capacity
        out = junk.randn(*shape).astype(a.dtype) if a.dtype.kind == "f" else \
            junk.randint(0, 3, shape).astype(a.dtype)
        out[tuple(slice(0, n) for n in a.shape)] = a
        return out

    return dict(kw, k_ll=pad(kw["k_ll"], (0, 1)), k_ul=pad(kw["k_ul"], (1,)),
                y_l=pad(kw["y_l"], (0,)), f_l=pad(kw["f_l"], (0,)), num_labeled=L)


def test_labeled_side_padded_with_junk_gives_the_same_system():
    p = random_problem(3, L=10, U=16, P=60)
    kw = system_kwargs(p)
    for seq in (False, True):
        st, spec, _ = la.build_system(**kw, capacity=30, chunk_size=8, sequential=seq)
        sp, spec_p, _ = la.build_system(**_pad_labeled_side(kw, 30), chunk_size=8,
                                        sequential=seq)
        for name in ("chol", "lin_u", "schur", "resid", "lam"):
            np.testing.assert_array_equal(np.asarray(getattr(sp, name)),
                                          np.asarray(getattr(st, name)))
        s1, _ = la.score_candidates("mlmoc", spec, st)
        s2, _ = la.score_candidates("mlmoc", spec_p, sp)
        np.testing.assert_array_equal(np.asarray(s2), np.asarray(s1))


def test_no_recompilation_across_cycles_and_steps():
    fns = [la._build, la._batch_scores, la._sequential_scores, la._step_vectors,
           la._apply_step]

    def cycle(seed, L, sequential):
        p = random_problem(seed, L=L, U=16, P=60)
        p = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64
                 else v) for k, v in p.items()}
        st, spec, _ = la.build_system(**_pad_labeled_side(system_kwargs(p), 30),
                                      chunk_size=8, sequential=sequential)
        if not sequential:
            return la.score_candidates("mlmoc", spec, st)
        for t, j in enumerate([1, 5, 9]):
            la.score_candidates("mlmoc", spec, st, ref_is_lin=t > 0)
            st = la.add_labeled(spec, st, np.int32(j), np.int32(t % 3))

    for seq in (False, True):
        cycle(0, 10, seq)
    sizes = [f._cache_size() for f in fns]
    for seq in (False, True):
        cycle(1, 14, seq)          # a larger labeled set, same capacity
        cycle(2, 20, seq)
    assert [f._cache_size() for f in fns] == sizes


# ----------------------------------------------------------------------------- Theorem 3.1


def _theorem31_benchmark():
    """benchmarks/theorem31.py as a module (the test runs the benchmark's own code)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "theorem31", os.path.join(REPO, "benchmarks", "theorem31.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# What benchmarks/theorem31.py measured (benchmarks/results/theorem31_cpu.json; toy and
# digits, seeds 0-7 each, widths 256 / 1024 / 4096, every training converged to a max
# residual < 1e-8) holds for EVERY seed, both problems and both kernels:
#   (a) each seed's error at width 4096 is below its error at width 256: by a factor of
#       at least 2.0 for the single-logit kernel (toy seed 6: 0.093 -> 0.046) and 6.9 for
#       the full kernel (toy seed 6: 0.047 -> 0.0068). (256 > 1024 > 4096 also held for
#       every seed, but toy seed 6 with the full kernel passed it by 0.1% (0.04742 >
#       0.04738), too thin to assert.)
#   (b) on the toy, the error at width 4096 is at most 0.068 (single-logit, seed 2) and
#       0.020 (full kernel, seed 2); the bounds below are ~2x those maxima.
# The test re-runs the benchmark's own code on the toy for seeds 0-2 (seed 2 is the
# worst at 4096 for both kernels) at widths 256 and 4096 and asserts (a) and (b). Each
# retraining must also converge. (An earlier test asserted 256 > 1024 > 4096 for one seed
# of a toy trained for a fixed 20,000 steps; that held for its seed only.)
THEOREM31_BOUND_4096 = {"first_logit": 0.15, "full": 0.05}


@pytest.mark.slow
def test_theorem_3_1_error_falls_with_width_for_every_seed():
    bench = _theorem31_benchmark()
    with jax.enable_x64(True):
        runs = {(w, seed): bench.run_one("toy", w, seed, bench.SIZES["toy"], bench.TRAIN_KW)
                for w in (256, 4096) for seed in (0, 1, 2)}
    for (w, seed), r in runs.items():
        assert r["converged"], (w, seed, r["train_f_L"], r["retrain"])
    for kernel, bound in THEOREM31_BOUND_4096.items():
        errs = {key: r["rel_error"][kernel] for key, r in runs.items()}
        print(kernel, {k: f"{v:.3g}" for k, v in errs.items()})
        for seed in (0, 1, 2):
            assert errs[4096, seed] < errs[256, seed], (kernel, seed, errs)
            assert errs[4096, seed] < bound, (kernel, seed, errs)


# ----------------------------------------------------------------------------- strategy glue


def _context(seed=0, L=10, U=24, C=3, label_fn=None, **options):
    model = models.get_model("mlp", C, widths=(32,))
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.RandomState(seed)
    x = rng.randn(L + U, 4, 4, 1).astype(np.float32)
    return AcquisitionContext(
        model=model, params=variables.params, state=variables.state,
        x_labeled=jnp.asarray(x[:L]), y_labeled=jnp.asarray(rng.randint(0, C, L)),
        x_candidates=jnp.asarray(x[L:]), num_classes=C, query_size=4,
        key=jax.random.PRNGKey(1), label_fn=label_fn, labeled_capacity=L + 8,
        options=options)


def _kernels(ctx, output, **options):
    opts = get_strategy("mlmoc").parse_options({**(ctx.options or {}), **options,
                                                "kernel": output})
    return ntk_lookahead.kernels(ctx, opts, jnp.asarray(ctx.x_labeled), False)[0]


# The strategies run in float32 (the default) and are compared with the float64 twin
# (jacrev kernels of the same parameters, loops over candidates and labels): measured at
# most 1.4e-7 relative to the largest score (emoc), 7.4e-8 for the kernels. 2e-6 and 1e-6
# are ~15x; a wrong term, sign or index is orders of magnitude more.
FLOAT32_TWIN_RTOL = 2e-6


def _float32_twin_scores(ctx, kind, kernel="first_logit", jitter=1e-5):
    """``loop_scores`` on jacrev kernels of ``ctx``'s float32 network, cast to float64."""
    with jax.enable_x64(True):
        c64 = dataclasses.replace(
            ctx, x_labeled=jnp.asarray(ctx.x_labeled, jnp.float64),
            x_candidates=jnp.asarray(ctx.x_candidates, jnp.float64),
            params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ctx.params))
        p = _twin_problem(c64, kernel)
    return loop_scores(p, kind, lam_of(p, jitter), kernel == "full")


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name,kernel", [(k, "first_logit") for k in la.KINDS] + [
    ("mlmoc", "sum_logits"), ("emoc", "full")])
def test_strategy_end_to_end(name, kernel):
    ctx = _context(kernel=kernel, chunk_size=8)
    sel = get_strategy(name)(ctx)
    assert get_strategy(name).sequential
    assert sel.scores.shape == (24,) and sel.scores.dtype == jnp.float32
    twin = _float32_twin_scores(ctx, name, kernel)
    assert _max_rel(sel.scores, twin) < FLOAT32_TWIN_RTOL, _max_rel(sel.scores, twin)
    # the top 4 of the twin's scores, best first, ties to the lower index
    assert sel.indices.tolist() == np.argsort(-twin, kind="stable")[:4].tolist()
    assert "jitter" in sel.info and "clamped" in sel.info
    sel2 = get_strategy(name)(ctx)
    np.testing.assert_array_equal(sel.indices, sel2.indices)
    np.testing.assert_array_equal(sel.scores, sel2.scores)


def test_strategy_matches_bruteforce_kernels_and_eval_set_and_streaming():
    ctx = _context(chunk_size=8)
    base = get_strategy("mlmoc")(ctx)
    # float32 kernels against float64 jacrev kernels of the same parameters (measured
    # 7.4e-8 relative to the largest entry; bound 1e-6)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ctx.params)
        x64 = [jnp.asarray(a, jnp.float64) for a in (ctx.x_labeled, ctx.x_candidates)]
        refs = {out: np.asarray(bruteforce_kernel_set(ctx.apply_fn, p64, *x64, out)[2])
                for out in ("first_logit", "full")}
    assert _max_rel(_kernels(ctx, "first_logit")["k_uu"], refs["first_logit"]) < 1e-6
    # Θ(U, U) from upper tiles + mirroring (tile 5 of 24: ragged tiles), scalar and full.
    for out in ("first_logit", "full"):
        tiled = _kernels(_context(chunk_size=8, gram_tile=5), out)["k_uu"]
        assert _max_rel(tiled, refs[out]) < 1e-6, out
    # The streaming path and an explicit evaluation set equal to the candidates, each
    # against the float64 twin (not against the engine's own default path).
    twin = _float32_twin_scores(ctx, "mlmoc")
    assert _max_rel(base.scores, twin) < FLOAT32_TWIN_RTOL
    stream = get_strategy("mlmoc")(_context(chunk_size=8, streaming=True))
    assert _max_rel(stream.scores, twin) < FLOAT32_TWIN_RTOL
    sep = get_strategy("mlmoc")(_context(chunk_size=8, eval_x=ctx.x_candidates))
    assert _max_rel(sep.scores, twin) < FLOAT32_TWIN_RTOL


def test_strategy_sequential_records_labels_in_order():
    asked = []

    def label_fn(j):
        asked.append(j)
        return j % 3

    ctx = _context(label_fn=label_fn, chunk_size=8)
    sel = get_strategy("mlmoc")(ctx)
    assert asked == sel.indices.tolist() and len(set(asked)) == 4
    np.testing.assert_array_equal(sel.revealed, np.asarray(asked) % 3)
    batch = get_strategy("mlmoc")(_context(chunk_size=8))
    assert sel.indices[0] == batch.indices[0]
    np.testing.assert_allclose(sel.scores, batch.scores, rtol=1e-5)


def test_benchmark_quick(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "lookahead_bench.py"),
                        "--quick", "--skip-scale", "--out", str(out)], capture_output=True,
                       text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    res = json.loads(out.read_text())
    per = res["per_acquisition"]
    assert res["quick"] and per["block_s"] > 0 and per["seq_step_ms_median"] > 0
    # (a), (b) agree to float32 rounding: measured 2.2e-7 (quick, CPU); bound ~20x
    assert per["no_block_vs_block_max_rel_diff"] < 5e-6


def test_without_block_equals_block_scores():
    """The paper's "NTK w/o Block" path (every augmented system solved) scores the same."""
    from test_strategies import make_context

    with jax.enable_x64(True):
        ctx = make_context(num_candidates=25)
        ctx = dataclasses.replace(ctx, x_labeled=jnp.asarray(ctx.x_labeled, jnp.float64),
                                  x_candidates=jnp.asarray(ctx.x_candidates, jnp.float64),
                                  params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                                      ctx.params))
        with_block = get_strategy("mlmoc")(ctx)
        without = get_strategy("mlmoc")(dataclasses.replace(ctx, options={"block": False}))
    # float64: measured 4.0e-16 apart (each 5.4e-16 from the loop twin); bound ~25x
    np.testing.assert_allclose(without.scores, with_block.scores, rtol=1e-14)
    np.testing.assert_array_equal(without.indices, with_block.indices)
    with pytest.raises(ValueError, match="w/o Block"):
        get_strategy("emoc")(dataclasses.replace(ctx, options={"block": False}))
