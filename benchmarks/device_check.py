"""One command for a machine with an accelerator: does the library hold there, and how fast.

    python benchmarks/device_check.py            # on a GPU/TPU machine, <= 8 min
    python benchmarks/device_check.py --quick    # CPU rehearsal in seconds (tests/test_device_check.py)

Nothing outside the repository (and the MNIST archives of ``--manual_dir``, default
``../shared/data/mnist``) is needed. Steps, each with its own time limit, each recorded
(rc, seconds, the last lines of its output) whether it passes or not, a miss reported as
a miss:

1. ``plan``: the device (platform, kind, ``memory_stats``), the measured float32 matmul
   rate at HIGHEST and at DEFAULT precision (their ratio is what the precision policy
   costs there), and ``--plan`` of the Fig. 3a run below;
2. ``twins``: the float32-vs-float64 twin tests and the precision-lowering tests, run ON
   THE DEVICE (pytest, ``-n 0``): tests/test_ntk.py, test_precision.py, test_plan.py and
   the float32 strategy twins of test_lookahead.py;
3. ``ntk`` and ``lookahead``: the empirical NTK kernel set (MLP and WRN, L = 1,000,
   U = 10,000 / 2,000) and the look-ahead algebra (L = 2,000, U = 10,000, batch MLMOC and
   20 sequential steps) at sizes that matter on a GPU, timed (median of 3 after a compile);
4. ``whole_pool``: benchmarks/whole_pool.py over every MNIST training image;
5. ``fig3a``: one Fig. 3a run at the paper's width (WRN, one group, widen factor 40:
   width 640), 100 labels + 3 cycles of 20, MLMOC sequential and batch, 1 seed.

Writes ``benchmarks/results/device_check_<platform>.json`` (``--quick``:
``/tmp/device_check_quick.json``): machine, sizes, seeds, load average before/after,
commit, per step its record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
TWINS = ["tests/test_ntk.py", "tests/test_precision.py", "tests/test_plan.py",
         "tests/test_lookahead.py"]
TWINS_K = "float32 or twin or precision or highest or plan or brute or float64"


def _timed(fn, repeats=3):
    """Median seconds of ``repeats`` calls after a compiling first call (common.py)."""
    return common.time_calls(fn, repeats, warmup=0)["median_s"]


def _sub(args, timeout, env=None):
    """A subprocess step: rc, seconds, the last 40 output lines (timeout: rc 124)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else \
            str(e.stdout or "")
    return dict(rc=rc, seconds=time.perf_counter() - t0,
                tail=out.strip().splitlines()[-40:], command=" ".join(map(str, args)))


def step_plan(quick):
    from lookahead_jax import loop, plan
    dev = jax.devices()[0]
    n = 256 if quick else 4096
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    rates = {}
    for name in ("highest", "default"):
        prec = getattr(jax.lax.Precision, name.upper())
        mm = jax.jit(lambda x, p=prec: jnp.matmul(x, x, precision=p))
        rates[name] = 2 * n ** 3 / _timed(lambda: mm(a))
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    config = _fig3a_config(quick, sequential=True)
    plans = plan.plan_config(config)
    return dict(platform=dev.platform, device_kind=dev.device_kind, memory_stats=stats,
                matmul_gflops=dict((k, v / 1e9) for k, v in rates.items()),
                highest_over_default_time=rates["default"] / rates["highest"],
                fig3a_plan=plan.format_plan(config, plans).splitlines(),
                fig3a_fits=all(p.fits for p in plans))


def _fig3a_config(quick, sequential):
    from lookahead_jax import loop, train
    if quick:
        return loop.LoopConfig(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                               strategy="mlmoc", sequential=sequential, cycles=2,
                               initial_size=20, query_size=5, subset_size=100,
                               train=train.TrainConfig(epochs=2, batch_size=16))
    return loop.LoopConfig(dataset="mnist", model="wide_resnet",
                           model_kwargs=(("blocks_per_group", 1), ("num_groups", 1),
                                         ("widen_factor", 40)),
                           strategy="mlmoc", sequential=sequential, cycles=4,
                           initial_size=100, query_size=20, subset_size=1000,
                           manual_dir=str(DEFAULT_MNIST),
                           train=train.TrainConfig(epochs=20, first_cycle_epochs=100,
                                                   batch_size=8, learning_rate=0.2,
                                                   weight_decay=0.0))


