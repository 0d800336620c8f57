"""The precision policy reaches every contraction (lookahead_jax/precision.py).

CPUs compute float32 matmuls exactly at every precision, so these tests cannot compare
numbers: they lower the jitted acquisition and kernel functions to StableHLO and check
that every ``dot_general`` and ``convolution`` in the program carries the policy's
precision. Without it a GPU would run TF32 and a TPU one bfloat16 pass (the README's
"Precision" table measures what that would do).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lookahead_jax import lookahead as la
from lookahead_jax import precision
from lookahead_jax.ntk import empirical as emp

# MLMOC (its expanded B = 1 form and the general one) and EER (per-label outputs) cover
# every code path of the scores; EMOC and label-flip reuse EER's.
KINDS = ("mlmoc", "eer")
OPS = re.compile(r"stablehlo\.(dot_general|convolution)\b[^\n]*")


def contractions(text: str) -> list[str]:
    """Every dot_general / convolution line of a lowered module (all its functions)."""
    return [m.group(0) for m in OPS.finditer(text)]


def assert_all_at(text: str, level: str, where: str) -> int:
    """Asserts every contraction of ``text`` is at ``level``; returns how many there are."""
    ops = contractions(text)
    # dot_general prints ``precision = [A, B]``, convolution
    # ``precision_config = [#stablehlo<precision A>, #stablehlo<precision B>]``
    want = (f"precision = [{level}, {level}]",
            f"precision_config = [#stablehlo<precision {level}>, #stablehlo<precision {level}>]")
    bad = [op for op in ops if not any(w in op for w in want)]
    assert not bad, f"{where}: {len(bad)} of {len(ops)} contractions not at {level}: {bad[0]}"
    return len(ops)


def assert_programs_at(programs: dict, level: str, where: str):
    counts = {name: assert_all_at(text, level, f"{where}: {name}")
              for name, text in programs.items()}
    # programs without any contraction (e.g. sequential MLMOC's one pass over Aᵀ) are
    # fine; all of them without one would mean the test lowered nothing.
    assert sum(counts.values()) > 2 * len(counts), counts


# ---------------------------------------------------------------------- the algebra
def _system(kernel, sequential, eval_set, policy=None):
    rng = np.random.default_rng(0)
    L, U, E, C = 5, 7, 4, 3
    b = C if kernel == "full" else 1
    z = rng.normal(size=(L + U + E, 6 * b)).astype(np.float32)
    k = z @ z.T
    if kernel == "full":
        k = np.einsum("ij,ab->ijab", k, np.eye(C, dtype=np.float32))
    ix = np.arange(L)
    iu = np.arange(L, L + U)
    ie = np.arange(L + U, L + U + E)
    blocks = dict(k_ll=k[ix][:, ix], k_ul=k[iu][:, ix], k_uu=k[iu][:, iu])
    if eval_set:
        blocks.update(k_el=k[ie][:, ix], k_eu=k[ie][:, iu],
                      f_e=rng.normal(size=(E, C)).astype(np.float32))
    blocks = {n: jnp.asarray(v) for n, v in blocks.items()}
    return la.build_system(y_l=jnp.asarray(rng.integers(0, C, L), jnp.int32),
                           f_l=jnp.asarray(rng.normal(size=(L, C)), jnp.float32),
                           f_u=jnp.asarray(rng.normal(size=(U, C)), jnp.float32),
                           num_classes=C, capacity=L + 2, chunk_size=4,
                           sequential=sequential, precision=policy, **blocks)


def _algebra_programs(kernel, eval_set, policy=None):
    """Lowered text of every jitted function of the algebra, for one layout."""
    out = {}
    i32 = jnp.asarray(0, jnp.int32)
    state, spec, _ = _system(kernel, False, eval_set, policy)
    out["_build"] = la._build.lower(
        spec, 7, state.kappa.shape[0], True, *_build_args(kernel, eval_set)).as_text()
    for kind in KINDS:
        out[f"_batch_scores[{kind}]"] = la._batch_scores.lower(kind, spec, state).as_text()
    rows = state.k_uu[:spec.chunk * spec.block] if eval_set is False else state.k_ue[
        :spec.chunk * spec.block]
    out["_streaming_chunk"] = la._streaming_chunk.lower("mlmoc", spec, state, i32,
                                                        rows).as_text()
    out["lookahead_outputs"] = jax.jit(la.lookahead_outputs, static_argnums=(0,)).lower(
        spec, state).as_text()
    seq, spec_s, _ = _system(kernel, True, eval_set, policy)
    for kind in KINDS:
        for lin in (False, True):
            out[f"_sequential_scores[{kind},{lin}]"] = la._sequential_scores.lower(
                kind, spec_s, lin, seq).as_text()
    out["_step_vectors"] = la._step_vectors.lower(spec_s, seq, i32, i32).as_text()
    v = la._step_vectors(spec_s, seq, i32, i32)
    out["_apply_step"] = la._apply_step.lower(spec_s, seq, v, i32).as_text()
    return out


def _build_args(kernel, eval_set):
    """Positional arguments of ``la._build`` after the static ones (unpadded inputs)."""
    rng = np.random.default_rng(1)
    L, U, E, C = 5, 7, 4, 3
    b = C if kernel == "full" else 1
    shp = lambda n, m: (n, m, b, b) if b > 1 else (n, m)  # noqa: E731
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    k_el, k_eu, f_e = (f(*shp(E, L)), f(*shp(E, U)), f(E, C)) if eval_set else (None,) * 3
    return (f(*shp(L, L)), f(*shp(U, L)), jnp.zeros(L, jnp.int32), f(L, C), f(U, C),
            jnp.asarray(L, jnp.int32), jnp.asarray(1e-5, jnp.float32), f(*shp(U, U)), None,
            k_el, k_eu, f_e)


@pytest.mark.parametrize("kernel,eval_set", [("first_logit", False), ("full", False),
                                             ("first_logit", True)])
def test_every_algebra_contraction_is_highest_by_default(kernel, eval_set):
    assert_programs_at(_algebra_programs(kernel, eval_set), "HIGHEST",
                       f"lookahead ({kernel}, E≠U: {eval_set})")


def test_augmented_system_path_is_highest():
    k = jnp.eye(4, dtype=jnp.float32)
    args = (k, k, k, k[:, :3], k[:, :3], k[:, :3], jnp.float32(1e-3),
            jnp.arange(2, dtype=jnp.int32))
    text = la._augmented_chunk.lower(*args, precision.algebra()).as_text()
    assert assert_all_at(text, "HIGHEST", "lookahead._augmented_chunk") >= 1


def test_a_chosen_policy_reaches_the_algebra():
    with precision.use("algebra=high"):
        programs = _algebra_programs("first_logit", False)
    assert_programs_at(programs, "HIGH", "lookahead under algebra=high")


# ------------------------------------------------------------------------ the kernel
class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3))(x))
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.tanh(nn.Dense(5)(x.reshape(x.shape[0], -1))))


def _net(module, shape):
    x = jax.random.normal(jax.random.key(0), (3, *shape), jnp.float32)
    params = module.init(jax.random.key(1), x)["params"]
    f = lambda p, xb: module.apply({"params": p}, xb)  # noqa: E731
    return f, params, x


def _kernel_programs(f, params, x, output, prec):
    fs, fl = emp._split_f(f)
    out = {}
    for impl in ("structured", "jacobian"):
        out[f"_features_jit[{impl}]"] = emp._features_jit.lower(
            fs, fl, params, x, output, impl, prec).as_text()
        out[f"_kernel_fused_jit[{impl}]"] = emp._kernel_fused_jit.lower(
            fs, fl, params, x, x[:2], output, impl, prec).as_text()
        feats = emp._features_jit(fs, fl, params, x, output, impl, prec)
        out[f"_contract_jit[{impl}]"] = emp._contract_jit.lower(feats, feats,
                                                                prec[0]).as_text()
    out["_jvp_vjp_jit"] = emp._jvp_vjp_jit.lower(fs, fl, params, x, x[:2], output,
                                                 prec[1]).as_text()
    return out


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("output", ["first_logit", "full"])
def test_every_kernel_contraction_is_highest_by_default(net, output):
    f, params, x = _net(MLP(), (4, 4, 2)) if net == "mlp" else _net(ConvNet(), (6, 6, 2))
    prec = emp._levels(None)
    assert prec == (jax.lax.Precision.HIGHEST,) * 2
    assert_programs_at(_kernel_programs(f, params, x, output, prec), "HIGHEST",
                       f"ntk ({net}, {output})")


def test_a_chosen_policy_reaches_the_kernel_and_the_forward_pass():
    f, params, x = _net(ConvNet(), (6, 6, 2))
    with precision.use("kernel=high,forward=high,algebra=highest"):
        prec = emp._levels(None)
    assert prec == (jax.lax.Precision.HIGH,) * 2
    assert_programs_at(_kernel_programs(f, params, x, "first_logit", prec), "HIGH",
                       "ntk under kernel=high,forward=high")


def test_policy_values_are_validated_and_parsed():
    assert precision.parse("fast_kernel").of("kernel") == jax.lax.Precision.DEFAULT
    assert precision.parse("kernel=high").of("algebra") == jax.lax.Precision.HIGHEST
    assert precision.resolve(jax.lax.Precision.HIGH, "algebra") == jax.lax.Precision.HIGH
    with pytest.raises(ValueError, match="algebra"):
        precision.PrecisionPolicy(algebra="fp8")
    with pytest.raises(ValueError, match="preset"):
        precision.parse("fastest")
    old = precision.set_policy("default")
    try:
        assert precision.algebra() == jax.lax.Precision.DEFAULT
    finally:
        precision.set_policy(old)
    assert precision.algebra() == jax.lax.Precision.HIGHEST


def test_strategy_option_is_typed():
    from lookahead_jax.strategies.ntk_lookahead import LookaheadOptions
    from lookahead_jax.strategies.options import OptionsError
    assert LookaheadOptions(precision="fast_kernel").precision == "fast_kernel"
    with pytest.raises(OptionsError, match="precision"):
        LookaheadOptions(precision="bf16")
