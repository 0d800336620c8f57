"""Side by side: neural-tangents 0.6.5 and our empirical-NTK engine, in one run.

Full run (≲ 15 min on 2 quiet cores; writes benchmarks/results/ntk_vs_nt_cpu.json):

    .venv/bin/python benchmarks/ntk_vs_nt.py

The README's table from a results file:

    python benchmarks/ntk_vs_nt.py --table benchmarks/results/ntk_vs_nt_cpu.json

Smoke run (1 round, small cases, writes to a temp dir, never over the committed JSON):

    .venv/bin/python benchmarks/ntk_vs_nt.py --quick

neural-tangents only imports on an old JAX stack, so it runs from its own venv
(``--nt-venv``, built by ``shared/nt/setup_venv_nt.sh``); its networks, cases and methods
come from ``shared/nt/nt_timing.py`` (``--nt-dir``), which this script also imports in
our venv so both sides build the same parameters and inputs (numpy ``RandomState(seed)``:
parameters first, then x1, then x2).

What is timed, per case and side, each in a FRESH child process: the single-logit
empirical NTK (the kernel of x -> f(x)[0]) between x1 (n1 inputs) and x2 (n2 inputs),
float32, on CPU.

* neural-tangents: ``jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
  implementation=...))`` with f = apply(params, x)[:, 0], the best implementation for
  the case (mlp: 3, structured derivatives; cnn and wrn: 1, Jacobian contraction;
  ``shared/nt/README.md``). ``lower().compile()`` (compile_s), one warm-up call, then
  ``--reps`` timed calls, each ``block_until_ready``.
* ours: ``lookahead_jax.ntk.empirical_ntk_fn(apply, output="first_logit",
  implementation=--implementation)``, called as ``ntk(params, x1, x2)``. It is a Python
  driver over jitted pieces, so its first call compiles (first_call_s), then one
  warm-up call, then ``--reps`` timed calls, each ``block_until_ready``.

A child reports the median (and all) of its timed calls. Sides alternate (NT, ours, NT,
ours, ...) for ``--rounds`` rounds per case; a case reports the median over rounds of
the children's medians, and the ratio NT / ours (> 1: ours is faster). Each child saves
its kernel; the parent reports max and median of |K_ours - K_nt| / max|K_nt| per round.

Also recorded: the 1-, 5-, 15-minute load averages before and after each case; the
float32 matmul peak of this run (``--peak-n``² jnp matmul in a child of our venv,
median of 5, at the start and at the end of the run; the larger is used); the FLOP
count of each case (nt_timing's ``case_info``: Jacobian work 3·F·(n1+n2) plus the
Jacobian contraction 2·n1·n2·P; for ours also the work it actually performs: forward
and backward passes, Jacobian rows of unstructured layers, its contraction) and
each side's time as a fraction of the FLOP floor (the smaller count / peak):
fraction = floor_s / median_s.

``--taskset CPUS`` pins every child (both sides and the peak) with ``taskset -c``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402  (stdlib only at import: the NT children import it too)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ntk_vs_nt_cpu.json"
BEST_NT = {"mlp": "nt_impl3", "cnn": "nt_impl1", "wrn": "nt_impl1"}
CASES = {"mlp_500x500": ("mlp", 500, 500), "mlp_2000x200": ("mlp", 2000, 200),
         "cnn_200x200": ("cnn", 200, 200), "wrn_100x100": ("wrn", 100, 100)}
QUICK_CASES = {"mlp_64x32": ("mlp", 64, 32), "cnn_16x8": ("cnn", 16, 8),
               "wrn_8x8": ("wrn", 8, 8)}
CHILD_TIMEOUT_S = 900


# ------------------------------------------------------------------------------ child
def _inputs(nt_timing, net, n1, n2, seed):
    """Parameters and inputs exactly as nt_timing's child builds them (numpy only)."""
    rng = np.random.RandomState(seed)
    params, apply, in_shape, _, _ = nt_timing.build(net, rng)
    x1 = rng.normal(size=(n1, *in_shape)).astype(np.float32)
    x2 = rng.normal(size=(n2, *in_shape)).astype(np.float32)
    return params, apply, x1, x2


def _time_calls(call, reps):
    """(warm-up seconds, timed seconds): one warm-up call, then ``reps`` timed calls
    (benchmarks/common.py's :func:`time_calls`, its first call as the warm-up)."""
    r = common.time_calls(call, reps, warmup=0)
    return r["first_call_s"], r["runs"]


