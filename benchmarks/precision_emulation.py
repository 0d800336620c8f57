"""What reduced matmul precision would do to the look-ahead, emulated on CPU.

A TPU runs a float32 matmul at JAX's default precision as one bfloat16 pass (8-bit
mantissa); A100/H100/H200-class GPUs may use TF32 (10-bit mantissa). This benchmark
rounds the OPERANDS of every matmul to those mantissas and accumulates in float32 (what
those units do), and compares with float64:

* ``kernel``: every contraction of the NTK engine's Gram (the features of
  ``ntk.ntk_features``: Jacobian rows, layer inputs A and cotangents Δ, the operands of
  every matmul of ``_contract``) rounded; the features themselves (the network's passes)
  in float32. Not emulated: rounding inside the network's own passes.
* ``algebra``: the look-ahead algebra of ``lookahead.py`` (batch MLMOC, Eq. 12-13) with
  every product rounded: the blocked Cholesky's trailing updates and the blocked
  triangular solves' updates (as XLA expands them on TPU; block 128), W_Uᵀ z, the Schur
  norms ‖W_U[:, j]‖², W_Uᵀ W_U and the score's (f^lin − f)·c.
* ``both``; and ``float32`` (everything float32, operands unrounded: HIGHEST).

Reported per row against the float64 computation (float64 kernels, float64 algebra):
kernel error (max |ΔΘ| / max |Θ| over Θ_LL, Θ_UL, Θ_UU), Schur-complement error
(max |Δu_j| / κ_j), score error (max |Δs| / max |s|), clamped candidates (u_j below
``u_floor`` · κ_j; float64's count in ``clamped_f64``), and top-k agreement (|top-k ∩
top-k_f64| / k, k = 20).

    nice -n 10 python benchmarks/precision_emulation.py            # ~10 min on 2 cores
    nice -n 10 python benchmarks/precision_emulation.py --quick    # seconds, to /tmp

Networks (digits, 8×8): the MLP 64-256-256-10 and the library's WideResNet (one group,
widen factor 1: width 16, the MNIST WRN config's family at a small width), each trained
on its L labels (``train.fit``, MSE as the paper). L = 100 and 1,000 labels, U = 400
candidates, jitter 0 and 1e-5 (relative, the library's default), seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402

jax.config.update("jax_enable_x64", True)

from lookahead_jax import data, models, ntk, train  # noqa: E402
from lookahead_jax.ntk import empirical  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
U_FLOOR = 1e-6
TOP_K = 20
BLOCK = 128


# ------------------------------------------------------------------------- rounding
def round_mantissa(a: np.ndarray, bits: int | None) -> np.ndarray:
    """float32 ``a`` rounded to ``bits`` explicit mantissa bits (nearest even);
    ``None``: unchanged. bfloat16: 7, TF32: 10."""
    a = np.asarray(a, np.float32)
    if bits is None:
        return a
    drop = 23 - bits
    u = a.view(np.uint32).astype(np.uint64)
    half = (1 << (drop - 1)) - 1
    u = (u + half + ((u >> drop) & 1)) & ~np.uint64((1 << drop) - 1)
    return u.astype(np.uint32).view(np.float32)


MODES = {"float32": None, "tf32": 10, "bf16": 7}


def mm(a, b, bits):
    """a @ b with operands rounded to ``bits`` (float32 accumulate); float64 passes through."""
    if a.dtype == np.float64:
        return a @ b
    return round_mantissa(a, bits) @ round_mantissa(b, bits)


# ------------------------------------------------------------------------ the algebra
def cholesky_blocked(k, bits):
    """Right-looking blocked Cholesky: panels exact in the dtype, trailing updates by mm."""
    k = k.copy()
    n = k.shape[0]
    lc = np.zeros_like(k)
    for s in range(0, n, BLOCK):
        e = min(s + BLOCK, n)
        d = np.linalg.cholesky(k[s:e, s:e])
        lc[s:e, s:e] = d
        if e < n:
            panel = np.linalg.solve(d, k[e:, s:e].T).T            # small, in the dtype
            lc[e:, s:e] = panel
            k[e:, e:] -= mm(panel, panel.T, bits)
    return lc


def solve_lower_blocked(lc, b, bits):
    """Lc⁻¹ b by block forward substitution; the off-diagonal updates by mm."""
    n = lc.shape[0]
    x = np.zeros_like(b)
    for s in range(0, n, BLOCK):
        e = min(s + BLOCK, n)
        rhs = b[s:e] - (mm(lc[s:e, :s], x[:s], bits) if s else 0)
        x[s:e] = np.linalg.solve(lc[s:e, s:e], rhs)
    return x


def mlmoc(kll, kul, kuu, f_l, y_l, f_u, jitter, bits):
    """Batch MLMOC scores (Eq. 12-13, E = U) as lookahead.py computes them.

    Returns (scores (U,), Schur complements u (U,), κ (U,)). dtype of the inputs.
    """
    dt = kll.dtype
    n, c = f_l.shape
    lam = dt.type(jitter) * np.mean(np.diag(kll))
    lc = cholesky_blocked(kll + lam * np.eye(n, dtype=dt), bits)
    r = np.eye(c, dtype=dt)[y_l] - f_l
    z = solve_lower_blocked(lc, r, bits)
    w = solve_lower_blocked(lc, kul.T.copy(), bits)                 # (L, U)
    lin = f_u + mm(w.T, z, bits)
    wr = round_mantissa(w, bits) if dt == np.float32 else w
    kap = np.diag(kuu).copy()
    u = kap + lam - np.sum(wr * wr, axis=0)
    a = mm(w.T, w, bits) - kuu                                      # Aᵀ (U, U), symmetric
    y_hat = np.eye(c, dtype=dt)[np.argmax(f_u, -1)]
    cvec = (lin - y_hat) / np.maximum(u, U_FLOOR * kap)[:, None]    # (U, C)
    off = lin - f_u                                                 # (E = U, C)
    cross = mm(off, cvec.T, bits)                                   # (E, U): b_i·c_j
    sq = (np.sum(off * off, -1)[:, None] + 2.0 * a.T * cross
          + (a.T ** 2) * np.sum(cvec * cvec, -1)[None, :])
    s = np.sum(np.sqrt(np.maximum(sq, 0.0)), axis=0)
    return s, u, kap


# ---------------------------------------------------------------------------- kernels
def features(f, params, x, dtype):
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
    return ntk.ntk_features(f, cast(params), jnp.asarray(x, dtype), implementation="structured",
                            precision=jax.lax.Precision.HIGHEST)


def gram(fa, fb, bits):
    """Θ from features; float32 features' operands rounded to ``bits``."""
    if fa.rows.dtype == jnp.float32 and bits is not None:
        rd = lambda t: jax.tree.map(  # noqa: E731
            lambda a: jnp.asarray(round_mantissa(np.asarray(a), bits)), t)
        fa, fb = rd(fa), rd(fb)
    return np.asarray(empirical._contract(fa, fb, jax.lax.Precision.HIGHEST))


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


