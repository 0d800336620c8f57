"""The NTK engine's memory planner and cost model: how many examples per call, and what
a kernel costs, read off the traced one-example program before anything is computed.

The engine (:mod:`lookahead_jax.ntk.empirical`) traces ``f`` on one example and analyses
its structured layers (:mod:`lookahead_jax.ntk.structured`); this module turns that
trace into a :class:`Plan` (feature and working-set bytes per example, examples per
feature call, contraction and row-assembly FLOPs) and into the FLOP counts of
``ntk.kernel_cost``. It never imports the engine: the engine passes the traced program,
its layers, the memory budget and the step size in.

Memory budget (:func:`memory_budget_bytes`): 1/2 of an accelerator's free memory,
``memory_stats()['bytes_limit'] − ['bytes_in_use']``; where the backend has no ``memory_stats`` (CPU), min(1/8
of physical RAM, 1/2 of the RAM free now) from ``os.sysconf``; 4 GiB where neither is
known.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MIN_CHUNK = 8
# Size of the largest intermediate (activation, cotangent, conv patch matrix, Jacobian
# rows of one layer) of one call of the feature computation. XLA:CPU allocates its
# buffers on every call, and the allocator maps buffers ≥ 32 MiB afresh each time: first
# touches of fresh pages run at ~1 GB/s on a VM, 10-20× slower than warm memory. Calls
# of few examples keep conv nets' patch matrices small; MLPs still run whole batches.
STEP_BYTES = 6 << 20
# Largest side computed by the single-program path (features + contraction in one jit).
FUSED_MAX = 4096
DEFAULT_BUDGET = 4 << 30


def memory_budget_bytes() -> int:
    """Bytes the engine allows itself: 1/2 of what an accelerator's allocator has free
    (``memory_stats()``: ``bytes_limit − bytes_in_use``), else min(1/8 of physical RAM,
    1/2 of the RAM free now)."""
    try:
        stats = jax.devices()[0].memory_stats()
        if stats and "bytes_limit" in stats:
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            return max(free, 0) // 2
    except Exception:  # noqa: BLE001  (CPU devices may not implement memory_stats)
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return min(page * os.sysconf("SC_PHYS_PAGES") // 8,
                   page * os.sysconf("SC_AVPHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return DEFAULT_BUDGET


class Plan(NamedTuple):
    implementation: str
    feat_bytes: int      # per example
    work_bytes: int      # per example, transient (forward + K backward passes)
    step: int = 1        # examples per call of the feature computation (working set)
    pair_flops: int = 0  # contraction FLOPs per (x, x') pair (scalar outputs)
    row_flops: int = 0   # FLOPs per example to assemble Jacobian rows Σ_s a_s ⊗ δ_s


def cached(cache: dict, key, build) -> Plan:
    """``cache[key]``, built by ``build()`` on a miss (no caching for an unhashable key)."""
    try:
        return cache[key]
    except TypeError:                                    # unhashable f: no caching
        return build()
    except KeyError:
        plan = build()
        if len(cache) > 256:
            cache.clear()
        cache[key] = plan
        return plan


def example_dependent(prog) -> list:
    """Ids of the program's values computed from the example x (its last input)."""
    dep = {prog.in_ids[-1]}
    for node in prog.nodes:
        if any(r[0] == "v" and r[1] in dep for r in node.ins):
            dep.update(node.outs)
    return sorted(dep)