def _nt_side(apply, params, x1, x2, net, reps):
    import jax
    import nt_timing
    from importlib.metadata import version
    method = BEST_NT[net]
    fn = nt_timing.make_method(method, lambda p, x: apply(p, x)[:, 0])
    t = time.perf_counter()
    compiled = fn.lower(x1, x2, params).compile()
    compile_s = time.perf_counter() - t
    warm, runs = _time_calls(lambda: compiled(x1, x2, params), reps)
    kernel = compiled(x1, x2, params)
    return dict(method=method, compile_s=compile_s, first_call_s=None, warmup_s=warm,
                runs_s=runs, versions=dict(jax=jax.__version__,
                                           neural_tangents=version("neural-tangents"))), kernel


def _ours_side(apply, params, x1, x2, implementation, reps):
    import jax
    sys.path.insert(0, str(REPO))
    from lookahead_jax import ntk
    fn = ntk.empirical_ntk_fn(apply, output="first_logit", implementation=implementation)
    t = time.perf_counter()
    fn(params, x1, x2).block_until_ready()
    first = time.perf_counter() - t
    warm, runs = _time_calls(lambda: fn(params, x1, x2), reps)
    kernel = fn(params, x1, x2)
    cost = ntk.kernel_cost(apply, params, x1, x2, output="first_logit",
                           implementation=implementation)
    return dict(method=f"ours_{implementation}", compile_s=None, first_call_s=first,
                warmup_s=warm, runs_s=runs, cost=cost,
                versions=dict(jax=jax.__version__)), kernel


def child(args):
    """One side of one case in this process; prints ``RESULT {json}``."""
    sys.path.insert(0, args.nt_dir)
    import jax
    import jax.numpy as jnp
    import nt_timing
    net, n1, n2 = args.case_spec
    params, apply, x1, x2 = _inputs(nt_timing, net, n1, n2, args.seed)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    if args.child == "nt":
        res, kernel = _nt_side(apply, params, x1, x2, net, args.reps)
    else:
        res, kernel = _ours_side(apply, params, x1, x2, args.implementation, args.reps)
    np.save(args.kernel_out, np.asarray(jax.device_get(kernel)))
    res.update(status="ok", median_s=statistics.median(res["runs_s"]),
               min_s=min(res["runs_s"]), kernel_shape=list(kernel.shape),
               dtype=str(kernel.dtype), backend=jax.default_backend(),
               n_devices=len(jax.devices()))
    print("RESULT " + json.dumps(res), flush=True)


def peak_child(n):
    """Float32 matmul GFLOP/s: an n×n jnp matmul, median of 5 timed calls."""
    r = common.matmul_peak(n, 5)
    print("RESULT " + json.dumps(dict(n=n, runs_s=r["runs"], median_s=r["median_s"],
                                      gflops=r["gflops"])), flush=True)


# ----------------------------------------------------------------------------- parent
def _run_child(python, argv, taskset):
    cmd = ([python, os.path.abspath(__file__)] + argv)
    if taskset:
        cmd = ["taskset", "-c", taskset] + cmd
    t = time.time()
    try:
        pr = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                            env=dict(os.environ, PYTHONPATH=""))
        lines = [l for l in pr.stdout.splitlines() if l.startswith("RESULT ")]
        if lines:
            res = json.loads(lines[-1][len("RESULT "):])
        else:
            res = dict(status=f"failed rc={pr.returncode}",
                       stderr_tail=pr.stderr.splitlines()[-5:])
    except subprocess.TimeoutExpired:
        res = dict(status=f"timeout > {CHILD_TIMEOUT_S}s")
    res["wall_incl_startup_s"] = time.time() - t
    return res


def _agreement(path_nt, path_ours):
    """(max, median) of |K_ours - K_nt| / max|K_nt|; None if a kernel is missing.

    The median shows whether a large max is one entry: float32 rounding can flip a ReLU
    whose pre-activation is ~1e-8 (it happens for one input of wrn_100x100), which moves
    that input's row or column by ~1e-4 relative on either side.
    """
    if not (os.path.exists(path_nt) and os.path.exists(path_ours)):
        return None, None
    k_nt = np.load(path_nt).astype(np.float64)
    k_ours = np.load(path_ours).astype(np.float64)
    if k_nt.shape != k_ours.shape:
        return None, None
    dev = np.abs(k_ours - k_nt) / np.abs(k_nt).max()
    return float(dev.max()), float(np.median(dev))


