"""Float64 twins: slow, obviously-correct computations the fast paths are checked against.

One module for every test that needs one (``from twins import ...``):

* the brute-force empirical NTK (``jax.jacrev`` Jacobian rows, contracted):
  :func:`brute_force_ntk` (raveled parameters, two input sets), :func:`jacobian_gram`
  (the Gram of any ``p -> (n,)`` function's Jacobian over a pytree), and
  :func:`bruteforce_kernel_set` (per-example rows, the look-ahead's three kernel blocks);
* the naive look-ahead, one augmented system solved per candidate (docs/ALGEBRA.md A1):
  :func:`krr`, :func:`direct_lookahead`, :func:`loop_scores`, :func:`stepwise_twin`,
  on :func:`random_problem` kernels or on :func:`twin_problem` (jacrev kernels of a
  strategy context's network);
* relative errors: :func:`rel_err` (max |a − b| / max |b|, shapes must agree) and
  :func:`max_rel` (the same, cast to float64 first).

Call them under ``jax.enable_x64(True)`` with float64 inputs: they are then float64.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lookahead_jax import lookahead as la


# ----------------------------------------------------------------------------- errors


def rel_err(a, b):
    """max |a − b| / max |b| (shapes must agree)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def max_rel(a, b):
    """max |a − b| / max |b| in float64 (a float32 fast path against its twin)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- NTK


def brute_force_ntk(f, params, x1, x2, output, jit=True):
    """Slow, obviously-correct twin: jacrev of the raveled parameters, contracted. The
    jacrev is jitted by default: the same arithmetic in float64, 1.4-3.2x less CPU than op
    by op on the four FLAX networks of tests/test_ntk.py (``jit=False``: op by op, for
    the tiny networks of tests/test_ntk_speed_paths.py, where compiling costs more)."""
    flat_p, unravel = ravel_pytree(params)

    def g(p, x):
        out = f(unravel(p), x)
        if output == "first_logit":
            return out[:, :1]
        if output == "sum_logits":
            return out.sum(-1, keepdims=True) / np.sqrt(out.shape[-1])
        return out

    jac = jax.jit(jax.jacrev(g)) if jit else jax.jacrev(g)
    j1 = jac(flat_p, x1)
    j2 = j1 if x2 is x1 else jac(flat_p, x2)
    full = jnp.einsum("ikp,jlp->ijkl", j1, j2)
    if output == "full":
        return full
    if output == "trace":
        return jnp.einsum("ijkk->ij", full)
    return full[:, :, 0, 0]


def jacobian_rows(g, p, jit=False):
    """``(n, P)``: the Jacobian of ``g: p -> (n,)`` over every leaf of the pytree ``p``."""
    jac = jax.jacrev(g)
    leaves = jax.tree.leaves((jax.jit(jac) if jit else jac)(p))
    n = leaves[0].shape[0]
    return jnp.concatenate([j.reshape(n, -1) for j in leaves], axis=1)


def jacobian_gram(g, p, jit=False):
    """``J Jᵀ`` ``(n, n)`` of ``g: p -> (n,)`` over every leaf of ``p`` (works under vmap)."""
    rows = jacobian_rows(g, p, jit)
    return rows @ rows.T


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
        k = lambda a, c: a @ c.T    # noqa: E731
    elif output == "trace":
        k = lambda a, c: jnp.einsum("icp,jcp->ij", a, c)    # noqa: E731
    else:
        k = lambda a, c: jnp.einsum("icp,jdp->ijcd", a, c)    # noqa: E731
    return k(jl, jl), k(ju, jl), k(ju, ju)


# ----------------------------------------------------------------------------- problems


def random_problem(seed, L=7, U=12, E=None, C=3, full=False, resid=True, P=40):
    """Random PSD kernels from random features, labels and network outputs (float64).

    Returns a dict of numpy arrays; kernels are (n1, n2) or (n1, n2, C, C) when ``full``.
    """
    rng = np.random.RandomState(seed)
    n = L + U + (E or 0)
    z = rng.randn(n, C, P) if full else rng.randn(n, P)
    k = np.einsum("icp,jdp->ijcd", z, z) / P if full else z @ z.T / P
    sl = lambda a, b: k[a][:, b]    # noqa: E731
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
    """``random_problem``'s arrays as :func:`lookahead.build_system` keywords."""
    return {k: v for k, v in p.items() if k not in ("k_all", "idx")}


def flat(k):
    return la.flatten_kernel(k)


def lam_of(p, jitter):
    """The absolute ridge λ that ``build_system(jitter=...)`` uses on problem ``p``."""
    return jitter * np.mean(np.diagonal(flat(p["k_ll"])))


def twin_problem(ctx, output):
    """``random_problem``'s layout with brute-force jacrev kernels of the context's network."""
    x = jnp.concatenate([ctx.x_labeled, ctx.x_candidates])
    k_all = np.asarray(bruteforce_kernel_set(ctx.apply_fn, ctx.params, x, x, output)[0])
    L, U = ctx.num_labeled, ctx.num_candidates
    iL, iU = np.arange(L), np.arange(L, L + U)
    return dict(k_all=k_all, idx=(iL, iU, np.arange(0)), k_ll=k_all[np.ix_(iL, iL)],
                y_l=np.asarray(ctx.y_labeled), num_classes=ctx.num_classes,
                f_l=np.asarray(ctx.apply_fn(ctx.params, ctx.x_labeled)),
                f_u=np.asarray(ctx.apply_fn(ctx.params, ctx.x_candidates)))


# ----------------------------------------------------------------------------- the naive look-ahead


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


def margin(scores):
    """Relative gap between the best and the second-best score (ties would make a pick
    comparison meaningless)."""
    top = np.sort(scores[np.isfinite(scores)])[::-1]
    return (top[0] - top[1]) / abs(top[0])


def float64_context(ctx):
    """A strategy context with its inputs and parameters cast to float64 (x64 enabled)."""
    return dataclasses.replace(
        ctx, x_labeled=jnp.asarray(ctx.x_labeled, jnp.float64),
        x_candidates=jnp.asarray(ctx.x_candidates, jnp.float64),
        params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ctx.params))


def float32_twin_scores(ctx, kind, kernel="first_logit", jitter=1e-5):
    """``loop_scores`` on jacrev kernels of ``ctx``'s float32 network, cast to float64."""
    with jax.enable_x64(True):
        p = twin_problem(float64_context(ctx), kernel)
    return loop_scores(p, kind, lam_of(p, jitter), kernel == "full")
