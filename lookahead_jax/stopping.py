"""Stopping criteria: when labeling more is no longer worth it.

Registered by name like the strategies (:func:`get`, :func:`names`), chosen with
``LoopConfig.stop`` (``--stop=budget,stabilizing_predictions``), each with typed options
(``LoopConfig.stop_options``: ``{criterion: {option: value}}``). The loop evaluates them
every cycle and records each value in the metrics (``stop_<name>``); when one fires, the
row says ``stopped_by`` and the run ends without asking for more labels.

Criteria (phase ``"model"``: checked after training, before candidates are scored;
``"selection"``: after scoring, before any label is asked for):

* ``budget`` (model): the labeled set reached ``max_labels``.
* ``stabilizing_predictions`` (model; Bloodgood & Vijay-Shanker, CoNLL 2009): Cohen's
  κ between the predictions of successive models on a fixed *stop set* is at least
  ``threshold`` for ``window`` cycles in a row.
* ``max_uncertainty`` (model; Zhu, Wang & Hovy, 2008): the largest normalised entropy
  H(p)/log C over the still-unlabeled stop-set items is below ``threshold``.
* ``overall_uncertainty`` (model; Zhu et al., 2008): their mean normalised entropy is
  below ``threshold``.
* ``lookahead`` (selection; ours, for the NTK look-ahead strategies): the largest
  predicted output change, the top MLMOC score divided by the number of evaluation
  points (``Selection.info["top_score"]``: the mean ‖f_{L+}(x) − f_L(x)‖ over x for the
  best candidate), is below ``threshold``: no candidate is predicted to move the model.

The stop set is a seeded random subset of the pool (``stop_set_size`` items, from
:func:`lookahead_jax.rng.key` purpose ``"stop"``), fixed for the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

from lookahead_jax.lookahead import KINDS
from lookahead_jax.numerics import entropy
from lookahead_jax.options import Options, OptionsError, positive
from lookahead_jax.registry import Registry


class Observation(NamedTuple):
    """What the criteria see at one check.

    Attributes:
      cycle: the cycle being run.
      num_labeled: labels the model was trained on.
      stop_probs: ``(S, C)`` softmax of the current model on the stop set (host numpy).
      stop_unlabeled: ``(S,)`` bool, stop-set items still unlabeled.
      selection_info: the strategy's ``Selection.info`` (phase ``"selection"`` only).
    """

    cycle: int
    num_labeled: int
    stop_probs: Optional[np.ndarray] = None
    stop_unlabeled: Optional[np.ndarray] = None
    selection_info: Optional[Mapping[str, float]] = None


Check = Callable[[Options, Observation, dict], tuple[bool, float, dict]]


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A registered stopping criterion.

    Attributes:
      name: the key of ``--stop``.
      check: ``check(options, observation, memory) -> (fired, value, memory)``;
        ``memory`` is a JSON-serialisable dict carried across cycles (and resumes).
      phase: ``"model"`` or ``"selection"`` (see the module docstring).
      options: the options type.
      needs_stop_set: whether it reads the stop set.
    """

    name: str
    check: Check
    phase: str
    options: type
    needs_stop_set: bool = False


_REGISTRY: Registry[Criterion] = Registry("stopping criterion")


def register(criterion: Criterion) -> Criterion:
    """Adds ``criterion``; a name already registered is refused."""
    if criterion.phase not in ("model", "selection"):
        raise ValueError(f"unknown phase {criterion.phase!r}")
    return _REGISTRY.add(criterion.name, criterion)


def get(name: str) -> Criterion:
    """The criterion registered under ``name``; an unknown name lists the known ones."""
    return _REGISTRY.get(name)


def names() -> tuple[str, ...]:
    """Sorted names of every registered criterion."""
    return _REGISTRY.names()


def parse(stop: str, stop_options: Mapping[str, Mapping[str, Any]]
          ) -> tuple[tuple[Criterion, Options], ...]:
    """The chosen criteria with validated options; unknown names or options are refused."""
    chosen = [s.strip() for s in stop.split(",") if s.strip()] if stop else []
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a stopping criterion is given twice in {stop!r}")
    extra = set(stop_options) - set(chosen)
    if extra:
        raise ValueError(f"stop_options for {sorted(extra)}, which --stop does not name "
                         f"(stop={stop!r})")
    out = []
    for name in chosen:
        crit = get(name)
        try:
            opts = crit.options.parse(dict(stop_options.get(name, {})), strategy=name)
        except OptionsError as e:
            raise ValueError(str(e).replace("strategy", "stopping criterion", 1)) from None
        out.append((crit, opts))
    return tuple(out)


# ============================================================================ criteria


