"""Joining a multi-process JAX run, and moving data in and out of its global arrays.

When one machine is not enough, every host (or every process on one host) runs the same
program; :func:`initialize` joins them through ``jax.distributed.initialize``, after
which ``jax.devices()`` lists the devices of *all* processes and the NTK engine lays
each chunk of examples over one global ``Mesh(jax.devices(), ("batch",))``
(:mod:`lookahead_jax.ntk.empirical`). Nothing here is a communication layer of its own:
the arrays are JAX's global ``jax.Array`` s and the collectives are XLA's (gloo on CPU,
NCCL on GPU).

The contract of a multi-process run (JAX's multi-controller model): every process calls
the same functions in the same order with the same host inputs (the same data, the same
parameters); a global array is then one value, whose shards live on different
processes. :func:`global_array` builds one from such a host array
(``jax.make_array_from_callback``: each process places only its own shards, with no
communication); :func:`gather` brings a global result back as a NumPy array, identical on
every process (``multihost_utils.process_allgather``: a collective, so every process
must call it).

Launch: the same program on every host (or several processes on one), each calling
``initialize("HOST:PORT", num_processes, process_id)`` first, HOST:PORT being process 0's
host and any free port there; under SLURM or Open MPI leave the three ``None`` (JAX
detects them). The CLI does this with ``--distributed`` (README, "More than one machine").

Failure modes, all bounded in time:

* the coordinator (process 0) cannot be reached: :class:`DistributedInitError` after
  ``timeout_s`` naming the address (checked with plain TCP connects before JAX is
  touched, so the process stays usable);
* the processes do not all arrive (process 0 waits for the others): the same error after
  ``timeout_s``. JAX cannot cancel a half-made connection: its runtime then ends the
  process about ``_ABORT_GRACE_S`` seconds later, so the caller should report and exit.
  (``jax.distributed.initialize``'s own ``initialization_timeout`` does bound the wait,
  but it ends the process with a C++ fatal error and a stack trace instead of raising.)
* one process stops later (an error only it saw): once it has left, the others' next
  collective fails at once (on CPU a ``ValueError``, "Gloo all-reduce failed: ...
  Connection closed by peer"; :func:`initialize` runs one collective so that the
  connections exist from the start, else gloo waits 30 s for the missing peer's
  address). But a process that raises and exits the normal way does not leave: JAX's
  shutdown waits for the others while they wait in their collective (measured: ~5 min,
  then a C++ abort with a stack trace on every process). The CLI therefore ends a
  failed process of a multi-process run at once (``os._exit`` after its one line), and
  the others say in one line that another process stopped. Checks that can fail should
  fail on every process alike (a workdir process 0 refuses is refused on all).

:func:`initialize` turns JAX's preemption service off: that service takes SIGTERM (it logs
the signal and the process goes on), so a joined process could be stopped only with
SIGKILL. Without it SIGTERM stops a joined process as it stops a one-process run, and the
others' next collective fails as above.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["DistributedInitError", "initialize", "check_args", "parse_address",
           "is_multiprocess", "global_array", "gather", "broadcast_from_first",
           "broadcast_json"]

# Seconds JAX's own initialization timeout is set beyond ``timeout_s``, so that the clear
# Python error always comes first.
_ABORT_GRACE_S = 60


class DistributedInitError(RuntimeError):
    """This process could not join the multi-process run (one line: what, where, how long)."""


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[ipv6]:port"``) → ``(host, port)``; ValueError when malformed."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"coordinator address must be HOST:PORT, got {address!r}")
    host, port = address.rsplit(":", 1)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address must be HOST:PORT with a port in 1..65535, "
                         f"got {address!r}")
    return host, int(port)


def check_args(coordinator_address: Optional[str], num_processes: Optional[int],
               process_id: Optional[int]) -> tuple[Optional[str], Optional[int], Optional[int]]:
    """The three launch values, checked: all ``None`` (JAX detects them) or all given,
    ``"HOST:PORT"``, ``num_processes >= 1``, ``0 <= process_id < num_processes``.

    Returns them (integers as ``int``); raises ValueError naming the bad one.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if not any(given):
        return None, None, None
    if not all(given):
        raise ValueError("give coordinator_address, num_processes and process_id together "
                         "(or none of them, for JAX to detect them under SLURM / Open MPI)")
    parse_address(coordinator_address)
    for name, v in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, "
                         f"got num_processes={num_processes}, process_id={process_id}")
    return coordinator_address, int(num_processes), int(process_id)


