"""One acquisition stays on the device: nothing is read back to the host but the answer.

From the trained network to the chosen indices the look-ahead runs as device programs
(padding, kernels, Cholesky, scores, top-k; in sequential mode each step): the guarded
regions below cover the whole computation, and whatever the caller gets (indices, logged
scalars) is fetched after them, explicitly.

The guard is JAX's ``transfer_guard`` in both directions, plus a stand-in for the
device-to-host direction on CPU. On CPU a ``jax.Array`` already lives in host memory, so
``np.asarray(x)``, ``float(x)`` or ``jax.device_get(x)`` copy nothing and JAX's guard never
fires (checked with jax 0.10.2: ``transfer_guard_device_to_host("disallow_explicit")``
lets all of them through). :func:`no_host_reads` makes every such read raise instead: the
value property behind ``float``/``int``/``bool``/``if``/``format``/``tolist``/
``device_get``, the NumPy converters (``np.asarray``, ``np.array``, ...), and any NumPy
function or ufunc applied to a device array. ``test_the_guard_catches_host_reads`` checks
that it does. Not caught: the buffer protocol used directly (``memoryview(x)``) and NumPy
indexing with a device array.

Host-to-device: the look-ahead's own code makes no implicit transfer (host numbers go in
with an explicit ``jax.device_put``, which ``"disallow"`` allows). The NTK engine
(``lookahead_jax.ntk``) and the network's chunked forward pass
(``models.apply_in_chunks``) slice arrays with Python integers in eager mode, and JAX
sends each such offset to the device implicitly; :func:`engine_may_upload` exempts those
two calls from the upload guard (never from the read-back guard).
"""

import contextlib
import dataclasses
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as jax_array

from lookahead_jax import models
from lookahead_jax.strategies import AcquisitionContext, get_strategy, ntk_lookahead


# ----------------------------------------------------------------------------- the guard


class HostRead(RuntimeError):
    """A device array was read on the host inside a device-resident region."""


_region = threading.local()


def _check(what: str) -> None:
    if getattr(_region, "depth", 0) and not getattr(_region, "fetching", 0):
        raise HostRead(f"device-to-host read inside a device-resident region: {what}")


@contextlib.contextmanager
def no_host_reads(allow_fetch: bool = False):
    """Every read of a device array's value on the host raises :class:`HostRead`.

    ``allow_fetch``: explicit ``jax.device_get`` calls are allowed (and counted: the
    context yields the list of fetched pytrees), as JAX's ``"disallow"`` level allows
    explicit transfers; every implicit read still raises.
    """
    impl = jax_array.ArrayImpl
    value = impl._value
    converters = {n: getattr(np, n) for n in ("asarray", "array", "asanyarray",
                                              "ascontiguousarray")}
    device_get = jax.device_get
    fetched = []

    def read_value(self):
        _check("the value of a jax.Array (float/int/bool/if/format/tolist/device_get)")
        return value.fget(self)

    def converter(name, fn):
        def convert(a, *args, **kwargs):
            if isinstance(a, impl):
                _check(f"np.{name}(jax.Array)")
            return fn(a, *args, **kwargs)
        return convert

    def array_function(self, func, types, args, kwargs):
        if func.__name__ not in ("shape", "ndim", "size", "result_type"):   # metadata
            _check(f"numpy.{func.__name__}(jax.Array)")
        return func._implementation(*args, **kwargs)

    def array_ufunc(self, ufunc, method, *inputs, **kwargs):
        _check(f"numpy ufunc {ufunc.__name__}.{method}(jax.Array)")
        return NotImplemented

    def fetch(tree):
        if not allow_fetch:
            _check("jax.device_get")
        fetched.append(tree)
        _region.fetching = getattr(_region, "fetching", 0) + 1
        try:
            return device_get(tree)
        finally:
            _region.fetching -= 1

    impl._value = property(read_value)
    impl.__array_function__ = array_function
    impl.__array_ufunc__ = array_ufunc
    for name, fn in converters.items():
        setattr(np, name, converter(name, fn))
    jax.device_get = fetch
    _region.depth = getattr(_region, "depth", 0) + 1
    try:
        yield fetched
    finally:
        _region.depth -= 1
        impl._value = value
        del impl.__array_function__, impl.__array_ufunc__
        for name, fn in converters.items():
            setattr(np, name, fn)
        jax.device_get = device_get


