"""The built-in networks (Flax linen): MLP, a small CNN, WideResNet and ResNet18 (CIFAR stem).

:func:`get_model` returns one as a :class:`~lookahead_jax.models.base.Model` with every
optional piece wired (embeddings, readout, MC dropout, block features), through the same
:func:`~lookahead_jax.models.adapters.from_linen` a user's own linen module goes through.
:func:`create_model` returns the bare linen module.

Every module is called as ``module.apply(variables, x, train=False)`` on float32 inputs
``(n, ...)`` (images NHWC; the MLP flattens anything) and returns logits
``(n, num_classes)``.

BatchNorm has a ``train`` switch: with ``train=True`` it normalises with batch
statistics and updates the ``batch_stats`` collection; with ``train=False`` (evaluation
and every NTK computation) it uses the running averages. Running statistics are *not*
parameters: only the ``params`` collection is ever differentiated (the paper's authors'
code differentiated the running statistics by mistake).

Optional extras used by some strategies:
  * ``return_embedding=True`` returns ``(logits, embedding)`` with the penultimate
    features ``(n, D)`` (core-set, BADGE).
  * ``dropout_rate > 0`` adds dropout before the readout; it is active when
    ``train=True`` or ``mc_dropout=True`` (BALD) and needs a ``dropout`` PRNG stream.
  * Intermediate block outputs are sown into the ``intermediates`` collection
    (LL4AL's loss-prediction module reads them with ``mutable=["intermediates"]``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lookahead_jax.models.adapters import from_linen
from lookahead_jax.models.base import Model

PyTree = Any
ModuleDef = Any

_BN_EPS = 1e-5


class _Head(nn.Module):
    """Dropout (optional) + Dense readout shared by every model."""

    num_classes: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, h, *, train: bool, mc_dropout: bool):
        if self.dropout_rate > 0.0:
            h = nn.Dropout(self.dropout_rate, deterministic=not (train or mc_dropout))(h)
        return nn.Dense(self.num_classes, name="readout")(h)


def _finish(head: _Head, h, train, mc_dropout, return_embedding):
    logits = head(h, train=train, mc_dropout=mc_dropout)
    return (logits, h) if return_embedding else logits


class MLP(nn.Module):
    """Fully-connected ReLU network on flattened inputs.

    Attributes:
      num_classes: C, the readout width.
      widths: hidden widths, e.g. ``(1024, 1024)`` for the 784-1024-1024-10 MLP.
      dropout_rate: dropout before the readout (0 disables it).
    """

    num_classes: int
    widths: Sequence[int] = (512, 512)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False, *, mc_dropout: bool = False,
                 return_embedding: bool = False):
        h = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            h = nn.relu(nn.Dense(width, name=f"dense{i}")(h))
            self.sow("intermediates", f"block{i}", h)
        return _finish(_Head(self.num_classes, self.dropout_rate), h, train, mc_dropout,
                       return_embedding)


class CNN(nn.Module):
    """Small CNN: 3×3 conv + ReLU per entry of ``channels``, global average pool, Dense.

    ``channels=(64, 128)`` is the benchmark network of ``shared/golden`` (75,786
    parameters on 28×28×1 inputs).
    """

    num_classes: int
    channels: Sequence[int] = (32, 64)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False, *, mc_dropout: bool = False,
                 return_embedding: bool = False):
        h = x
        for i, c in enumerate(self.channels):
            h = nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"conv{i}")(h))
            self.sow("intermediates", f"block{i}", jnp.mean(h, axis=(1, 2)))
        h = jnp.mean(h, axis=(1, 2))
        return _finish(_Head(self.num_classes, self.dropout_rate), h, train, mc_dropout,
                       return_embedding)


class _WideBlock(nn.Module):
    """Pre-activation wide residual block: BN-ReLU-conv3×3-BN-ReLU-conv3×3 + shortcut."""

    channels: int
    strides: int
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        pre = nn.relu(self.norm(name="bn1")(x))
        h = nn.Conv(self.channels, (3, 3), (self.strides, self.strides), padding="SAME",
                    use_bias=False, name="conv1")(pre)
        h = nn.relu(self.norm(name="bn2")(h))
        h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, name="conv2")(h)
        if x.shape[-1] != self.channels or self.strides != 1:
            x = nn.Conv(self.channels, (1, 1), (self.strides, self.strides), use_bias=False,
                        name="shortcut")(pre)
        return x + h


class WideResNet(nn.Module):
    """WideResNet (Zagoruyko & Komodakis, 2016) with a configurable number of groups.

    Group g has width ``16 · 2^g · widen_factor`` and ``blocks_per_group`` blocks
    (stride 1 for the first group, 2 after). With three groups this is WRN-d-k for
    ``d = 6 · blocks_per_group + 4``. The paper uses one or two groups with maximum width
    640: ``num_groups=1, widen_factor=40`` or ``num_groups=2, widen_factor=20``.
    """

    num_classes: int
    num_groups: int = 3
    blocks_per_group: int = 1
    widen_factor: int = 2
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False, *, mc_dropout: bool = False,
                 return_embedding: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=_BN_EPS)
        h = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, name="stem")(x)
        for g in range(self.num_groups):
            width = 16 * (2 ** g) * self.widen_factor
            for b in range(self.blocks_per_group):
                strides = 2 if (g > 0 and b == 0) else 1
                h = _WideBlock(width, strides, norm, name=f"group{g}_block{b}")(h)
            self.sow("intermediates", f"block{g}", jnp.mean(h, axis=(1, 2)))
        h = nn.relu(norm(name="bn_final")(h))
        h = jnp.mean(h, axis=(1, 2))
        return _finish(_Head(self.num_classes, self.dropout_rate), h, train, mc_dropout,
                       return_embedding)


class _BasicBlock(nn.Module):
    """ResNet basic block: conv3×3-BN-ReLU-conv3×3-BN + (projected) shortcut, ReLU."""

    channels: int
    strides: int
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (3, 3), (self.strides, self.strides), padding="SAME",
                    use_bias=False, name="conv1")(x)
        h = nn.relu(self.norm(name="bn1")(h))
        h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, name="conv2")(h)
        h = self.norm(name="bn2")(h)
        if x.shape[-1] != self.channels or self.strides != 1:
            x = nn.Conv(self.channels, (1, 1), (self.strides, self.strides), use_bias=False,
                        name="proj")(x)
            x = self.norm(name="bn_proj")(x)
        return nn.relu(x + h)


class ResNet18(nn.Module):
    """ResNet18 with the CIFAR stem (3×3 conv, stride 1, no max-pool).

    ``base_width`` scales every stage (64 in He et al.); smaller values make test-sized
    networks with the same structure.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    base_width: int = 64
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = False, *, mc_dropout: bool = False,
                 return_embedding: bool = False):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=_BN_EPS)
        h = nn.Conv(self.base_width, (3, 3), padding="SAME", use_bias=False, name="stem")(x)
        h = nn.relu(norm(name="bn_stem")(h))
        for s, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                strides = 2 if (s > 0 and b == 0) else 1
                h = _BasicBlock(self.base_width * 2 ** s, strides, norm,
                                name=f"stage{s}_block{b}")(h)
            self.sow("intermediates", f"block{s}", jnp.mean(h, axis=(1, 2)))
        h = jnp.mean(h, axis=(1, 2))
        return _finish(_Head(self.num_classes, self.dropout_rate), h, train, mc_dropout,
                       return_embedding)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "wide_resnet": WideResNet,
    "resnet18": ResNet18,
}


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a registered model by name; unknown names list the known ones.

    Args:
      name: one of ``MODELS`` (``mlp``, ``cnn``, ``wide_resnet``, ``resnet18``).
      num_classes: readout width C.
      **kwargs: the model's attributes (e.g. ``widths=(256, 256)`` for the MLP).
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") \
            from None
    fields = set(cls.__dataclass_fields__) - {"parent", "name", "num_classes"}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {sorted(unknown)}; "
                         f"its options are {sorted(fields)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(num_classes=num_classes, **kwargs)


