"""A plan before a run: per cycle, what the kernels and the look-ahead cost, and whether it
fits the present device (``lookahead-jax --plan``, same flags as a run, nothing trained).

Per cycle t (L_t = initial_size + t · query_size labeled points, U = min(subset_size,
pool − L_t) candidates, N = L_t (+ query_size in sequential mode) labeled capacity, B = C
for ``kernel="full"`` else 1):

* kernel FLOPs: :func:`lookahead_jax.ntk.kernel_cost` of Θ over the L + U points (the
  forward and backward passes of every example, the Jacobian-row assembly and the
  contraction of all (L + U)² pairs), counted from the traced one-example network;
* look-ahead FLOPs (``lookahead.py``'s "Cost per cycle"): Cholesky (NB)³/3, the triangular
  solve W_U = Lc⁻¹ Θ(X, U) (NB)²·UB, the Schur norms 2·NB·UB, the products W_Uᵀ W_U
  2·U·U·NB² (+ U·U·C for MLMOC's sum; ×C for EMOC/EER); sequential steps add
  query_size · (2(NB)² + 4U²B²);
* peak memory (float32 or the run's dtype): the features of the L + U points, Θ(U, U)
  (not when streaming), Θ(U, X), W_U, Cholesky and Θ(X, X), one chunk's E × k block
  (×C outputs), and A (U × U) in sequential mode;
* seconds: (kernel + look-ahead FLOPs) / the float32 matmul rate measured on the present
  device (:func:`matmul_rate`, a jitted HIGHEST-precision 1024² matmul): a lower bound
  that ignores memory traffic (tests/test_plan.py states the factor to measured runs);
* fits: peak ≤ the device's memory (:func:`device_memory`): ``memory_stats()['bytes_limit']``
  where the backend has it, else (CPU) 1/2 of the physical RAM (a documented default,
  :data:`HOST_FRACTION`).

An acquisition that cannot fit is refused with one line saying what would fit
(:func:`check_fits`): the largest U that fits, ``streaming=True`` (no U × U kernel),
or projected NTK features (a P-dimensional feature map of bounded width).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lookahead_jax import ntk

HOST_FRACTION = 0.5
# (input shape, classes, pool size) of the built-in datasets: a plan needs no data
SHAPES = {"digits": ((8, 8, 1), 10, 1437), "mnist": ((28, 28, 1), 10, 60000),
          "fashion_mnist": ((28, 28, 1), 10, 60000), "svhn_cropped": ((32, 32, 3), 10, 73257),
          "cifar10": ((32, 32, 3), 10, 50000), "cifar100": ((32, 32, 3), 100, 50000)}
LOOKAHEAD = ("mlmoc", "emoc", "eer", "label_flip")


def device_memory() -> tuple[int, str]:
    """(bytes, where the number came from) of the default device."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats()
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"]), f"{dev.platform} memory_stats bytes_limit"
    except Exception:  # noqa: BLE001  (CPU devices may not implement memory_stats)
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(total * HOST_FRACTION), f"host: {HOST_FRACTION:g} of physical RAM"
    except (ValueError, OSError, AttributeError):
        return 8 << 30, "default 8 GiB"


@functools.lru_cache(maxsize=1)
def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 FLOP/s of a jitted ``(n, n) @ (n, n)`` at HIGHEST on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times))


@dataclasses.dataclass(frozen=True)
class CyclePlan:
    """One cycle's estimate (FLOPs are 2 × multiply-adds; bytes; seconds)."""
    cycle: int
    labeled: int
    candidates: int
    kernel_flops: int
    lookahead_flops: int
    feature_bytes: int
    kernel_bytes: int
    lookahead_bytes: int
    peak_bytes: int
    seconds: float
    fits: bool


def lookahead_cost(L: int, U: int, C: int, *, block: int = 1, kind: str = "mlmoc",
                   sequential: bool = False, queries: int = 0, streaming: bool = False,
                   chunk: int = 256, itemsize: int = 4) -> tuple[int, int, int]:
    """(FLOPs, bytes of the kernel blocks Θ(U,U)/Θ(U,X)/Θ(X,X), bytes of the algebra's own
    buffers) of one look-ahead cycle (module docstring); E = U."""
    b = block
    N = L + (queries if sequential else 0)
    nb, ub = N * b, U * b
    per_label = C if kind in ("emoc", "eer") else 1
    flops = nb ** 3 // 3 + nb * nb * ub + 2 * nb * ub + 2 * U * U * nb * b * per_label \
        + 6 * U * U * C * per_label
    if sequential:
        flops += queries * (2 * nb * nb + 4 * ub * ub)
    kern = ((0 if streaming else ub * ub) + ub * nb + nb * nb) * itemsize
    outputs = C if (kind != "mlmoc" or b > 1) else 0   # MLMOC, B = 1: no E × C per candidate
    own = (ub * nb + nb * nb + ub * min(chunk, U) * b * (1 + outputs)
           + (ub * ub if sequential else 0)) * itemsize
    return int(flops), int(kern), int(own)


def _network(config, shape, classes):
    """(f, params) of the config's network, zeros of the right shapes (nothing trained)."""
    from lookahead_jax import models
    model = models.get_model(config.model, classes, **dict(config.model_kwargs))
    x1 = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    var = jax.eval_shape(model.init, jax.random.key(0), x1)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), var)
    return model.bind(zeros.state), zeros.params


def _options(config) -> dict:
    return dict(config.strategy_options)


