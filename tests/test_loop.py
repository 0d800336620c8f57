import json
import os

import numpy as np
import pytest
from conftest import loop_config

from lookahead_jax import loop, records, train
from lookahead_jax.config import validate_config
from lookahead_jax.resume import labeled_indices_from_records
from lookahead_jax.state import initial_indices
from lookahead_jax.workdir import Workdir


tiny_config = loop_config        # entropy, 4 epochs; tests override fields


def test_run_records_and_rebuilds_labeled_set(tmp_path, tiny_dataset):
    cfg = tiny_config()
    res = loop.run(cfg, str(tmp_path), dataset=tiny_dataset, log=lambda s: None)
    assert [m["cycle"] for m in res.metrics] == [0, 1, 2, 3]
    assert [m["num_labeled"] for m in res.metrics] == [20, 28, 36, 44]
    for f in ("config.json", "dataset.json", "metrics.jsonl", "queries.jsonl", "labels.jsonl",
              "checkpoints/3", "state.json", "learning_curve.png", "tensorboard"):
        assert (tmp_path / f).exists(), f
    rebuilt = labeled_indices_from_records(str(tmp_path), cfg, tiny_dataset)
    np.testing.assert_array_equal(rebuilt, np.flatnonzero(res.state.labeled))
    labels = records.read_jsonl(str(tmp_path / "labels.jsonl"))
    assert len(labels) == 44
    assert all(r["label"] == tiny_dataset.y_train[r["index"]] for r in labels)
    queried = np.concatenate([q["indices"] for q in res.queries])
    assert np.unique(queried).size == queried.size == 24


def test_resume_equals_uninterrupted(tmp_path, tiny_dataset):
    cfg = tiny_config(strategy="margin")
    full = loop.run(cfg, str(tmp_path / "full"), dataset=tiny_dataset, log=lambda s: None)
    part = str(tmp_path / "part")
    loop.run(cfg, part, dataset=tiny_dataset, log=lambda s: None, stop_after_cycle=1)
    assert records.read_json(os.path.join(part, "state.json"))["cycle_done"] == 1
    resumed = loop.run(cfg, part, dataset=tiny_dataset, log=lambda s: None)
    assert [q["indices"] for q in resumed.queries] == [q["indices"] for q in full.queries]
    assert [m["test_accuracy"] for m in resumed.metrics] == \
        [m["test_accuracy"] for m in full.metrics]


def test_crash_mid_cycle_loses_no_label_and_asks_no_twice(tmp_path, tiny_dataset):
    """A run killed after the oracle answered but before the cycle committed."""
    cfg = tiny_config(strategy="random")
    asked = []

    class Crashing:
        def __init__(self, fail_at):
            self.fail_at, self.calls = fail_at, 0

        def __call__(self, idx):
            self.calls += 1
            asked.extend(int(i) for i in idx)
            out = tiny_dataset.y_train[idx]
            if self.calls == self.fail_at:
                # the answer is persisted by the loop; crash right after it returns
                def boom(*a, **k):
                    raise KeyboardInterrupt
                Workdir.commit, self.saved = boom, Workdir.commit
            return out

    oracle = Crashing(fail_at=2)  # call 1: initial set; call 2: cycle 0's query
    with pytest.raises(KeyboardInterrupt):
        loop.run(cfg, str(tmp_path), dataset=tiny_dataset, oracle=oracle, log=lambda s: None)
    Workdir.commit = oracle.saved
    n_labels = len(records.read_jsonl(str(tmp_path / "labels.jsonl")))
    assert n_labels == cfg.initial_size + cfg.query_size
    asked.clear()
    res = loop.run(cfg, str(tmp_path), dataset=tiny_dataset,
                   oracle=lambda idx: (asked.extend(int(i) for i in idx),
                                       tiny_dataset.y_train[idx])[1], log=lambda s: None)
    first_query = set(res.queries[0]["indices"])
    assert not first_query & set(asked), "a label revealed before the crash was asked again"
    assert len(res.metrics) == cfg.cycles


