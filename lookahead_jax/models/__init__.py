"""Models: the :class:`Model` interface, adapters for any JAX model, the built-in networks.

  * :mod:`~lookahead_jax.models.base`: :class:`Model` (the pure pieces every part of the
    library uses), :class:`Variables`, :func:`require`, :func:`apply_in_chunks`.
  * :mod:`~lookahead_jax.models.adapters`: :func:`from_linen`, :func:`from_nnx`,
    :func:`from_function`, :func:`from_equinox`.
  * :mod:`~lookahead_jax.models.networks`: the built-in MLP, CNN, WideResNet and ResNet18
    (:func:`get_model` by name, :data:`MODELS`).
"""

from lookahead_jax.models.adapters import (collect_sown, from_equinox, from_function,
                                           from_linen, from_nnx)
from lookahead_jax.models.base import (PIECES, Bound, Model, Variables, apply_in_chunks,
                                       as_pytree_fn, check_outputs, require)
from lookahead_jax.models.networks import (CNN, MLP, MODELS, ResNet18, WideResNet,
                                           create_model, get_model)

__all__ = ["CNN", "MLP", "MODELS", "PIECES", "Bound", "Model", "ResNet18", "Variables",
           "WideResNet", "apply_in_chunks", "as_pytree_fn", "check_outputs", "collect_sown",
           "create_model", "from_equinox", "from_function", "from_linen", "from_nnx",
           "get_model", "require"]