def plan_uncached(prog, layers, fallback, use_struct, leaves, x_dtype, implementation,
                  *, budget: int, step_bytes: int) -> Plan:
    """The :class:`Plan` of one traced program (``structured.trace_program``/``analyse``).

    Args:
      prog, layers, fallback, use_struct: the engine's one-example trace, its structured
        layers, the leaves kept as Jacobian rows, and per layer leaf whether it is
        contracted structurally.
      leaves: the parameter leaves; x_dtype: the examples' dtype.
      implementation: ``"jacobian"``, ``"structured"``, ``"jvp_vjp"`` or ``"auto"``.
      budget: bytes allowed (:func:`memory_budget_bytes`); ``"auto"`` takes
        ``"jvp_vjp"`` when 8 examples' features and working set exceed it.
      step_bytes: bound on one call's largest intermediate (:data:`STEP_BYTES`).
    """
    n_params = sum(int(np.size(l)) for l in leaves)
    itemsize = jnp.dtype(x_dtype).itemsize
    k = prog.avals[prog.out_refs[0][1]].shape[-1]
    if implementation == "jacobian":
        use_struct = {leaf: False for leaf in use_struct}
    n_rows = sum(int(np.size(leaves[i])) for i in fallback)
    per_example, pair_flops, row_flops = 0, 0, 0
    per_ex_ids = example_dependent(prog)
    largest = max([math.prod(prog.avals[i].shape) for i in per_ex_ids] + [1])
    for l in layers:
        b = l.bias is not None
        if l.kind == "conv":
            largest = max(largest, l.s * l.d_in)           # its patch matrix
        if use_struct[l.leaf]:
            per_example += l.s * l.d_in + k * l.s * l.d_out
            # Gram of A (S²·D_in), Gram of Δ (S²·D_out·K²), Hadamard and sum (S²·K²)
            pair_flops += 2 * l.s * l.s * (l.d_in + k * k * l.d_out + k * k)
        else:
            n_rows += (l.d_in + b) * l.d_out
            largest = max(largest, k * (l.d_in + b) * l.d_out)
            row_flops += 2 * k * l.s * l.d_in * l.d_out
    per_example += k * n_rows
    pair_flops += 2 * k * k * n_rows
    # per-example activations: every value computed from x
    act = sum(math.prod(prog.avals[i].shape) for i in per_ex_ids) * itemsize
    work = act * (k + 2)
    if implementation == "jvp_vjp":
        return Plan("jvp_vjp", 0, work + n_params * itemsize)
    impl = implementation
    feat = per_example * itemsize
    if impl == "auto":
        impl = "structured"
        if MIN_CHUNK * (feat + work) > budget:
            return Plan("jvp_vjp", 0, work + n_params * itemsize)
    step = max(1, step_bytes // (k * largest * itemsize))
    return Plan(impl, feat, work, step, pair_flops, row_flops)


def auto_chunk(plan: Plan, n: int, budget: int) -> int:
    """Examples per chunk when the user gave none: a quarter of ``budget`` per chunk."""
    per = plan.feat_bytes + plan.work_bytes
    return max(MIN_CHUNK, min(n, budget // (4 * max(per, 1))))


def pass_flops(prog) -> tuple[int, int]:
    """(forward, backward) dot_general + convolution FLOPs of the traced one-example program."""
    k = prog.avals[prog.out_refs[0][1]].shape[-1]
    param_dep = set(prog.in_ids[:-1])
    fwd = bwd = 0
    for node in prog.nodes:
        if any(r[0] == "v" and r[1] in param_dep for r in node.ins):
            param_dep.update(node.outs)
        name = node.prim.name
        if name not in ("dot_general", "conv_general_dilated") or node.ins[0][0] != "v":
            continue
        out = math.prod(prog.avals[node.outs[0]].shape)
        if name == "dot_general":
            (ca, _), _ = node.params["dimension_numbers"]
            lhs = prog.avals[node.ins[0][1]].shape
            flops = 2 * out * math.prod(lhs[d] for d in ca)
        else:
            _, rhs_spec, _ = node.params["dimension_numbers"]
            rhs = prog.avals[node.ins[1][1]].shape if node.ins[1][0] == "v" \
                else np.shape(node.ins[1][1])
            flops = 2 * out * math.prod(rhs[d] for d in rhs_spec[1:])
        fwd += flops
        if node.ins[0][1] in param_dep:
            bwd += k * flops
    return fwd, bwd


def cost(plan: Plan, prog, n1: int, n2: int, has_x2: bool) -> dict:
    """``ntk.kernel_cost``'s dict (documented there) from a plan and its traced program."""
    fwd, bwd = pass_flops(prog)
    return dict(implementation=plan.implementation, n1=n1, n2=n2,
                fwd_flops_per_example=fwd, bwd_flops_per_example=bwd,
                pair_flops=plan.pair_flops,
                contraction_flops=plan.pair_flops * n1 * n2,
                row_flops=plan.row_flops * (n1 + (n2 if has_x2 else 0)),
                feature_bytes_per_example=plan.feat_bytes, step=plan.step)
