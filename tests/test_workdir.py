"""The workdir holds the only copy of what people answered: it is locked, checked whenever
it is opened, repaired where a crash tore a line, and never half-written."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import cli_start, loop_config, wait_until
from conftest import margin_config as _config, quiet_run as _run, run_summary as _summary

from lookahead_jax import loop, records
from lookahead_jax.records import RecordError
from lookahead_jax.workdir import Workdir, WorkdirError




@pytest.fixture(scope="module")
def _finished_once(tmp_path_factory, tiny_dataset):
    w = tmp_path_factory.mktemp("finished") / "w"
    return w, _run(w, tiny_dataset)


@pytest.fixture
def finished(_finished_once, tmp_path):
    """A finished 4-cycle run, each test's own copy (the run is made once per module)."""
    src, res = _finished_once
    shutil.copytree(src, tmp_path / "w")
    return tmp_path / "w", res


def _edit_row(path, n, fn):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[n] = fn(rows[n])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_edited_label_is_refused_naming_the_file_and_row(finished, tiny_dataset):
    w, _ = finished
    _edit_row(w / "labels.jsonl", 5, lambda r: {**r, "label": (r["label"] + 1) % 4})
    with pytest.raises(RecordError, match=r"labels.jsonl row 6 was changed after it was "
                                          r"written"):
        _run(w, tiny_dataset)


def test_an_edited_query_label_is_refused(finished, tiny_dataset):
    w, _ = finished
    _edit_row(w / "queries.jsonl", 1, lambda r: {**r, "labels": [(y + 1) % 4 for y in
                                                                 r["labels"]]})
    with pytest.raises(RecordError, match="queries.jsonl row 2 was changed"):
        _run(w, tiny_dataset)


@pytest.mark.parametrize("damage, message", [
    (lambda w: os.unlink(w / "metrics.jsonl"), "metrics.jsonl is missing but the last "
                                               "finished cycle"),
    (lambda w: os.unlink(w / "labels.jsonl"), "labels.jsonl is missing"),
    (lambda w: (w / "labels.jsonl").write_text(
        "".join((w / "labels.jsonl").read_text().splitlines(True)[:30])), "rows were deleted"),
    (lambda w: records.atomic_write_json(str(w / "state.json"), {"cycle_done": 2}),
     "state.json is damaged: the key 'ledgers' is missing"),
    (lambda w: records.atomic_write_json(
        str(w / "state.json"), {**records.read_json(str(w / "state.json")), "cycle_done": 99}),
     "state.json says cycle 99 finished but metrics.jsonl holds 4 rows"),
    (lambda w: (w / "config.json").write_text("{not json"), r"config.json is damaged: not "
                                                            r"valid JSON"),
    (lambda w: __import__("shutil").rmtree(w / "checkpoints" / "3"),
     r"checkpoints/3 is missing: the network of cycle 3 was deleted"),
])
def test_damaged_records_are_refused_naming_the_file(finished, tiny_dataset, damage,
                                                     message):
    w, _ = finished
    damage(w)
    with pytest.raises(ValueError, match=message):
        _run(w, tiny_dataset, config=_config(cycles=5))


def test_a_finished_run_extends_to_more_cycles(tmp_path, tiny_dataset):
    _run(tmp_path / "short", tiny_dataset, config=_config(cycles=3))
    extended = _run(tmp_path / "short", tiny_dataset, config=_config(cycles=5))
    straight = _run(tmp_path / "long", tiny_dataset, config=_config(cycles=5))
    assert _summary(extended) == _summary(straight)
    assert records.read_json(str(tmp_path / "short" / "config.json"))["cycles"] == 5
    with pytest.raises(WorkdirError, match="cycles may only grow"):
        _run(tmp_path / "short", tiny_dataset, config=_config(cycles=4))


def test_unusable_workdirs_are_one_clear_line(tmp_path, tiny_dataset):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a folder"):
        _run(a_file, tiny_dataset)
    with pytest.raises(WorkdirError, match=f"is under the file {a_file}, not a folder"):
        _run(a_file / "sub", tiny_dataset)
    with pytest.raises(WorkdirError, match=f"workdir {a_file} is a file, not a folder"):
        loop.run_strategies(_config(), ["random"], str(a_file), dataset=tiny_dataset,
                            log=lambda s: None)
    if os.geteuid() != 0:                         # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(WorkdirError, match="not writable"):
            _run(ro, tiny_dataset)


def test_records_are_readable_like_any_file(finished):
    w, _ = finished
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    for p in [w / "config.json", w / "state.json", w / "metrics.jsonl",
              *[q for q in (w / "checkpoints").rglob("*") if q.is_file()]]:
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_the_workdir_lock_names_the_other_process(tmp_path):
    with Workdir.open(str(tmp_path)):
        child = subprocess.run(
            [sys.executable, "-c", "from lookahead_jax.workdir import Workdir;"
             f"Workdir.open({str(tmp_path)!r})"], capture_output=True, text=True)
        assert child.returncode != 0
        assert f"is in use by process {os.getpid()}" in child.stderr
    Workdir.open(str(tmp_path)).close()          # released: usable again


def test_two_processes_on_one_workdir(tmp_path):
    args = ("--strategy=random", "--cycles=4", "--initial_size=30", "--query_size=10",
            "--subset_size=100", "--epochs=20", f"--workdir={tmp_path}")
    first = cli_start(*args)
    lock = tmp_path / "random" / ".lock"
    wait_until(lambda: lock.exists() and lock.read_text(), 120, "the first run's lock")
    second = cli_start(*args)
    out2, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 2 and "Traceback" not in err2
    assert f"is in use by process {first.pid}" in err2
    rows = records.read_jsonl(str(tmp_path / "random" / "metrics.jsonl"))
    assert [r["cycle"] for r in rows] == [0, 1, 2, 3]             # each cycle once
    labels = records.read_jsonl(str(tmp_path / "random" / "labels.jsonl"))
    assert len(labels) == len({r["index"] for r in labels}) == 60
