"""Tests of the NTK look-ahead (lookahead_jax/lookahead.py) against slow, obvious twins.

Every fast path is compared in float64 with: explicit (n+1)×(n+1) augmented-system
solves (Eq. 11), fresh Cholesky factorisations, straightforward loops over candidates and
labels (the twins of tests/twins.py). The look-ahead strategies' tests are in
tests/test_strategies.py, the benchmarks' (and Theorem 3.1's) in tests/test_benchmarks.py.
"""

import jax
import numpy as np
import pytest

from lookahead_jax import lookahead as la
from lookahead_jax.strategies import ntk_lookahead
from twins import (direct_lookahead, flat, krr, lam_of, loop_scores, margin,
                   random_problem, stepwise_twin, system_kwargs)


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
            assert margin(twin_scores[t]) > 1e-6
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
            assert all(margin(ts) > 1e-6 for ts in twin_scores)
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