def _embed(module, variables, x):
    return module.apply(variables, x, train=False, return_embedding=True)[1]


def _readout(params):
    node = params["_Head_0"]["readout"]
    return node["kernel"], node["bias"]


def get_model(name: str, num_classes: int, **kwargs) -> Model:
    """A built-in network as a :class:`Model`, every optional piece wired.

    Equal arguments give the same :class:`Model` object (models are jit static arguments
    compared by identity, so a second run in the same process reuses compiled code).

    Args:
      name: one of :data:`MODELS`; num_classes: C; **kwargs: the network's options
      (:func:`create_model`).

    ``embed`` gives the readout's input, ``readout`` the readout Dense layer,
    ``mc_apply`` MC dropout before the readout (when ``dropout_rate > 0``), and
    ``block_features`` the per-block features sown into ``intermediates`` (LL4AL).
    ``meta`` holds ``dropout_rate`` and, for the MLP, ``mlp_widths`` (hidden widths and
    C: the infinite-width kernels' architecture).
    """
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return _get_model(name, int(num_classes), tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=64)
def _get_model(name: str, num_classes: int, kwargs: tuple) -> Model:
    module = create_model(name, num_classes, **dict(kwargs))
    rate = float(module.dropout_rate)
    meta = {"dropout_rate": rate}
    if isinstance(module, MLP):
        meta["mlp_widths"] = tuple(int(w) for w in module.widths) + (int(num_classes),)
    return from_linen(module, name=name, embed=_embed, readout=_readout,
                      mc_kwargs={"mc_dropout": True} if rate > 0 else None,
                      features_collection="intermediates", meta=meta)
