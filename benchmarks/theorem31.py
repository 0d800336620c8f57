"""Theorem 3.1 / Eq. 11 against real retraining: relative error by width, seed and kernel.

The look-ahead predicts the network retrained on L⁺ = L ∪ {(x′, y′)} (warm-started from
f_L, gradient descent to convergence) with the empirical NTK Θ of f_L (paper Eq. 11):

    f^lin_{L+}(x) = f_L(x) + Θ(x, X⁺) Θ(X⁺, X⁺)⁻¹ (Y⁺ − f_L(X⁺)),

y′ = argmax f_L(x′) (the pseudo-label MLMOC uses). Theorem 3.1 says warm-started and
cold-started retraining agree in the infinite-width limit, where the NTK is constant, so
Eq. 11 should become exact as the width grows. This benchmark measures how close it is
at widths 256 / 1024 / 4096, over several seeds, for two kernels:

  * ``first_logit``: the single-logit kernel Θ¹ ⊗ I_C (paper Sec. 3, "Efficient
    computation"; the strategies' default);
  * ``full``: all C × C logit pairs (the exact empirical NTK of f_L).

and two problems:

  * ``toy``: x ~ N(0, I_3), y = [x₀ > 0] (2 classes), 8 labeled points, 1 candidate, 20
    evaluation points (the old unit test's problem);
  * ``digits``: scikit-learn's 8×8 digits through ``data.load_dataset("digits")``
    (standardised, flattened to 64 inputs, 10 classes): 30 random labeled points of the
    training split, 3 candidates from the rest of it, 200 evaluation points from the test
    split.

Network: one hidden layer of tanh units in the NTK parameterisation (Jacot et al. 2018,
the setting of the paper's proof, Appendix A):
f(x) = W₂ᵀ tanh(W₁ᵀ x / √d + β b₁) / √width + β b₂, every weight N(0, 1), β = 0.1.
One seed fixes the initialisation, the labeled subset, the candidates and the evaluation
points. All in float64 (``main`` enables x64; a caller of :func:`run_one`, e.g. the unit
test, wraps it in ``jax.enable_x64(True)``).

Training: full-batch gradient descent on ½ Σ ‖f(x) − onehot(y)‖², step size
η = 1 / λ_max(Θ_full(X, X)) measured at the starting point (stable for the linearised
dynamics, which need η < 2 / λ_max), f_0 → f_L cold, then f_L → f_{L+} warm, each run in
jitted blocks of steps until the largest training residual max |f(X) − Y| is below
``--tol`` (or ``--max-steps``). Every training's residual, steps and gradient norm are
recorded; a run that did not converge is flagged in the JSON (``converged: false``) and
counted in the summary.

Measured, per (problem, width, seed, kernel), on the evaluation points E (all C outputs):

    relative error = ‖f_{L+}(E) − f^lin_{L+}(E)‖ / ‖f_{L+}(E) − f_L(E)‖

(Frobenius over candidates, evaluation points and classes: 0 is exact, 1 is as wrong as
predicting no change at all), plus the kernel drift ‖Θ_{L+} − Θ_L‖ / ‖Θ_L‖ on X⁺ (full
kernel, between f_L and the retrained f_{L+}), which is what Eq. 11 neglects.

Run (≈ 45 min on one loaded CPU core; JSON with machine, sizes, seeds, load average and
every per-seed number):
    taskset -c 0 python benchmarks/theorem31.py
Smoke run (about a minute, mostly compilation; never writes the committed JSON):
    python benchmarks/theorem31.py --quick
The Markdown table quoted in README.md and notebook 02, from the committed JSON:
    python benchmarks/theorem31.py --table benchmarks/results/theorem31_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py

import common  # noqa: E402

from lookahead_jax import data  # noqa: E402
from lookahead_jax import lookahead as la  # noqa: E402
from lookahead_jax import ntk  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "theorem31_cpu.json")
QUICK_OUT = os.path.join(tempfile.gettempdir(), "theorem31_quick.json")
BETA = 0.1
KERNELS = ("first_logit", "full")
# per seed: labeled points, candidates (one retraining each), evaluation points
SIZES = {"toy": dict(labeled=8, candidates=1, eval=20),
         "digits": dict(labeled=30, candidates=3, eval=200)}
# GD until max |f(X) − Y| < tol, checked every ``block`` steps
TRAIN_KW = dict(tol=1e-8, max_steps=400_000, block=1000)


# ----------------------------------------------------------------------------- network


def init_mlp(key, d_in: int, width: int, d_out: int) -> dict:
    """NTK-parameterised one-hidden-layer MLP, every parameter N(0, 1) (float64)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"W1": jax.random.normal(k1, (d_in, width), jnp.float64),
            "b1": jax.random.normal(k2, (width,), jnp.float64),
            "W2": jax.random.normal(k3, (width, d_out), jnp.float64),
            "b2": jax.random.normal(k4, (d_out,), jnp.float64)}


