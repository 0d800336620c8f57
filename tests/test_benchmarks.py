"""The benchmarks' quick modes and the benchmark code the tests reuse (benchmarks/).

Moved here from tests/test_lookahead.py (lookahead_bench.py --quick, Theorem 3.1 through
benchmarks/theorem31.py) and tests/test_ntk.py (ntk_bench.py --quick); contents unchanged.
No timed assertion: only what the JSON records and that the runs complete.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- lookahead_bench.py


def test_lookahead_bench_quick(tmp_path):
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


# ----------------------------------------------------------------------------- ntk_bench.py


def test_ntk_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ntk_bench.py"), "--quick",
                           "--out", str(out)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    data = json.loads(out.read_text())
    assert data["machine"]["jax"] == jax.__version__
    assert set(data["cases"]) == {"mlp_500x500", "cnn_200x200", "wrn_100x100"}
    for name, case in data["cases"].items():
        impls = case["implementations"]
        assert {i: r["status"] for i, r in impls.items()} == dict.fromkeys(
            ("structured", "jacobian", "jvp_vjp"), "ok"), name
        times = {i: r["median_s"] for i, r in impls.items()}
        assert case["best"] == min(times, key=times.get) and case["best_s"] == min(times.values())
    # The reported counts against docs/ALGEBRA.md A13, by hand: the quick MLP is 784-32-32-10 with
    # biases, 12 × 10 pairs; the structured contraction costs 2·n1·n2·Σ_l (fan_in +
    # fan_out + 1) and there are Σ_l (fan_in + 1)·fan_out parameters.
    mlp = data["cases"]["mlp_500x500"]
    layers = [(784, 32), (32, 32), (32, 10)]
    assert (mlp["n1"], mlp["n2"]) == (12, 10)
    assert mlp["n_params"] == sum((a + 1) * b for a, b in layers)
    assert mlp["implementations"]["structured"]["contraction"]["flops"] == \
        2 * 12 * 10 * sum(a + b + 1 for a, b in layers)


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


# ----------------------------------------------------------------------------- common.py


def _common():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return common


def test_common_time_calls_counts_its_calls_and_takes_the_median():
    common = _common()
    calls, clock = [], iter([0.0, 5.0, 5.0, 5.5, 5.5, 6.5, 6.5, 6.75, 6.75, 10.75])

    def fn():
        calls.append(1)
        return np.zeros(2)

    real = common.time.perf_counter
    common.time.perf_counter = lambda: next(clock)
    try:
        r = common.time_calls(fn, repeats=3, warmup=1)
    finally:
        common.time.perf_counter = real
    assert len(calls) == 5                          # first + 1 warm-up + 3 timed
    assert r["first_call_s"] == 5.0 and r["warmup_s"] == 0.5
    assert r["runs"] == [1.0, 0.25, 4.0] and r["median_s"] == 1.0 and r["min_s"] == 0.25
    assert r["compile_s_est"] == 4.0


def test_every_benchmark_uses_common_and_keeps_no_helper_of_its_own(tmp_path):
    common = _common()
    info = common.machine_info()
    for key in ("cpu_model", "cpu_count", "load_avg", "commit", "jax", "devices"):
        assert key in info, key
    assert info["jax"] == jax.__version__ and len(info["load_avg"]) == 3
    assert common.write_json(tmp_path / "a" / "b.json", {"x": 1}).read_text() == \
        '{\n "x": 1\n}'
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        if path.name == "common.py":
            continue
        text = path.read_text()
        assert "import common" in text, path.name
        for own in ("platform.platform()", "os.getloadavg()", "/proc/cpuinfo",
                    "jax.jit(jnp.matmul)", "json.dump(res", "gzip.open", "optax.sgd"):
            assert own not in text, (path.name, own)