def step_ntk(quick):
    from lookahead_jax import models, ntk
    out = {}
    cases = [("mlp", dict(widths=(256, 256)), (8, 8, 1), 20, 60)] if quick else [
        ("mlp", dict(widths=(1024, 1024)), (28, 28, 1), 1000, 10000),
        ("wrn", dict(num_groups=1, blocks_per_group=1, widen_factor=4), (28, 28, 1),
         1000, 2000)]
    for name, kw, shape, L, U in cases:
        model = models.get_model("wide_resnet" if name == "wrn" else name, 10, **kw)
        var = model.init(jax.random.key(0), jnp.zeros((1, *shape)))
        x = jax.random.normal(jax.random.key(1), (L + U, *shape))
        f = model.bind(var.state)
        t = _timed(lambda: ntk.kernel_set(f, var.params, x[:L], x[L:]), repeats=1 if not
                   quick else 3)
        cost = ntk.kernel_cost(f, var.params, x)
        out[f"{name}_L{L}_U{U}"] = dict(seconds=t, gflop=(cost["contraction_flops"]
                                                          + cost["row_flops"]) / 1e9,
                                        implementation=cost["implementation"])
    return out


def step_lookahead(quick):
    from lookahead_jax import lookahead as la
    L, U, C = (30, 120, 10) if quick else (2000, 10000, 10)
    z = jax.random.normal(jax.random.key(2), (L + U, 64))
    k = z @ z.T
    f_l = jnp.zeros((L, C))
    f_u = jax.random.normal(jax.random.key(3), (U, C)) * 0.1
    y = jnp.zeros(L, jnp.int32)

    def batch():
        st, spec, _ = la.build_system(k[:L, :L], k[L:, :L], y, f_l, f_u, num_classes=C,
                                      k_uu=k[L:, L:])
        return la.score_candidates("mlmoc", spec, st)[0]

    st, spec, _ = la.build_system(k[:L, :L], k[L:, :L], y, f_l, f_u, num_classes=C,
                                  k_uu=k[L:, L:], capacity=L + 21, sequential=True)
    st = la.add_labeled(spec, st, 0, 1)                      # compile both calls
    jax.block_until_ready(st)
    t0 = time.perf_counter()
    for j in range(1, 21):
        st = la.add_labeled(spec, st, j, 1)
    jax.block_until_ready(st)
    return dict(L=L, U=U, batch_mlmoc_s=_timed(batch),
                sequential_step_ms=(time.perf_counter() - t0) / 20 * 1e3)


def step_fig3a(quick, workdir):
    if quick:
        from lookahead_jax import loop
        rows = {}
        for seq in (True,):             # the quick rehearsal: the sequential run only
            res = loop.run(_fig3a_config(True, seq), os.path.join(workdir, f"seq{int(seq)}"))
            rows["sequential" if seq else "batch"] = [
                dict(labeled=m.get("num_labeled"), accuracy=m.get("test_accuracy"))
                for m in getattr(res, "metrics", [])]
        return dict(rc=0, rows=rows)
    out = {}
    for seq in (True, False):
        out["sequential" if seq else "batch"] = _sub(
            [sys.executable, "-m", "experiments.main",
             "--config=experiments/configs/mnist_wrn.py", f"--manual_dir={DEFAULT_MNIST}",
             "--strategy=mlmoc", "--config.model_kwargs.widen_factor=40",
             "--config.cycles=4", f"--config.sequential={seq}", "--config.seed=0",
             f"--workdir={workdir}/fig3a_seq{int(seq)}"], timeout=120)
    out["rc"] = max(v["rc"] for v in out.values())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU rehearsal in seconds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default="/tmp/device_check_runs")
    a = ap.parse_args(argv)
    dev = jax.devices()[0]
    out = a.out or ("/tmp/device_check_quick.json" if a.quick else
                    str(REPO / "benchmarks" / "results" / f"device_check_{dev.platform}.json"))
    res = dict(machine=common.machine_info(), commit=common.git_commit()["commit"],
               quick=a.quick, seed=0, load_avg_start=common.load_avg(), steps={})
    steps = [("plan", lambda: step_plan(a.quick)), ("ntk", lambda: step_ntk(a.quick)),
             ("lookahead", lambda: step_lookahead(a.quick)),
             ("fig3a", lambda: step_fig3a(a.quick, a.workdir))]
    if not a.quick:
        steps.insert(1, ("twins", lambda: _sub(
            [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
             *TWINS, "-k", TWINS_K], timeout=150)))
        steps.insert(4, ("whole_pool", lambda: _sub(
            [sys.executable, "benchmarks/whole_pool.py", f"--manual_dir={DEFAULT_MNIST}",
             "--out", str(REPO / "benchmarks" / "results" / f"whole_pool_{dev.platform}.json")],
            timeout=120)))
    ok = True
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            rec = fn()
        except Exception as e:  # noqa: BLE001  (a miss is recorded, the others still run)
            rec = dict(rc=1, error=f"{type(e).__name__}: {e}")
        rec["step_seconds"] = time.perf_counter() - t0
        ok &= rec.get("rc", 0) == 0
        res["steps"][name] = rec
        print(f"{name}: {'ok' if rec.get('rc', 0) == 0 else 'MISS'} "
              f"({rec['step_seconds']:.1f} s)", flush=True)
    res["load_avg_end"] = common.load_avg()
    res["ok"] = bool(ok)
    common.write_json(out, json.loads(json.dumps(res, default=str)))
    print("wrote", out)
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