def mlp_apply(p: dict, x):
    """``(n, d)`` → ``(n, C)``: W₂ᵀ tanh(W₁ᵀx/√d + βb₁)/√width + βb₂."""
    h = jnp.tanh(x @ p["W1"] / np.sqrt(x.shape[-1]) + BETA * p["b1"][None])
    return h @ p["W2"] / np.sqrt(h.shape[-1]) + BETA * p["b2"][None]


FULL_NTK = ntk.empirical_ntk_fn(mlp_apply, output="full")
FIRST_NTK = ntk.empirical_ntk_fn(mlp_apply, output="first_logit")


def flat_full(k):
    """``(n1, n2, C, C)`` → ``(n1·C, n2·C)``."""
    return np.asarray(la.flatten_kernel(k))


@jax.jit
def _gd_block(params, x, t, lr, steps):
    """``steps`` full-batch GD steps on ½ Σ ‖f(x) − t‖²; returns (params, max|f − t|, ‖∇‖)."""
    loss = lambda p: 0.5 * jnp.sum((mlp_apply(p, x) - t) ** 2)
    grad = jax.grad(loss)
    params = jax.lax.fori_loop(
        0, steps, lambda _, p: jax.tree.map(lambda a, g: a - lr * g, p, grad(p)), params)
    g = grad(params)
    gnorm = jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(g)))
    return params, jnp.max(jnp.abs(mlp_apply(params, x) - t)), gnorm


def step_size(params, x) -> float:
    """η = 1 / λ_max(Θ_full(X, X)) at ``params`` (stable: the linearised GD needs < 2/λ)."""
    return 1.0 / float(np.linalg.eigvalsh(flat_full(FULL_NTK(params, x)))[-1])