def _median_of(results, key="median_s"):
    vals = [r[key] for r in results if r.get("status", "ok") == "ok" and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def run_case(name, spec, args, tmp):
    """Alternating NT / ours children for ``args.rounds`` rounds; the case's record."""
    sys.path.insert(0, args.nt_dir)
    import nt_timing
    net, n1, n2 = spec
    nt_timing.CASES[name] = dict(net=net, n1=n1, n2=n2)
    info = nt_timing.case_info(name)
    rec = dict(info, nt_method=BEST_NT[net], load_before=common.load_avg(),
               rounds=[])
    case_args = ["--case-spec", net, str(n1), str(n2), "--seed", str(args.seed),
              "--reps", str(args.reps), "--nt-dir", args.nt_dir]
    for r in range(args.rounds):
        paths = {s: os.path.join(tmp, f"{name}_{r}_{s}.npy") for s in ("nt", "ours")}
        rnd = {}
        for side, python in (("nt", args.nt_python), ("ours", sys.executable)):
            argv = case_args + ["--child", side, "--kernel-out", paths[side],
                             "--implementation", args.implementation]
            rnd[side] = _run_child(python, argv, args.taskset)
            print(f"  {name} round {r} {side}: {rnd[side].get('status')} "
                  f"median {rnd[side].get('median_s')}", flush=True)
        rnd["rel_dev_ours_vs_nt"], rnd["median_rel_dev_ours_vs_nt"] = _agreement(
            paths["nt"], paths["ours"])
        rec["rounds"].append(rnd)
    rec["load_after"] = common.load_avg()
    nt_s = _median_of([r["nt"] for r in rec["rounds"]])
    ours_s = _median_of([r["ours"] for r in rec["rounds"]])
    devs = [r["rel_dev_ours_vs_nt"] for r in rec["rounds"] if r["rel_dev_ours_vs_nt"] is not None]
    cost = next((r["ours"]["cost"] for r in rec["rounds"] if "cost" in r["ours"]), None)
    rec.update(nt_median_s=nt_s, ours_median_s=ours_s,
               ratio_nt_over_ours=(nt_s / ours_s) if nt_s and ours_s else None,
               max_rel_dev_ours_vs_nt=max(devs) if devs else None,
               median_rel_dev_ours_vs_nt=_median_of(rec["rounds"], "median_rel_dev_ours_vs_nt"),
               ours_cost=cost)
    return rec


def add_floor(rec, peak_gflops):
    """FLOP floors at the measured peak and each side's time as a fraction of them.

    ``total_flops_est`` is nt_timing's Jacobian-contraction count (3F per example plus
    2·n1·n2·P); ``ours_total_flops`` counts what our engine performs: the forward pass
    and the backward pass of the output cotangents (matmul/conv FLOPs of the traced
    program; the first layer needs no input gradient), the Jacobian rows
    ``Σ_s a_s ⊗ δ_s`` of the layers it does not contract structurally, and its
    contraction (structured blocks, folded biases). ``floor_flops`` is the smaller: the
    fewest FLOPs either method needs.
    """
    peak = peak_gflops * 1e9
    cost = rec.get("ours_cost")
    if cost:   # forward + backward passes, rows Σ a⊗δ, contraction
        n = rec["n1"] + rec["n2"]
        passes = cost.get("fwd_flops_per_example", rec["fwd_flops_per_example"]) + cost.get(
            "bwd_flops_per_example", rec["fwd_flops_per_example"])
        rec["ours_total_flops"] = passes * n + cost["row_flops"] + cost["contraction_flops"]
    rec["floor_flops"] = min(rec["total_flops_est"],
                             rec.get("ours_total_flops", rec["total_flops_est"]))
    rec["floor_s"] = rec["floor_flops"] / peak
    for side in ("nt", "ours"):
        t = rec.get(f"{side}_median_s")
        rec[f"fraction_of_floor_{side}"] = rec["floor_s"] / t if t else None


def machine_info(args):
    info = common.machine_info(n_cpus=os.cpu_count(), numpy=np.__version__,
                               taskset=args.taskset, nt_python=args.nt_python,
                               nt_dir=args.nt_dir)
    info["cpu"] = info["cpu_model"]
    info["git_commit"] = info["commit"]
    return info


def measure_peak(args):
    res = _run_child(sys.executable, ["--peak", str(args.peak_n)], args.taskset)
    print(f"  matmul peak: {res.get('gflops')} GFLOP/s", flush=True)
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating NT/ours rounds")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per child")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of the cases")
    ap.add_argument("--quick", action="store_true",
                    help="1 round, small cases, 2 timed calls, output in a temp dir")
    ap.add_argument("--nt-dir", default=str(REPO.parent / "shared" / "nt"),
                    help="folder holding nt_timing.py (default: ../shared/nt)")
    ap.add_argument("--nt-venv", default=os.environ.get("NT_VENV", str(REPO.parent / "venv_nt")),
                    help="venv where neural-tangents 0.6.5 imports (default: $NT_VENV or ../venv_nt)")
    ap.add_argument("--implementation", default="auto", help="our engine's implementation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-n", type=int, default=4096)
    ap.add_argument("--taskset", default=None, help="pin children: taskset -c CPUS")
    ap.add_argument("--out", default=None)
    # child modes (internal)
    ap.add_argument("--child", choices=("nt", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--case-spec", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--kernel-out", help=argparse.SUPPRESS)
    ap.add_argument("--peak", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.nt_dir = os.path.abspath(args.nt_dir)
    args.nt_python = os.path.join(args.nt_venv, "bin", "python")
    if args.case_spec:
        args.case_spec = (args.case_spec[0], int(args.case_spec[1]), int(args.case_spec[2]))
    if args.quick:
        args.rounds, args.reps, args.peak_n = 1, 2, 1024
    if args.out is None:
        args.out = (os.path.join(tempfile.gettempdir(), "ntk_vs_nt_quick.json")
                    if args.quick else str(DEFAULT_OUT))
    return args


CASE_NAMES = {"mlp_500x500": "MLP 784-1024-1024-10, 500 × 500",
              "mlp_2000x200": "MLP 784-1024-1024-10, 2000 × 200",
              "cnn_200x200": "CNN conv64-conv128-GAP-dense10, 200 × 200",
              "wrn_100x100": "WRN-10-2-like, 100 × 100"}


def markdown_table(out: dict) -> str:
    """The README's speed table from a results file: both sides' medians of one run, the
    ratio, each side's fraction of the FLOP floor at the run's measured peak, the kernels'
    agreement and the load average."""
    lines = [f"| case | neural-tangents best | ours | NT / ours | % of FLOP floor (NT, ours) "
             f"| kernels' median rel. deviation | load before → after |",
             "|---|---|---|---|---|---|---|"]
    for name, r in out["cases"].items():
        if r.get("nt_median_s") is None or r.get("ours_median_s") is None:
            lines.append(f"| {CASE_NAMES.get(name, name)} | failed | | | | | |")
            continue
        fn, fo = r.get("fraction_of_floor_nt"), r.get("fraction_of_floor_ours")
        floor = (f"{100 * fn:.0f}%, {100 * fo:.0f}%" if fn is not None and fo is not None
                 else "-")
        lines.append(
            f"| {CASE_NAMES.get(name, name)} | {r['nt_median_s']:.3g} s ({r['nt_method']}) "
            f"| {r['ours_median_s']:.3g} s | {r['ratio_nt_over_ours']:.2f}× | {floor} "
            f"| {r['median_rel_dev_ours_vs_nt']:.1e} "
            f"| {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f} |")
    peak = out.get("peak_gflops")
    lines += ["", f"Measured float32 matmul peak of the same run: "
              f"{peak:.0f} GFLOP/s; {out['settings']['rounds']} alternating rounds per case."
              if peak else ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--table":
        with open(sys.argv[2]) as fh:
            print(markdown_table(json.load(fh)), end="")
        return
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.peak:
        return peak_child(args.peak)
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = {k: v for k, v in {**CASES, **QUICK_CASES}.items() if k in args.cases}
    out = dict(what=__doc__, machine=machine_info(args),
               settings=dict(rounds=args.rounds, reps=args.reps, seed=args.seed,
                             implementation=args.implementation, quick=args.quick,
                             peak_n=args.peak_n, best_nt=BEST_NT),
               peak_start=measure_peak(args), cases={})
    with tempfile.TemporaryDirectory(prefix="ntk_vs_nt_") as tmp:
        for name, spec in cases.items():
            print(f"== {name}", flush=True)
            out["cases"][name] = run_case(name, spec, args, tmp)
            _write(out, args.out)
    out["peak_end"] = measure_peak(args)
    peaks = [p["gflops"] for p in (out["peak_start"], out["peak_end"]) if "gflops" in p]
    out["peak_gflops"] = max(peaks) if peaks else None
    for rec in out["cases"].values():
        if out["peak_gflops"]:
            add_floor(rec, out["peak_gflops"])
    versions = {s: next((r[s]["versions"] for c in out["cases"].values()
                         for r in c["rounds"] if "versions" in r[s]), None)
                for s in ("nt", "ours")}
    out["versions"] = versions
    _write(out, args.out)
    print(summary(out))
    print("wrote", args.out)


def _write(out, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)


def summary(out):
    lines = [f"peak {out.get('peak_gflops') or float('nan'):.1f} GFLOP/s",
             "case           NT s     ours s   NT/ours  rel.dev  GFLOP  floor%NT floor%ours load"]
    for name, r in out["cases"].items():
        fmt = lambda v, s="{:.3f}": s.format(v) if v is not None else "-"  # noqa: E731
        lines.append(f"{name:14s} {fmt(r['nt_median_s']):8s} {fmt(r['ours_median_s']):8s} "
                     f"{fmt(r['ratio_nt_over_ours'], '{:.2f}'):8s} "
                     f"{fmt(r['max_rel_dev_ours_vs_nt'], '{:.1e}'):8s} "
                     f"{fmt(r.get('floor_flops', 0) / 1e9, '{:.1f}'):6s} "
                     f"{fmt(r.get('fraction_of_floor_nt'), '{:.0%}'):8s} "
                     f"{fmt(r.get('fraction_of_floor_ours'), '{:.0%}'):9s} "
                     f"{r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