@contextlib.contextmanager
def resident(allow_fetch: bool = False):
    """Nothing comes back from the device, and nothing goes to it implicitly.

    JAX's guards (effective on accelerators for reads, everywhere for uploads) and
    :func:`no_host_reads` (reads on CPU). Explicit uploads (``jax.device_put``) are allowed.
    """
    with jax.transfer_guard_host_to_device("disallow"), \
            jax.transfer_guard_device_to_host("disallow" if allow_fetch
                                              else "disallow_explicit"), \
            no_host_reads(allow_fetch) as fetched:
        yield fetched


@pytest.fixture
def engine_may_upload(monkeypatch):
    """The NTK engine and the chunked forward pass may upload slice offsets implicitly
    (their eager glue: module docstring); reads stay forbidden."""
    def allow(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with jax.transfer_guard_host_to_device("allow"):
                out = fn(*args, **kwargs)
            if fn is kernels and out[1] is not None:          # streaming row blocks
                return out[0], allow(out[1])
            return out
        return call

    kernels = ntk_lookahead.kernels
    monkeypatch.setattr(ntk_lookahead, "kernels", allow(kernels))
    monkeypatch.setattr(ntk_lookahead, "predict", allow(ntk_lookahead.predict))


def test_the_guard_catches_host_reads():
    """On this platform the region really refuses reads (else the tests below prove
    nothing), and lets device work, explicit uploads and allowed fetches through."""
    x, s = jax.jit(lambda: (jnp.arange(4.0) * 2, jnp.float32(3)))()
    leaks = {"np.asarray": lambda: np.asarray(x), "float": lambda: float(s),
             "int": lambda: int(s), "if": lambda: 1 if s else 0,
             "item": lambda: s.item(), "tolist": lambda: x.tolist(),
             "device_get": lambda: jax.device_get(x), "np.sum": lambda: np.sum(x),
             "np ufunc": lambda: np.isfinite(x), "format": lambda: f"{x}"}
    for name, leak in leaks.items():
        with pytest.raises(HostRead):
            with resident():
                leak()
    with pytest.raises(Exception, match="host-to-device"):
        with resident():
            x + 1                       # a Python scalar sent to the device implicitly
    with resident(allow_fetch=True) as fetched:
        y = jax.jit(jnp.cumsum)(x + jax.device_put(np.float32(1)))
        np.shape(y)
        jax.device_get(y)
        with pytest.raises(HostRead):
            np.asarray(y)
    assert len(fetched) == 1
    np.testing.assert_array_equal(np.asarray(y), [1, 4, 9, 16])     # restored outside


# ----------------------------------------------------------------------------- contexts


def _context(label_fn=None, L=10, U=24, C=3, **options):
    model = models.get_model("mlp", C, widths=(32,))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
    rng = np.random.RandomState(0)
    x = rng.randn(L + U, 4, 4, 1).astype(np.float32)
    return AcquisitionContext(
        model=model, params=variables.params, state=variables.state,
        x_labeled=jnp.asarray(x[:L]), y_labeled=jnp.asarray(rng.randint(0, C, L), jnp.int32),
        x_candidates=jnp.asarray(x[L:]), num_classes=C, query_size=4,
        key=jax.random.PRNGKey(1), label_fn=label_fn, labeled_capacity=L + 8,
        options={"chunk_size": 8, **options})


def _oracle(j: int) -> int:
    return (7 * j + 1) % 3


def _parsed(ctx):
    return dataclasses.replace(ctx, options=get_strategy("mlmoc").parse_options(ctx.options))


BATCH_MODES = {"topk": {}, "greedy": {"batch_mode": "greedy"}, "streaming": {"streaming": True},
               "topk_eval_set": "eval", "emoc_full": {"kernel": "full"}}


def _options(mode):
    if mode == "topk_eval_set":
        return {"eval_x": _context().x_candidates[:9]}
    return BATCH_MODES[mode]


# ----------------------------------------------------------------------------- batch


@pytest.mark.parametrize("mode", list(BATCH_MODES))
def test_batch_acquisition_stays_on_device(mode, engine_may_upload):
    kind = "emoc" if mode == "emoc_full" else "mlmoc"
    ctx = _parsed(_context(**_options(mode)))
    ref = get_strategy(kind)(ctx)                    # the strategy API, unguarded
    with resident():
        acquisition = ntk_lookahead.acquire(ctx, kind)
    sel = acquisition.fetch()                          # the one transfer, outside
    np.testing.assert_array_equal(sel.indices, ref.indices)
    np.testing.assert_array_equal(sel.scores, ref.scores)
    assert sel.info.keys() == ref.info.keys()
    assert {k: v for k, v in sel.info.items() if not k.endswith("_s")} == \
        {k: v for k, v in ref.info.items() if not k.endswith("_s")}


@pytest.mark.parametrize("mode", ["topk", "greedy", "streaming"])
def test_the_strategy_api_fetches_only_its_answer(mode, engine_may_upload):
    """Through the registry, the only reads are two explicit fetches: the context's
    validity flags (before any work) and the answer (indices, checks, logged scalars)."""
    ctx = _context(**BATCH_MODES[mode])
    get_strategy("mlmoc")(ctx)                                           # compiled
    with resident(allow_fetch=True) as fetched:
        sel = get_strategy("mlmoc")(ctx)
    assert len(fetched) == 2, [jax.tree.structure(t) for t in fetched]
    assert sel.indices.shape == (4,) and len(set(sel.indices.tolist())) == 4


def test_the_block_free_path_stays_on_device(engine_may_upload):
    """The paper's "NTK w/o Block" (every augmented system solved) as well."""
    ctx = _parsed(_context(block=False))
    ref = get_strategy("mlmoc")(ctx)
    with resident():
        acquisition = ntk_lookahead.acquire(ctx, "mlmoc")
    sel = acquisition.fetch()
    np.testing.assert_array_equal(sel.indices, ref.indices)
    assert sel.info["top_score"] == ref.info["top_score"]


# ----------------------------------------------------------------------------- sequential


def test_sequential_steps_stay_on_device(engine_may_upload):
    """best → absorb the true label → best ...: each step on the device; between steps
    only the index goes out (fetched outside the guard) and the label comes in."""
    steps = 5
    ref_asked = []
    ref = ntk_lookahead.LookaheadSession(_context(), "mlmoc", max_steps=steps).run(
        steps, lambda j: ref_asked.append(j) or _oracle(j))
    ctx = _context()
    with resident():
        session = ntk_lookahead.LookaheadSession(ctx, "mlmoc", max_steps=steps)
    picked = []
    for t in range(steps):
        with resident():
            pick = session.pick()
        j = int(jax.device_get(pick.index))            # the index goes out
        picked.append(j)
        with resident():
            # the label comes in: a host integer, sent explicitly; alternate the index
            # between the device pick and the host integer
            session.absorb(pick.index if t % 2 else j, _oracle(j))
    assert picked == ref.indices.tolist() == ref_asked
    with resident():
        final = session.scores()[0]
    assert np.isneginf(np.asarray(final)[picked]).all()


def test_sequential_mode_reads_one_index_per_step(engine_may_upload):
    """The strategy's sequential mode: the context's flags, one index per step, and the
    logged scalars; labels go in explicitly."""
    asked = []
    ctx = _context(label_fn=lambda j: asked.append(j) or _oracle(j))
    get_strategy("mlmoc")(ctx)
    asked.clear()
    with resident(allow_fetch=True) as fetched:
        sel = get_strategy("mlmoc")(ctx)
    assert sel.indices.tolist() == asked and len(asked) == 4
    assert len(fetched) == 1 + len(asked) + 2


def test_greedy_steps_need_no_host(engine_may_upload):
    """Greedy steps feed each pick and its pseudo-label to the next step on the device;
    the record matches the host-stepped :meth:`LookaheadSession.run` pick by pick."""
    ref_session = ntk_lookahead.LookaheadSession(_context(), "mlmoc", max_steps=6)
    ref = []
    for _ in range(6):
        j = ref_session.best()
        ref.append((j, ref_session.pseudo_label(j)))
        ref_session.absorb(j, ref_session.pseudo_label(j))
    ctx = _context()
    with resident():
        session = ntk_lookahead.LookaheadSession(ctx, "mlmoc", max_steps=6)
        record = session.run_on_device(3)
        record2 = session.run_on_device(3)
    steps = [record.fetch(), record2.fetch()]
    got = [(int(j), int(y)) for s in steps for j, y in zip(s.indices, s.labels)]
    assert got == ref
