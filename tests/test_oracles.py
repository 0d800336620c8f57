"""The oracles (lookahead_jax/oracles.py): the files oracle's label files, the simulated
oracle on a pool with unknown labels, and answers checked before anything is written.

Moved here unchanged from tests/test_own_data.py and tests/test_workdir.py.
"""

import numpy as np
import pytest
from conftest import loop_config
from conftest import margin_config as _config, quiet_run as _run, run_summary as _summary

from lookahead_jax import data, loop, oracles, records, train

CLASSES = ("circle", "cross", "line")     # as in tests/test_own_data.py




@pytest.mark.parametrize("problem, content, message", [
    ("empty", "", "the file is empty"),
    ("columns", "idx,label\n", "the header must be 'index,label'"),
    ("extra", "index,label\n{a},0\n{b},1\n999,1\n", "index 999 was not asked for"),
    ("duplicate", "index,label\n{a},0\n{a},1\n{b},1\n", "labeled twice"),
    ("missing", "index,label\n{a},0\n", "1 requested item(s) have no label"),
    ("range", "index,label\n{a},0\n{b},7\n", "label 7 is outside [0, 3)"),
    ("not_int", "index,label\nx,0\n{b},1\n", "index 'x' is not an integer"),
    ("row", "index,label\n{a},0,5\n{b},1\n", "expected 2 columns"),
])
def test_bad_label_files_are_one_clear_line(problem, content, message, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(content.format(a=3, b=8))
    with pytest.raises(ValueError) as e:
        oracles.read_label_file(str(path), [3, 8], 3, CLASSES)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)
    ok = tmp_path / "ok.csv"
    ok.write_text("index,label\n8,line\n3,0\n")
    np.testing.assert_array_equal(oracles.read_label_file(str(ok), [3, 8], 3, CLASSES), [0, 2])


def test_simulated_oracle_refuses_unknown_labels_before_training(tmp_path, monkeypatch):
    pool = data.from_arrays(np.random.default_rng(0).normal(size=(60, 4)),
                            np.r_[np.arange(30) % 2, -np.ones(30, int)])
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained"))
    cfg = loop.LoopConfig(dataset="digits", strategy="random", cycles=2, query_size=5,
                          subset_size=20, train=train.TrainConfig(epochs=1, batch_size=8))
    with pytest.raises(ValueError, match="30 of the pool's 60 items have unknown labels"):
        loop.run(cfg, None, dataset=pool, log=lambda s: None)


@pytest.mark.parametrize("answer, message", [
    (42, r"the oracle answered 42, outside \[0, 4\)"),
    (-1, r"the oracle answered -1, outside \[0, 4\)"),
    (1.5, "labels must be integers"),
    (None, "the oracle returned None"),
])
def test_bad_oracle_answers_are_refused_before_anything_is_written(
        tmp_path, tiny_dataset, answer, message):
    w = tmp_path / "w"
    calls = []

    def oracle(idx):
        calls.append(len(idx))
        if len(calls) == 2:                 # cycle 0's query: a bad batch
            return None if answer is None else np.full(len(idx), answer)
        return tiny_dataset.y_train[idx]

    with pytest.raises(ValueError, match=message):
        _run(w, tiny_dataset, oracle=oracle)
    assert len(records.read_jsonl(str(w / "labels.jsonl"))) == 20     # the initial set only
    good = _run(w, tiny_dataset)                                      # still usable
    assert _summary(good) == _summary(_run(tmp_path / "ref", tiny_dataset))
