"""Stopping criteria: each fires on a case built for it and stays quiet on its opposite,
and a firing is recorded; TensorBoard event files hold every cycle's metrics."""

import glob
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lookahead_jax import loop, records, stopping, train
from lookahead_jax.config import validate_config


def obs(probs=None, unlabeled=None, n=50, info=None, cycle=0):
    return stopping.Observation(cycle=cycle, num_labeled=n,
                                stop_probs=None if probs is None else np.asarray(probs, float),
                                stop_unlabeled=unlabeled, selection_info=info)


def check(name, options, observation, memory=None):
    crit = stopping.get(name)
    return crit.check(crit.options.parse(options, strategy=name), observation, memory or {})


def test_budget():
    assert check("budget", {"max_labels": 50}, obs(n=50))[0] is True
    assert check("budget", {"max_labels": 50}, obs(n=49))[0] is False
    with pytest.raises(ValueError, match="max_labels"):
        stopping.parse("budget", {})


def test_cohen_kappa_equals_the_hand_formula():
    a = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    b = np.array([0, 1, 1, 1, 2, 0, 0, 1])
    p_o = 6 / 8
    pa, pb = np.array([3, 3, 2]) / 8, np.array([3, 4, 1]) / 8
    p_e = float(pa @ pb)
    assert stopping.cohen_kappa(a, b, 3) == pytest.approx((p_o - p_e) / (1 - p_e), rel=1e-12)
    assert stopping.cohen_kappa(a, a, 3) == 1.0


def test_stabilizing_predictions_needs_window_agreements_in_a_row():
    same = np.eye(3)[[0, 1, 2, 0, 1]]
    other = np.eye(3)[[1, 2, 0, 1, 2]]
    opts = {"threshold": 0.99, "window": 2}
    memory = {}
    fired = []
    for p in (same, same, same):          # compared twice with itself: fires at the third
        f, _, memory = check("stabilizing_predictions", opts, obs(p), memory)
        fired.append(f)
    assert fired == [False, False, True]
    memory, fired = {}, []
    for p in (same, other, same, other):  # never agrees
        f, kappa, memory = check("stabilizing_predictions", opts, obs(p), memory)
        fired.append(f)
    assert fired == [False] * 4 and kappa < 0


@pytest.mark.parametrize("name", ["max_uncertainty", "overall_uncertainty"])
def test_uncertainty_criteria(name):
    confident = np.full((4, 3), 0.001)
    confident[np.arange(4), [0, 1, 2, 0]] = 0.998
    uniform = np.full((4, 3), 1 / 3)
    mixed = np.vstack([confident[:3], uniform[:1]])
    unl = np.ones(4, bool)
    assert check(name, {"threshold": 0.1}, obs(confident, unl))[0] is True
    assert check(name, {"threshold": 0.1}, obs(uniform, unl))[0] is False
    fired, value, _ = check(name, {"threshold": 0.3}, obs(mixed, unl))
    if name == "max_uncertainty":       # the uniform row decides: entropy log 3 / log 3 = 1
        assert fired is False and value == pytest.approx(1.0)
    else:                               # the mean: (3 · small + 1) / 4 < 0.3
        assert fired is True and value < 0.3
    # labeled stop-set items do not count
    assert check("max_uncertainty", {"threshold": 0.1},
                 obs(mixed, np.array([True, True, True, False])))[0] is True


def test_lookahead_criterion_reads_the_top_score():
    assert check("lookahead", {"threshold": 0.01}, obs(info={"top_score": 0.005}))[0] is True
    assert check("lookahead", {"threshold": 0.01}, obs(info={"top_score": 0.02}))[0] is False
    with pytest.raises(ValueError, match="needs a look-ahead strategy"):
        check("lookahead", {}, obs(info={}))


def _config(**kw):
    base = dict(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                strategy="entropy", cycles=5, initial_size=20, query_size=8, subset_size=60,
                seed=3, train=train.TrainConfig(epochs=3, batch_size=16))
    base.update(kw)
    return loop.LoopConfig(**base)


@pytest.mark.parametrize("stop, options, strategy, fires_at", [
    ("budget", {"budget": {"max_labels": 36}}, "entropy", 2),
    ("budget", {"budget": {"max_labels": 1000}}, "entropy", None),
    ("stabilizing_predictions", {"stabilizing_predictions": {"threshold": -1.0, "window": 2}},
     "entropy", 2),
    ("max_uncertainty", {"max_uncertainty": {"threshold": 1.0}}, "entropy", 0),
    ("lookahead", {"lookahead": {"threshold": 1e9}}, "mlmoc", 0),
    ("lookahead", {"lookahead": {"threshold": 1e-30}}, "mlmoc", None),
])
def test_criteria_in_the_loop_are_recorded(stop, options, strategy, fires_at, tmp_path,
                                           tiny_dataset):
    cfg = _config(stop=stop, stop_options=options, strategy=strategy, stop_set_size=50)
    res = loop.run(cfg, str(tmp_path), dataset=tiny_dataset, log=lambda s: None)
    name = stop
    # a selection-phase criterion is checked where candidates are scored: not in the last
    # cycle, which only trains
    checked = res.metrics if stopping.get(name).phase == "model" or res.stopped else \
        res.metrics[:-1]
    assert all(f"stop_{name}" in m for m in checked)
    if fires_at is None:
        assert res.stopped is None and len(res.metrics) == cfg.cycles
        return
    assert res.stopped["by"] == name and res.stopped["cycle"] == fires_at
    assert len(res.metrics) == fires_at + 1 and res.metrics[-1]["stopped_by"] == name
    assert len(res.queries) == fires_at           # no label was asked after it fired
    assert records.read_json(str(tmp_path / "state.json"))["stopped"]["by"] == name
    again = loop.run(cfg, str(tmp_path), dataset=tiny_dataset, log=lambda s: None)
    assert len(again.metrics) == fires_at + 1 and again.stopped["by"] == name


def test_unknown_criterion_and_lookahead_without_a_lookahead_strategy():
    with pytest.raises(ValueError, match="unknown stopping criterion 'patience'; known: budget"):
        validate_config(_config(stop="patience"))
    with pytest.raises(ValueError, match="'lookahead' needs a look-ahead strategy"):
        validate_config(_config(stop="lookahead", strategy="random"))
    with pytest.raises(ValueError, match=r"stopping criterion 'budget' has no option 'max'"):
        validate_config(_config(stop="budget", stop_options={"budget": {"max": 3}}))


def read_events(folder) -> list:
    """Scalars of every TensorBoard event file (TFRecord framing, Event protos)."""
    out = []
    for path in sorted(glob.glob(f"{folder}/events.out.tfevents.*")):
        raw = open(path, "rb").read()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            ev = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in ev.summary.value:
                out.append((v.tag, ev.step, v.simple_value))
    return out


def test_tensorboard_events_hold_every_cycle(tmp_path, tiny_dataset):
    res = loop.run(_config(cycles=3), str(tmp_path), dataset=tiny_dataset, log=lambda s: None)
    events = read_events(tmp_path / "tensorboard")
    acc = [(step, v) for tag, step, v in events if tag == "test_accuracy"]
    want = [(m["num_labeled"], m["test_accuracy"]) for m in res.metrics]
    assert [s for s, _ in acc] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in acc], [v for _, v in want], rtol=1e-6)
    assert {t for t, _, _ in events} >= {"train_loss", "seconds_train", "num_labeled"}