def _wait_for_port(address: str, deadline: float) -> None:
    """Retries a TCP connect to ``address`` until it succeeds or ``deadline`` passes."""
    host, port = parse_address(address)
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistributedInitError(last)
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(left, 0.1))):
                return
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None, *,
               timeout_s: float = 300.0) -> None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), bounded.

    Call it first, before anything uses JAX (``jax.devices()``, any array): JAX refuses
    afterwards. A second call in a process that has joined is a no-op.

    Args:
      coordinator_address: ``"HOST:PORT"`` of process 0, which serves the coordinator on
        that port (any free port, the same for every process).
      num_processes: how many processes take part (≥ 1).
      process_id: this process, in ``[0, num_processes)``.
        Leave all three ``None`` under SLURM or Open MPI: JAX detects them.
      timeout_s: the longest this call waits for the coordinator and the other processes.

    Before joining, CPU cross-process collectives are set to gloo
    (``jax_cpu_collectives_implementation``, already JAX's default) unless another
    implementation (``"mpi"``) was chosen; the setting only concerns CPU devices.

    Raises:
      DistributedInitError: the coordinator was unreachable, the processes did not all
        arrive, or JAX refused to join (e.g. JAX was already in use), within ``timeout_s``.
      ValueError: malformed arguments.
    """
    if jax.distributed.is_initialized():
        return
    coordinator_address, num_processes, process_id = check_args(
        coordinator_address, num_processes, process_id)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    where = coordinator_address or "the coordinator JAX detects (SLURM / Open MPI)"
    deadline = time.monotonic() + float(timeout_s)
    # JAX's preemption service takes SIGTERM (logs it and goes on), so a joined process
    # could only be stopped with SIGKILL; without it SIGTERM stops it as it stops a
    # one-process run (the CLI: one line, exit 143). We use no preemption sync points.
    jax.config.update("jax_enable_preemption_service", False)
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address is not None and process_id != 0:
        try:
            _wait_for_port(coordinator_address, deadline)
        except DistributedInitError as e:
            raise DistributedInitError(
                f"cannot reach the coordinator at {coordinator_address} within "
                f"{timeout_s:g} s ({e}); start process 0 there first, and check the host "
                f"name and that the port is open") from None

    # jax.distributed.initialize blocks in C++ and, at its own timeout, ends the process:
    # run it in a helper thread and give up waiting first.
    outcome: dict[str, Any] = {}

    def join():
        try:
            left = int(max(deadline - time.monotonic(), 1))
            jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                       initialization_timeout=left + _ABORT_GRACE_S)
        except BaseException as e:  # noqa: BLE001  (reported in the caller's thread)
            outcome["error"] = e

    thread = threading.Thread(target=join, name="jax-distributed-initialize", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    if thread.is_alive():
        n = f"{num_processes} processes" if num_processes else "all processes"
        me = "" if process_id is None else f" (this is process {process_id})"
        raise DistributedInitError(
            f"the multi-process run did not form within {timeout_s:g} s: {n} must join the "
            f"coordinator at {where}{me}; this process cannot join any more: exit (JAX's "
            f"runtime would end it about {_ABORT_GRACE_S} s from now)")
    if "error" in outcome:
        e = outcome["error"]
        raise DistributedInitError(f"cannot join the multi-process run at {where}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                   ) from e
    # One collective now, so that the processes' connections (gloo's, on CPU) exist from
    # the start: a process that leaves later is noticed at the others' next collective at
    # once ("Connection closed by peer"), not after gloo's 30 s wait for its address.
    multihost_utils.sync_global_devices("lookahead_jax.distributed.initialize")


def is_multiprocess() -> bool:
    """Whether more than one process takes part (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def global_array(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global ``jax.Array`` with value ``x`` laid out as ``sharding``.

    ``x``: a host array (NumPy) or a process-local ``jax.Array`` holding the SAME value on
    every process (the multi-controller contract). Each process places only the shards
    of its own devices (``jax.make_array_from_callback``): no communication, unlike
    ``jax.device_put`` of host data onto a multi-process sharding, which first checks
    the value is equal everywhere by gathering it from every process. A global array
    already spanning the processes is resharded with ``jax.device_put``.

    Returns:
      an array of ``x``'s shape and dtype, ``sharding`` its sharding.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index],
                                        dtype=jax.dtypes.canonicalize_dtype(x.dtype))


def gather(tree: Any) -> Any:
    """Every array leaf of ``tree`` as a NumPy array of its whole (global) value.

    On every process the same values: a global array sharded over several processes is
    all-gathered (``multihost_utils.process_allgather``, a collective: every process
    must call :func:`gather` on the same arrays in the same order); a replicated one is
    read from a local shard; a process-local array is fetched (``jax.device_get``), as
    ``np.asarray`` would in a single process.
    """
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            if a.is_fully_replicated:
                return np.asarray(a.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(jax.device_get(a))

    return jax.tree.map(one, tree)


def broadcast_from_first(tree: Any) -> Any:
    """Process 0's value of every array leaf of ``tree``, as NumPy, on every process.

    ``multihost_utils.broadcast_one_to_all`` (a collective; leaves must have the same
    shapes everywhere). One process: the leaves as NumPy.
    """
    return multihost_utils.broadcast_one_to_all(tree)


def broadcast_json(value: Any) -> Any:
    """Process 0's ``value`` (anything ``json.dumps`` takes) on every process.

    The other processes' ``value`` is ignored; what every process gets back, process 0
    included, is the JSON round trip of process 0's (tuples become lists, keys strings).
    Two collectives (:func:`broadcast_from_first` of the length, then of the UTF-8
    bytes): every process must call it, in the same order as its other collectives.
    """
    first = jax.process_index() == 0
    data = np.frombuffer(json.dumps(value).encode() if first else b"", np.uint8)
    size = int(broadcast_from_first(np.int32(data.size)))
    buf = data if first else np.zeros(size, np.uint8)
    return json.loads(np.asarray(broadcast_from_first(buf), np.uint8).tobytes().decode())