def plan_config(config, *, shape=None, classes=None, pool=None, memory=None,
                rate=None) -> list[CyclePlan]:
    """Per-cycle plans of a :class:`~lookahead_jax.loop.LoopConfig` on the present device.

    ``shape``, ``classes``, ``pool``: the data's (default: :data:`SHAPES` of the config's
    dataset); ``memory`` (bytes) and ``rate`` (FLOP/s) default to the present device's.
    """
    known = SHAPES.get(config.dataset)
    if shape is None and known is None:
        raise ValueError(f"--plan: dataset {config.dataset!r} has no known shape; call "
                         "lookahead_jax.plan.plan_config(config, shape=..., classes=..., "
                         "pool=...)")
    shape = tuple(shape or known[0])
    classes = int(classes or known[1])
    pool = int(pool or config.max_train or known[2])
    memory = memory or device_memory()[0]
    rate = rate or matmul_rate()
    opts = _options(config)
    kernel = opts.get("kernel", "first_logit")
    block = classes if kernel == "full" else 1
    f, params = _network(config, shape, classes)
    out = []
    for t in range(config.cycles):
        L = config.initial_size + t * config.query_size
        U = max(0, min(config.subset_size, pool - L))
        cost = ntk.kernel_cost(f, params, jax.ShapeDtypeStruct((L + U, *shape), jnp.float32),
                               output="full" if kernel == "full" else "first_logit",
                               implementation=opts.get("ntk_implementation", "auto"))
        kflops = ((cost["fwd_flops_per_example"] + cost["bwd_flops_per_example"]) * (L + U)
                  + cost["row_flops"] + cost["contraction_flops"])
        feat = cost["feature_bytes_per_example"] * (L + U)
        if config.strategy in LOOKAHEAD:
            lflops, kern, own = lookahead_cost(
                L, U, classes, block=block, kind=config.strategy,
                sequential=config.sequential, queries=config.query_size,
                streaming=bool(opts.get("streaming", False)),
                chunk=int(opts.get("chunk_size", 256)))
        else:
            lflops = kern = own = 0
        peak = max(feat + kern, kern + own)
        out.append(CyclePlan(t, L, U, int(kflops), lflops, int(feat), kern, own, int(peak),
                             (kflops + lflops) / rate, peak <= memory))
    return out


def _gib(b) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def format_plan(config, plans: list[CyclePlan], *, memory=None, rate=None) -> str:
    """The table ``--plan`` prints."""
    memory, where = (memory, "given") if memory else device_memory()
    rate = rate or matmul_rate()
    dev = jax.devices()[0]
    lines = [f"plan: {config.dataset} {config.model} {dict(config.model_kwargs)} "
             f"strategy={config.strategy} sequential={config.sequential} on "
             f"{dev.platform} ({dev.device_kind}): memory {_gib(memory)} ({where}), "
             f"matmul {rate / 1e9:.1f} GFLOP/s (float32, HIGHEST, measured)",
             "cycle  labeled  cand.  kernel GFLOP  look-ahead GFLOP  peak memory  est. s  fits"]
    for p in plans:
        lines.append(f"{p.cycle:5d}  {p.labeled:7d}  {p.candidates:5d}  "
                     f"{p.kernel_flops / 1e9:12.1f}  {p.lookahead_flops / 1e9:16.1f}  "
                     f"{_gib(p.peak_bytes):>11}  {p.seconds:6.1f}  "
                     f"{'yes' if p.fits else 'NO'}")
    return "\n".join(lines)


def check_fits(config, plans: Optional[list[CyclePlan]] = None, *, memory=None,
               **kw) -> list[CyclePlan]:
    """Raises ``ValueError`` (one line: what would fit) when a cycle does not fit."""
    memory = memory or device_memory()[0]
    plans = plans if plans is not None else plan_config(config, memory=memory, **kw)
    bad = [p for p in plans if not p.fits]
    if not bad:
        return plans
    p = bad[0]
    opts = _options(config)
    classes = kw.get("classes") or SHAPES.get(config.dataset, (None, 10))[1]
    block = classes if opts.get("kernel") == "full" else 1
    per_cand = p.feature_bytes / max(p.labeled + p.candidates, 1)
    u_fit = 0
    for u in sorted({int(p.candidates * f) for f in np.geomspace(1e-3, 1, 60)}):
        _, kern, own = lookahead_cost(p.labeled, u, classes, block=block,
                                      sequential=config.sequential,
                                      queries=config.query_size,
                                      streaming=bool(opts.get("streaming", False)))
        if max(per_cand * (p.labeled + u) + kern, kern + own) <= memory:
            u_fit = u
    _, kern_s, own_s = lookahead_cost(p.labeled, p.candidates, classes, block=block,
                                      streaming=True)
    stream = max(p.feature_bytes + kern_s, kern_s + own_s)
    fit = (f"use subset_size <= {u_fit}" if u_fit else
           f"no subset_size fits (the features of the {p.labeled} labeled points alone "
           f"need {_gib(per_cand * p.labeled)})")
    raise ValueError(
        f"cycle {p.cycle} (L={p.labeled}, U={p.candidates}) needs {_gib(p.peak_bytes)}, the "
        f"device has {_gib(memory)}: {fit}"
        + (f", or strategy_options.streaming=True ({_gib(stream)})"
           if not config.sequential and stream <= memory else "")
        + ", or projected NTK features (issue 21)")


__all__ = ["CyclePlan", "check_fits", "device_memory", "format_plan", "lookahead_cost",
           "matmul_rate", "plan_config"]