# ----------------------------------------------------------------------------- driver
def train_net(name, kwargs, x, y, epochs, seed):
    model = models.get_model(name, 10, **kwargs)
    key = jax.random.key(seed)
    variables = model.init(key, jnp.asarray(x[:1]))
    cfg = train.TrainConfig(epochs=epochs, batch_size=32, learning_rate=0.05,
                            weight_decay=0.0)
    state, loss = train.fit(train.create_train_state(model, variables, cfg), x, y, cfg,
                            key=jax.random.fold_in(key, 1))
    return model, state.params, state.model_state, float(loss)


def case(net, L, U, epochs, ds, seed, jitters):
    gen = np.random.default_rng(seed)
    perm = gen.permutation(ds.x_train.shape[0])
    lab, cand = perm[:L], perm[L:L + U]
    x_l, y_l, x_u = ds.x_train[lab], ds.y_train[lab], ds.x_train[cand]
    name, kw = ("mlp", {"widths": (256, 256)}) if net == "mlp" else (
        "wide_resnet", {"num_groups": 1, "blocks_per_group": 1, "widen_factor": 1})
    t0 = time.perf_counter()
    model, params, mstate, loss = train_net(name, kw, x_l, y_l, epochs, seed)
    t_train = time.perf_counter() - t0
    rows = []
    ref = {}
    for dt in (jnp.float64, jnp.float32):
        cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dt), t)  # noqa: E731
        f = model.bind(cast(mstate))
        fl, fu = features(f, params, x_l, dt), features(f, params, x_u, dt)
        fx = lambda x: np.asarray(f(cast(params), jnp.asarray(x, dt)))  # noqa: E731
        ref[dt] = dict(fl=fl, fu=fu, f_l=fx(x_l), f_u=fx(x_u))
    r64 = ref[jnp.float64]
    k64 = [gram(r64["fl"], r64["fl"], None), gram(r64["fu"], r64["fl"], None),
           gram(r64["fu"], r64["fu"], None)]
    r32 = ref[jnp.float32]
    for jitter in jitters:
        try:
            s64, u64, kap64 = mlmoc(*k64, r64["f_l"], y_l, r64["f_u"], jitter, None)
        except np.linalg.LinAlgError as e:   # Θ_LL + λI not positive definite in float64
            rows.append(dict(net=net, L=L, U=U, jitter=jitter, target="float64",
                             mode="float64", failed=f"float64: {e}"))
            continue
        top64 = set(np.argsort(-s64)[:TOP_K].tolist())
        for target in ("float32", "kernel", "algebra", "both"):
            for mode, bits in MODES.items():
                if (target == "float32") != (mode == "float32"):
                    continue
                kb = bits if target in ("kernel", "both") else None
                ab = bits if target in ("algebra", "both") else None
                k32 = [gram(r32["fl"], r32["fl"], kb), gram(r32["fu"], r32["fl"], kb),
                       gram(r32["fu"], r32["fu"], kb)]
                kerr = max(rel(a, b) for a, b in zip(k32, k64))
                try:
                    s, u, kap = mlmoc(*k32, r32["f_l"].astype(np.float32), y_l,
                                      r32["f_u"].astype(np.float32), jitter, ab)
                except np.linalg.LinAlgError as e:   # a miss is a result: recorded
                    rows.append(dict(net=net, L=L, U=U, jitter=jitter, target=target,
                                     mode=mode, kernel_err=kerr, failed=f"Cholesky: {e}"))
                    continue
                top = set(np.argsort(-s)[:TOP_K].tolist())
                finite = bool(np.all(np.isfinite(s)))
                rows.append(dict(
                    net=net, L=L, U=U, jitter=jitter, target=target, mode=mode,
                    kernel_err=kerr,
                    schur_err=float(np.max(np.abs(u - u64) / kap64)),
                    score_err=rel(s, s64) if finite else float("inf"),
                    clamped=int(np.sum(u < U_FLOOR * kap)),
                    clamped_f64=int(np.sum(u64 < U_FLOOR * kap64)),
                    topk_agreement=len(top & top64) / TOP_K,
                    min_schur_over_kappa_f64=float(np.min(u64 / kap64))))
    return rows, dict(net=net, L=L, train_s=t_train, train_loss=loss)


