"""What every benchmark in benchmarks/ shares: timing, machine info, matmul peak, JSON.

* :func:`time_calls`: a first (compiling) call, warm-up calls, then timed calls, each
  blocked until the device is done; medians, minima and every run are recorded.
  :func:`timed` is the same returning ``(output, median seconds)``.
* :func:`machine_info`: platform, CPU model, cores and affinity, load average, Python,
  jax / jaxlib versions, backend and devices, the git commit (and whether the working
  tree differed).
* :func:`matmul_peak`: float32 GFLOP/s of one jitted ``(n, n) @ (n, n)``, the roof the
  benchmarks quote achieved fractions against.
* :func:`write_json`: the result file, its folder made if needed.

Only the standard library is imported at module level (jax on first use), so
``benchmarks/ntk_vs_nt.py``'s child processes can import it from another environment.
Benchmarks import it as a sibling module (``import common``, with their own folder on
``sys.path``), which works whether they run as scripts or are loaded by the tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- timing


def block(x):
    """``x`` (any pytree) once every device array in it is ready."""
    import jax

    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                        else a, x)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """Times ``fn()``: one first call (compiles), ``warmup`` more, then ``repeats`` timed.

    Returns ``median_s``, ``min_s``, ``runs`` (every timed call), ``first_call_s``,
    ``warmup_s`` (the warm-up calls' total) and ``compile_s_est`` (first − median).
    """
    t0 = time.perf_counter()
    block(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup):
        block(fn())
    warm = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        runs.append(time.perf_counter() - t0)
    med = statistics.median(runs)
    return {"median_s": med, "min_s": min(runs), "runs": runs, "first_call_s": first,
            "warmup_s": warm, "compile_s_est": max(first - med, 0.0)}


def timed(fn, *a, repeat: int = 1, **kw):
    """``(fn(*a, **kw), median wall seconds over repeat calls after one warm-up)``."""
    out = block(fn(*a, **kw))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = block(fn(*a, **kw))
        runs.append(time.perf_counter() - t0)
    return out, statistics.median(runs)


# ----------------------------------------------------------------------------- machine


def load_avg() -> list:
    """The 1, 5 and 15 minute load averages."""
    return list(os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit(repo: Path = REPO) -> dict:
    """``{"commit": HEAD, "dirty": tracked files differ}`` (``None`` outside git)."""
    def run(*a):
        try:
            return subprocess.run(["git", "-C", str(repo), *a], capture_output=True,
                                  text=True).stdout.strip()
        except OSError:
            return ""

    commit = run("rev-parse", "HEAD") or None
    return {"commit": commit,
            "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))
            if commit else None}


def machine_info(**extra) -> dict:
    """The machine a result was measured on (``extra`` keys are added as given)."""
    import jax
    import jaxlib

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
            "load_avg": load_avg(), "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **git_commit()}
    info.update(extra)
    return info


def matmul_peak(n: int = 4096, repeats: int = 5) -> dict:
    """Float32 GFLOP/s of a jitted ``(n, n) @ (n, n)`` on the default device.

    Returns :func:`time_calls`'s record plus ``n`` and ``gflops`` (2n³ / median).
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    r = time_calls(lambda: mm(a, b), repeats)
    r["gflops"] = 2 * n ** 3 / r["median_s"] / 1e9
    r["n"] = n
    return r


# ----------------------------------------------------------------------------- output


def write_json(path, obj, indent: int = 1) -> Path:
    """Writes ``obj`` as JSON to ``path`` (its folder made if missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent))
    return path
