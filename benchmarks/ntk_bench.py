"""Empirical-NTK benchmark against neural-tangents' figures (shared/golden/nt_*timing.json).

Run (full, ~10 min on 2 shared CPU cores; writes benchmarks/results/ntk_bench_cpu.json):

    python benchmarks/ntk_bench.py

Smoke run with tiny sizes (used by tests/test_benchmarks.py):

    python benchmarks/ntk_bench.py --quick --out /tmp/ntk_bench_quick.json

Cases reproduce neural-tangents' networks in plain JAX with the same shapes (standard
parametrisation, RandomState(0)): the single-logit kernel, float32, jitted, median of ≥5
timed calls after a compile + warm-up call, per implementation; and the per-cycle kernel
set (Θ_LL, Θ_UL, Θ_UU) of the look-ahead strategies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402
from lookahead_jax import ntk as ntk_lib  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "golden"
NT_BEST = {"mlp_500x500": 0.038, "mlp_2000x200": 0.121, "cnn_200x200": 1.42,
           "wrn_100x100": 1.07}
NT_CYCLE = {"mlp_L300_U4000": 15.27, "cnn_L300_U1000": 84.77}
CYCLE_TARGET_S = {"mlp_L300_U4000": 1.5, "cnn_L300_U1000": 8.5}


# ------------------------------------------------------------------------------- nets
def _dense_init(rng, fan_in, fan_out):
    return (rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32),
            rng.normal(0, 0.1, (fan_out,)).astype(np.float32))


def _conv_init(rng, k, cin, cout):
    w = rng.normal(0, np.sqrt(2 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)
    return w, rng.normal(0, 0.1, (cout,)).astype(np.float32)


def _conv(x, w, stride=1):
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def make_mlp(widths=(1024, 1024), d_in=784, classes=10):
    rng = np.random.RandomState(0)
    dims = (d_in, *widths, classes)
    p = {}
    for l, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        p[f"W{l + 1}"], p[f"b{l + 1}"] = _dense_init(rng, a, b)
    n = len(dims) - 1

    def f(p, x):
        h = x.reshape(x.shape[0], -1)
        for l in range(1, n):
            h = jax.nn.relu(h @ p[f"W{l}"] + p[f"b{l}"])
        return h @ p[f"W{n}"] + p[f"b{n}"]

    return f, jax.tree.map(jnp.asarray, p)


def make_cnn(channels=(64, 128), cin=1, classes=10):
    rng = np.random.RandomState(0)
    p = {}
    p["c1_W"], p["c1_b"] = _conv_init(rng, 3, cin, channels[0])
    p["c2_W"], p["c2_b"] = _conv_init(rng, 3, channels[0], channels[1])
    p["d_W"], p["d_b"] = _dense_init(rng, channels[1], classes)

    def f(p, x):
        h = jax.nn.relu(_conv(x, p["c1_W"]) + p["c1_b"])
        h = jax.nn.relu(_conv(h, p["c2_W"]) + p["c2_b"])
        return h.mean((1, 2)) @ p["d_W"] + p["d_b"]

    return f, jax.tree.map(jnp.asarray, p)


def make_wrn(base=16, widths=(32, 64, 128), strides=(1, 2, 2), cin=3, classes=10):
    rng = np.random.RandomState(0)
    p = {}
    p["c0_W"], p["c0_b"] = _conv_init(rng, 3, cin, base)
    c = base
    for g, (w, s) in enumerate(zip(widths, strides)):
        p[f"g{g}_a_W"], p[f"g{g}_a_b"] = _conv_init(rng, 3, c, w)
        p[f"g{g}_b_W"], p[f"g{g}_b_b"] = _conv_init(rng, 3, w, w)
        p[f"g{g}_s_W"], p[f"g{g}_s_b"] = _conv_init(rng, 1, c, w)
        c = w
    p["d_W"], p["d_b"] = _dense_init(rng, c, classes)

    def f(p, x):
        h = _conv(x, p["c0_W"]) + p["c0_b"]
        for g, s in enumerate(strides):
            r = jax.nn.relu(h)
            y = _conv(r, p[f"g{g}_a_W"], s) + p[f"g{g}_a_b"]
            y = _conv(jax.nn.relu(y), p[f"g{g}_b_W"]) + p[f"g{g}_b_b"]
            h = y + _conv(r, p[f"g{g}_s_W"], s) + p[f"g{g}_s_b"]
        return jax.nn.relu(h).mean((1, 2)) @ p["d_W"] + p["d_b"]

    return f, jax.tree.map(jnp.asarray, p)


# ----------------------------------------------------------------------------- timing
def _time(fn, repeats):
    """First call, one warm-up, ``repeats`` timed calls (benchmarks/common.py)."""
    return common.time_calls(fn, repeats, warmup=1)


def contraction_flops(feats1, feats2):
    n1, n2 = feats1.n, feats2.n
    per_pair = feats1.rows.shape[1] * feats1.rows.shape[2]
    for a, d in zip(feats1.acts, feats1.cots):
        s = a.shape[1]
        per_pair += s * s * (a.shape[2] + d.shape[1] * d.shape[3] + 1)
    return 2 * n1 * n2 * per_pair


def bench_case(name, f, params, shape, n1, n2, impls, repeats, seed):
    rng = np.random.RandomState(seed)
    x1 = jnp.asarray(rng.normal(size=(n1, *shape)).astype(np.float32))
    x2 = jnp.asarray(rng.normal(size=(n2, *shape)).astype(np.float32))
    n_params = int(sum(np.size(l) for l in jax.tree.leaves(params)))
    out = {"n1": n1, "n2": n2, "input_shape": list(shape), "n_params": n_params,
           "seed": seed, "kernel": "first_logit, float32", "implementations": {}}
    for impl, skip in impls.items():
        if skip:
            out["implementations"][impl] = {"status": "skipped", "reason": skip}
            print(f"{name:16s} {impl:10s} skipped: {skip}", flush=True)
            continue
        fn = ntk_lib.empirical_ntk_fn(f, output="first_logit", implementation=impl)
        r = _time(lambda: fn(params, x1, x2), repeats)
        r["status"] = "ok"
        if impl == "structured":
            feats = [ntk_lib.ntk_features(f, params, x, implementation=impl) for x in (x1, x2)]
            r["features"] = _time(lambda: [ntk_lib.ntk_features(f, params, x,
                                                                 implementation=impl).rows
                                           for x in (x1, x2)], repeats)
            r["contraction"] = _time(lambda: ntk_lib.kernel_from_features(*feats), repeats)
            fl = contraction_flops(*feats)
            r["contraction"]["flops"] = fl
            r["contraction"]["gflops_achieved"] = fl / r["contraction"]["median_s"] / 1e9
            r["feature_layout"] = {"rows": list(feats[0].rows.shape[1:]),
                                   "acts": [list(a.shape[1:]) for a in feats[0].acts],
                                   "cots": [list(d.shape[1:]) for d in feats[0].cots]}
        if name in NT_BEST:
            r["speedup_vs_nt_best"] = NT_BEST[name] / r["median_s"]
        out["implementations"][impl] = r
        print(f"{name:16s} {impl:10s} median {r['median_s']:.4f}s min {r['min_s']:.4f}s "
              f"first {r['first_call_s']:.2f}s", flush=True)
    ok = {k: v["median_s"] for k, v in out["implementations"].items() if v["status"] == "ok"}
    out["best"] = min(ok, key=ok.get)
    out["best_s"] = ok[out["best"]]
    if name in NT_BEST:
        out["nt_best_s"] = NT_BEST[name]
        out["speedup_vs_nt_best"] = NT_BEST[name] / out["best_s"]
        out["target_1.2x_met"] = out["speedup_vs_nt_best"] >= 1.2
    return out


def bench_cycle(name, f, params, shape, n_l, n_u, repeats, seed):
    rng = np.random.RandomState(seed)
    xl = jnp.asarray(rng.normal(size=(n_l, *shape)).astype(np.float32))
    xu = jnp.asarray(rng.normal(size=(n_u, *shape)).astype(np.float32))
    r = _time(lambda: tuple(ntk_lib.kernel_set(f, params, xl, xu)), repeats)
    r.update({"L": n_l, "U": n_u, "seed": seed, "implementation": "auto"})
    if name in NT_CYCLE:
        r["nt_s"] = NT_CYCLE[name]
        r["speedup_vs_nt"] = NT_CYCLE[name] / r["median_s"]
        r["target_s"] = CYCLE_TARGET_S[name]
        r["targets_met"] = r["speedup_vs_nt"] >= 10 and r["median_s"] <= CYCLE_TARGET_S[name]
    print(f"{name:16s} kernel_set median {r['median_s']:.3f}s", flush=True)
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / "ntk_bench_cpu.json"))
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    repeats = args.repeats or (1 if q else 5)
    load_before = common.load_avg()
    t_start = time.time()
    mlp = make_mlp((32, 32)) if q else make_mlp()
    cnn = make_cnn((4, 8)) if q else make_cnn()
    wrn = make_wrn(4, (4, 8, 8)) if q else make_wrn()
    slow = "not run: neural-tangents took {}; our jvp_vjp does the same n2·K vjps + jvps"
    big_j = "not run: per-example Jacobian rows are {} GiB (float32), above the memory budget"
    full_impls = {"structured": None, "jacobian": None, "jvp_vjp": None}
    cases = {
        "mlp_500x500": (*mlp, (28, 28, 1), 500, 500,
                        {"structured": None, "jacobian": big_j.format(6.9),
                         "jvp_vjp": slow.format("6.9 s")}),
        "mlp_2000x200": (*mlp, (28, 28, 1), 2000, 200,
                         {"structured": None, "jacobian": big_j.format(15.3),
                          "jvp_vjp": slow.format("14.6 s")}),
        "cnn_200x200": (*cnn, (28, 28, 1), 200, 200,
                        {"structured": None, "jacobian": None,
                         "jvp_vjp": slow.format("83.5 s (batch 50)")}),
        "wrn_100x100": (*wrn, (32, 32, 3), 100, 100,
                        {"structured": None, "jacobian": None,
                         "jvp_vjp": slow.format("13.9 s")}),
    }
    if q:
        cases = {k: (f, p, s, min(n1, 12), min(n2, 10), full_impls)
                 for k, (f, p, s, n1, n2, _) in cases.items()}
        cases = {k: v for k, v in cases.items() if k != "mlp_2000x200"}
    result = {
        "what": "single-logit empirical NTK, float32, jitted pieces; median of timed calls "
                "after compile + warm-up; compare shared/golden/nt_timing.json",
        "quick": q,
        "machine": common.machine_info(loadavg_before=load_before),
        "matmul_peak": common.matmul_peak(512 if q else 4096, repeats),
        "cases": {}, "cycle": {},
    }
    print(f"matmul peak {result['matmul_peak']['gflops']:.1f} GFLOP/s", flush=True)
    for seed, (name, (f, p, shape, n1, n2, impls)) in enumerate(cases.items()):
        result["cases"][name] = bench_case(name, f, p, shape, n1, n2, impls, repeats, seed)
    cycles = {"mlp_L300_U4000": (*mlp, (28, 28, 1), 300, 4000),
              "cnn_L300_U1000": (*cnn, (28, 28, 1), 300, 1000)}
    for seed, (name, (f, p, shape, n_l, n_u)) in enumerate(cycles.items()):
        if q:
            n_l, n_u = 6, 20
        result["cycle"][name] = bench_cycle(name, f, p, shape, n_l, n_u,
                                            max(3, repeats // 2) if not q else 1, 100 + seed)
    result["machine"]["loadavg_after"] = common.load_avg()
    result["wall_s"] = time.time() - t_start
    common.write_json(args.out, result, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