def code_version() -> dict:
    run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    return dict(commit=run("rev-parse", "HEAD"),
                dirty=bool(run("status", "--porcelain", "--untracked-files=no")))


def table(rows) -> str:
    """The README's Markdown table of a result file's rows."""
    head = ("| net | L | jitter | rounded | mantissa | kernel err | Schur err / κ | "
            "score err | clamped (f64) | top-20 agree |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        if "failed" in r:
            err = f"{r['kernel_err']:.1e}" if "kernel_err" in r else "-"
            out.append(f"| {r['net']} | {r['L']} | {r['jitter']:g} | {r['target']} "
                       f"| {r['mode']} | {err} | {r['failed']} | | | |")
            continue
        out.append(f"| {r['net']} | {r['L']} | {r['jitter']:g} | {r['target']} | {r['mode']} "
                   f"| {r['kernel_err']:.1e} | {r['schur_err']:.1e} | {r['score_err']:.1e} "
                   f"| {r['clamped']} ({r['clamped_f64']}) | {r['topk_agreement']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, JSON to /tmp")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", default=None,
                    help="print the README's table of a JSON file (rows 'both' are in the "
                         "JSON only)")
    a = ap.parse_args(argv)
    if a.table:
        with open(a.table) as fh:
            print(table([r for r in json.load(fh)["rows"] if r["target"] != "both"]))
        return None
    ds = data.load_dataset("digits")
    sizes = [(100, 40), (200, 40)] if a.quick else [(100, 400), (1000, 400)]
    epochs = {"mlp": 2 if a.quick else 100, "wrn": 1 if a.quick else 20}
    res = dict(machine=dict(platform=common.machine_info()["platform"], jax=jax.__version__,
                            devices=[str(d) for d in jax.devices()]),
               code=code_version(), seed=a.seed, quick=a.quick, dataset="digits",
               load_avg_start=common.load_avg(), top_k=TOP_K, u_floor=U_FLOOR,
               cholesky_block=BLOCK, rows=[], runs=[])
    out = a.out or (os.path.join("/tmp", "precision_emulation_quick.json") if a.quick
                    else os.path.join(HERE, "results", "precision_emulation_cpu.json"))
    res["complete"] = False
    t0 = time.perf_counter()
    for net in ("mlp", "wrn"):
        for L, U in sizes:
            rows, run = case(net, L, U, epochs[net], ds, a.seed, (0.0, 1e-5))
            res["rows"] += rows
            res["runs"].append(run)
            print(table(rows), flush=True)
            _write(res, out, t0)             # after every case: a partial run is kept
    res["complete"] = True
    _write(res, out, t0)
    print("wrote", out)
    return res


def _write(res, out, t0):
    res["seconds"] = time.perf_counter() - t0
    res["load_avg_end"] = common.load_avg()
    common.write_json(out, res)


if __name__ == "__main__":
    main()