def train_to_convergence(params, x, y, num_classes: int, *, tol: float, max_steps: int,
                         block: int):
    """GD from ``params`` until max |f(X) − onehot(Y)| < tol: ``(params, record)``."""
    t = jax.nn.one_hot(y, num_classes, dtype=jnp.float64)
    lr = step_size(params, x)
    steps, t0 = 0, time.perf_counter()
    resid = float(jnp.max(jnp.abs(mlp_apply(params, x) - t)))
    gnorm = float("nan")
    while resid >= tol and steps < max_steps:
        params, r, g = _gd_block(params, x, t, lr, block)
        steps += block
        resid, gnorm = float(r), float(g)
        if not np.isfinite(resid):
            raise FloatingPointError(f"GD diverged after {steps} steps (η = {lr:.3g})")
    return params, dict(steps=steps, max_residual=resid, grad_norm=gnorm, lr=lr,
                        converged=bool(resid < tol), seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- problems


def make_problem(name: str, seed: int, sizes: dict) -> dict:
    """Inputs and labels of one seed: ``x_l, y_l`` (labeled), ``x_c`` (candidates), ``x_e``."""
    rng = np.random.RandomState(seed)
    n, k, e = sizes["labeled"], sizes["candidates"], sizes["eval"]
    if name == "toy":
        x = rng.randn(n + k + e, 3)
        y = (x[:, 0] > 0).astype(np.int32)
        return dict(x_l=x[:n], y_l=y[:n], x_c=x[n:n + k], x_e=x[n + k:], num_classes=2)
    ds = data.load_dataset("digits")
    xtr = np.asarray(ds.x_train, np.float64).reshape(len(ds.x_train), -1)
    xte = np.asarray(ds.x_test, np.float64).reshape(len(ds.x_test), -1)
    idx = rng.permutation(len(xtr))
    ev = rng.permutation(len(xte))[:e]
    return dict(x_l=xtr[idx[:n]], y_l=np.asarray(ds.y_train)[idx[:n]].astype(np.int32),
                x_c=xtr[idx[n:n + k]], x_e=xte[ev], num_classes=ds.num_classes)


# ----------------------------------------------------------------------------- one run


def eq11(params, prob, y_c, output: str):
    """f^lin_{L+} on E for every candidate, ``(K, E, C)``, by Eq. 12 (== Eq. 11, exact)."""
    fn = FULL_NTK if output == "full" else FIRST_NTK
    x_l, x_c, x_e = prob["x_l"], prob["x_c"], prob["x_e"]
    st, spec, _ = la.build_system(
        fn(params, x_l), fn(params, x_c, x_l), prob["y_l"], mlp_apply(params, x_l),
        mlp_apply(params, x_c), num_classes=prob["num_classes"], k_uu=fn(params, x_c),
        k_el=fn(params, x_e, x_l), k_eu=fn(params, x_e, x_c), f_e=mlp_apply(params, x_e),
        jitter=0.0, chunk_size=len(x_c))
    return np.asarray(la.lookahead_outputs(spec, st, labels=jnp.asarray(y_c)))


def run_one(name: str, width: int, seed: int, sizes: dict, train_kw: dict) -> dict:
    """One (problem, width, seed): f_L, then per candidate Eq. 11 vs warm retraining."""
    prob = make_problem(name, seed, sizes)
    C = prob["num_classes"]
    x_l, y_l, x_c, x_e = prob["x_l"], prob["y_l"], prob["x_c"], prob["x_e"]
    p0 = init_mlp(jax.random.PRNGKey(seed), x_l.shape[1], width, C)
    p_l, rec_l = train_to_convergence(p0, x_l, y_l, C, **train_kw)
    f_e = np.asarray(mlp_apply(p_l, x_e))
    y_c = np.argmax(np.asarray(mlp_apply(p_l, x_c)), -1)               # pseudo-labels
    pred = {k: eq11(p_l, prob, y_c, k) for k in KERNELS}                # (K, E, C) each
    real, retrain, drift = [], [], []
    for j in range(len(x_c)):
        x_plus = np.concatenate([x_l, x_c[j:j + 1]])
        y_plus = np.append(y_l, y_c[j]).astype(np.int32)
        p_plus, rec = train_to_convergence(p_l, x_plus, y_plus, C, **train_kw)
        real.append(np.asarray(mlp_apply(p_plus, x_e)))
        k0, k1 = flat_full(FULL_NTK(p_l, x_plus)), flat_full(FULL_NTK(p_plus, x_plus))
        drift.append(float(np.linalg.norm(k1 - k0) / np.linalg.norm(k0)))
        retrain.append(rec)
    real = np.stack(real)
    change = np.linalg.norm(real - f_e[None])
    errors = {k: float(np.linalg.norm(real - pred[k]) / change) for k in KERNELS}
    per_candidate = {k: [float(np.linalg.norm(real[j] - pred[k][j])
                               / np.linalg.norm(real[j] - f_e)) for j in range(len(x_c))]
                     for k in KERNELS}
    return dict(problem=name, width=width, seed=seed, rel_error=errors,
                rel_error_per_candidate=per_candidate, kernel_drift=drift,
                pseudo_labels=y_c.tolist(), change_norm=float(change),
                train_f_L=rec_l, retrain=retrain,
                converged=bool(rec_l["converged"] and all(r["converged"] for r in retrain)))


# ----------------------------------------------------------------------------- driver


def summarise(runs: list[dict]) -> dict:
    """Median and range over seeds per (problem, kernel, width)."""
    out = {}
    for r in runs:
        for k, v in r["rel_error"].items():
            out.setdefault(r["problem"], {}).setdefault(k, {}).setdefault(
                str(r["width"]), []).append(v)
    return {p: {k: {w: dict(median=float(np.median(v)), min=float(np.min(v)),
                            max=float(np.max(v)), seeds=len(v))
                    for w, v in ws.items()} for k, ws in ks.items()}
            for p, ks in out.items()}


def markdown_table(res: dict) -> str:
    """The summary as a Markdown table: median [min, max] over seeds per width."""
    widths = [str(w) for w in res["widths"]]
    names = {"first_logit": "single-logit Θ¹ ⊗ I", "full": "full C × C"}
    lines = ["| problem | kernel | " + " | ".join(f"width {w}" for w in widths) + " |",
             "|---" * (2 + len(widths)) + "|"]
    for p, ks in res["summary"].items():
        for k, ws in ks.items():
            n = {v["seeds"] for v in ws.values()}
            cells = [f"{ws[w]['median']:.2g} [{ws[w]['min']:.2g}, {ws[w]['max']:.2g}]"
                     if w in ws else "" for w in widths]
            lines.append(f"| {p} ({'/'.join(map(str, sorted(n)))} seeds) | {names[k]} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    ap.add_argument("--out", default=None, help=f"JSON path (default {RESULTS}; "
                    f"--quick: {QUICK_OUT})")
    ap.add_argument("--problems", default="toy,digits")
    ap.add_argument("--widths", default="256,1024,4096")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    ap.add_argument("--digits-seeds", default="0,1,2,3,4,5,6,7",
                    help="seeds for digits (the costlier problem)")
    ap.add_argument("--tol", type=float, default=TRAIN_KW["tol"],
                    help="max training residual")
    ap.add_argument("--max-steps", type=int, default=TRAIN_KW["max_steps"])
    ap.add_argument("--table", metavar="JSON", help="only print the Markdown table of a "
                    "results file (the README's and notebook 02's table)")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(markdown_table(json.load(f)))
        return None
    jax.config.update("jax_enable_x64", True)      # every array of this benchmark is float64
    out = args.out or (QUICK_OUT if args.quick else RESULTS)
    if args.quick and os.path.abspath(out) == os.path.abspath(RESULTS):
        ap.error("--quick never writes the committed results file")
    widths = [int(w) for w in args.widths.split(",")]
    seeds = {"toy": [int(s) for s in args.seeds.split(",")],
             "digits": [int(s) for s in args.digits_seeds.split(",")]}
    sizes = dict(SIZES)
    train_kw = dict(TRAIN_KW, tol=args.tol, max_steps=args.max_steps)
    if args.quick:
        widths, seeds = [64, 256], {"toy": [0, 1], "digits": [0]}
        sizes["digits"] = dict(labeled=8, candidates=1, eval=20)
        train_kw = dict(tol=1e-6, max_steps=20_000, block=500)
    problems = args.problems.split(",")
    t_start = time.perf_counter()
    res = dict(
        benchmark="theorem31", quick=args.quick,
        command=" ".join(["python", "benchmarks/theorem31.py"] + list(argv or sys.argv[1:])),
        machine=common.machine_info(),
        load_avg_start=common.load_avg(), network=dict(
            kind="one hidden layer, tanh, NTK parameterisation", beta=BETA,
            init="every parameter N(0, 1)", dtype="float64"),
        training=dict(train_kw, loss="0.5 * sum ||f(x) - onehot(y)||^2 (full batch GD)",
                      lr="1 / lambda_max(full NTK on the training set at the start)",
                      warm_start=True),
        sizes={p: sizes[p] for p in problems}, widths=widths,
        seeds={p: seeds[p] for p in problems}, kernels=list(KERNELS),
        metric="||f_L+(E) - f^lin_L+(E)||_F / ||f_L+(E) - f_L(E)||_F over candidates, E, C",
        runs=[])
    for name in problems:
        for width in widths:
            for seed in seeds[name]:
                t0 = time.perf_counter()
                r = run_one(name, width, seed, sizes[name], train_kw)
                r["seconds"] = time.perf_counter() - t0
                res["runs"].append(r)
                print(f"{name:6s} width {width:5d} seed {seed}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in r["rel_error"].items())
                      + f"; drift {np.mean(r['kernel_drift']):.2e}; steps "
                      f"{r['train_f_L']['steps']}/{[q['steps'] for q in r['retrain']]}"
                      f"; converged {r['converged']}; {r['seconds']:.1f} s", flush=True)
                res["summary"] = summarise(res["runs"])
                res["not_converged"] = sum(not q["converged"] for q in res["runs"])
                res["load_avg_end"] = common.load_avg()
                res["wall_s"] = time.perf_counter() - t_start
                common.write_json(out + ".tmp", res, indent=1)
                os.replace(out + ".tmp", out)
    for p, ks in res["summary"].items():
        for k, ws in ks.items():
            print(f"{p:6s} {k:11s} " + "  ".join(
                f"{w}: {v['median']:.3g} [{v['min']:.3g}, {v['max']:.3g}]"
                for w, v in ws.items()))
    print(f"wrote {out} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