@dataclasses.dataclass(frozen=True)
class BudgetOptions(Options):
    """Options of ``budget``.

    Attributes:
      max_labels: stop once the labeled set has this many items (required).
    """

    max_labels: int = 0

    def check(self):
        if self.max_labels <= 0:
            raise OptionsError("option 'max_labels' must be a positive integer (set "
                               "--config.stop_options.budget.max_labels=N)")


def _budget(opts: BudgetOptions, obs: Observation, memory: dict):
    return obs.num_labeled >= opts.max_labels, float(obs.num_labeled), memory


@dataclasses.dataclass(frozen=True)
class StabilizingOptions(Options):
    """Options of ``stabilizing_predictions``.

    Attributes:
      threshold: Cohen's κ of successive models' stop-set predictions that counts as
        stable (Bloodgood & Vijay-Shanker: 0.99).
      window: how many successive comparisons in a row must reach it (theirs: 3).
    """

    threshold: float = 0.99
    window: int = 3

    def check(self):
        positive(self, "window")
        if not -1.0 <= self.threshold <= 1.0:
            raise OptionsError(f"option 'threshold' must be in [-1, 1], got {self.threshold}")


def cohen_kappa(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Cohen's κ between two label vectors: (p_o − p_e) / (1 − p_e); 1 if p_e = 1."""
    a, b = np.asarray(a), np.asarray(b)
    p_o = float(np.mean(a == b))
    pa = np.bincount(a, minlength=num_classes) / a.size
    pb = np.bincount(b, minlength=num_classes) / b.size
    p_e = float(np.sum(pa * pb))
    return 1.0 if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def _stabilizing(opts: StabilizingOptions, obs: Observation, memory: dict):
    pred = np.argmax(obs.stop_probs, -1)
    prev = memory.get("previous")
    streak = int(memory.get("streak", 0))
    kappa = None        # no previous model to agree with yet: nothing to record
    if prev is not None:
        kappa = cohen_kappa(np.asarray(prev), pred, obs.stop_probs.shape[1])
        streak = streak + 1 if kappa >= opts.threshold else 0
    memory = {"previous": pred.tolist(), "streak": streak}
    return streak >= opts.window, kappa, memory


@dataclasses.dataclass(frozen=True)
class UncertaintyOptions(Options):
    """Options of ``max_uncertainty`` and ``overall_uncertainty``.

    Attributes:
      threshold: normalised entropy H(p) / log C (in [0, 1]) below which to stop.
    """

    threshold: float = 0.1

    def check(self):
        if not 0.0 < self.threshold <= 1.0:
            raise OptionsError(f"option 'threshold' must be in (0, 1], got {self.threshold}")


def _normalised_entropy(obs: Observation) -> np.ndarray:
    probs = obs.stop_probs[obs.stop_unlabeled]
    if probs.shape[0] == 0:
        return np.zeros((1,))
    return np.asarray(entropy(probs)) / np.log(probs.shape[1])


def _max_uncertainty(opts: UncertaintyOptions, obs: Observation, memory: dict):
    value = float(np.max(_normalised_entropy(obs)))
    return value < opts.threshold, value, memory


def _overall_uncertainty(opts: UncertaintyOptions, obs: Observation, memory: dict):
    value = float(np.mean(_normalised_entropy(obs)))
    return value < opts.threshold, value, memory


@dataclasses.dataclass(frozen=True)
class LookaheadStopOptions(Options):
    """Options of ``lookahead``.

    Attributes:
      threshold: the mean predicted output change (per evaluation point, in output units:
        one-hot targets are 1 apart) of the best candidate below which to stop.
    """

    threshold: float = 1e-3

    def check(self):
        positive(self, "threshold")


def _lookahead(opts: LookaheadStopOptions, obs: Observation, memory: dict):
    info = obs.selection_info or {}
    if "top_score" not in info:
        raise ValueError(f"stopping criterion 'lookahead' needs a look-ahead strategy "
                         f"({', '.join(KINDS)}): the strategy gave no top_score")
    value = float(info["top_score"])
    return value < opts.threshold, value, memory


register(Criterion("budget", _budget, "model", BudgetOptions))
register(Criterion("stabilizing_predictions", _stabilizing, "model", StabilizingOptions,
                   needs_stop_set=True))
register(Criterion("max_uncertainty", _max_uncertainty, "model", UncertaintyOptions,
                   needs_stop_set=True))
register(Criterion("overall_uncertainty", _overall_uncertainty, "model", UncertaintyOptions,
                   needs_stop_set=True))
register(Criterion("lookahead", _lookahead, "selection", LookaheadStopOptions))

# The strategies whose selection gives ``top_score``: one per look-ahead score kind.
LOOKAHEAD_STRATEGIES = KINDS