def test_cold_start_differs_from_warm_start(tiny_dataset):
    """Warm start trains cycle 1 from cycle 0's trained weights, cold start from a fresh
    initialisation (its own key): both against the same training rebuilt by hand from
    the run's labeled sets and the documented keys (identical losses, measured)."""
    from lookahead_jax import models, rng

    cfg = tiny_config(cycles=2)
    warm = loop.run(cfg, None, dataset=tiny_dataset, log=lambda s: None)
    cold_train = train.TrainConfig(epochs=4, batch_size=16, warm_start=False)
    cold = loop.run(tiny_config(cycles=2, train=cold_train), None, dataset=tiny_dataset,
                    log=lambda s: None)
    assert warm.metrics[0]["train_loss"] == cold.metrics[0]["train_loss"]
    assert warm.metrics[1]["train_loss"] != cold.metrics[1]["train_loss"]
    assert warm.queries[0]["indices"] == cold.queries[0]["indices"]

    ds, model = tiny_dataset, models.get_model("mlp", tiny_dataset.num_classes, widths=(32,))
    initial = initial_indices(cfg, ds)
    sets = [np.sort(initial), np.sort(np.r_[initial, warm.queries[0]["indices"]])]

    def fit(variables, cycle, tcfg):
        idx = sets[cycle]
        state = train.create_train_state(model, variables, tcfg)
        return train.fit(state, ds.x_train[idx], ds.y_train[idx], tcfg,
                         key=rng.key(cfg.seed, "train", cycle))

    init = lambda cycle: model.init(rng.key(cfg.seed, "init", cycle), ds.x_train[:1])  # noqa
    trained0, loss0 = fit(init(None), 0, cfg.train)
    _, warm1 = fit(trained0.variables, 1, cfg.train)      # from cycle 0's weights
    _, cold1 = fit(init(1), 1, cold_train)                # from a fresh initialisation
    assert [m["train_loss"] for m in warm.metrics] == [loss0, warm1]
    assert [m["train_loss"] for m in cold.metrics] == [loss0, cold1]


@pytest.mark.parametrize("change, message", [
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(strategy="oracle_knows"), "unknown strategy"),
    (dict(model="vgg"), "unknown model"),
    (dict(query_size=0), "query_size must be positive"),
    (dict(query_size=100, subset_size=50), "larger than subset_size"),
    (dict(cycles=50), r"initial_size \+ \(cycles - 1\) \* query_size = 20 \+ \(50 - 1\) \* 8 = "
                      r"412 exceeds the pool of 300 examples"),
    (dict(sequential=True, strategy="entropy"), "no sequential mode"),
])
def test_bad_config_fails_before_training(change, message, tiny_dataset, monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained on a bad config"))
    with pytest.raises(ValueError, match=message):
        loop.run(tiny_config(**change), None, dataset=tiny_dataset, log=lambda s: None)


def test_nan_data_rejected(tiny_dataset):
    bad = tiny_dataset._replace(x_train=tiny_dataset.x_train.copy())
    bad.x_train[5, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loop.run(tiny_config(), None, dataset=bad, log=lambda s: None)


def test_workdir_with_other_config_is_refused(tmp_path, tiny_dataset):
    loop.run(tiny_config(cycles=2), str(tmp_path), dataset=tiny_dataset, log=lambda s: None)
    with pytest.raises(ValueError, match="different config.*seed"):
        loop.run(tiny_config(cycles=2, seed=9), str(tmp_path), dataset=tiny_dataset,
                 log=lambda s: None)


def test_config_roundtrip():
    cfg = tiny_config(strategy_options=(("kernel", "sum_logits"),))
    again = loop.LoopConfig.from_dict(json.loads(records.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown config field"):
        loop.LoopConfig.from_dict({"datset": "digits"})


def test_every_config_file_builds_a_valid_run():
    from lookahead_jax import configs

    for name in configs.PRESETS:
        cfg = configs.load(name).to_dict()
        for s in str(cfg.pop("strategy")).split(","):
            validate_config(loop.LoopConfig.from_dict({**cfg, "strategy": s}))
        doc = __import__(f"lookahead_jax.configs.{name}", fromlist=["x"]).__doc__
        assert "python -m experiments.main" in doc, name
