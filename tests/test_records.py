"""The records (lookahead_jax/records.py, atomic I/O): torn last lines repaired on resume,
and a failed write (full disk) leaves no partial file.

Moved here unchanged from tests/test_workdir.py.
"""

import os

import pytest
from conftest import loop_config
from conftest import margin_config as _config, quiet_run as _run, run_summary as _summary

from lookahead_jax import loop, records




def test_torn_last_lines_are_repaired_and_the_run_resumes_identically(tmp_path, tiny_dataset):
    full = _run(tmp_path / "full", tiny_dataset)
    part = tmp_path / "part"
    _run(part, tiny_dataset, stop_after_cycle=1)
    for name in ("labels", "queries", "metrics"):      # a crash mid-append in each ledger
        with open(part / f"{name}.jsonl", "a") as fh:
            fh.write('{"cycle": 2, "ind')
    notes = []
    resumed = loop.run(_config(), str(part), dataset=tiny_dataset, log=notes.append)
    assert sum("removed a torn last line" in n for n in notes) == 3
    assert _summary(resumed) == _summary(full)
    for name in ("labels", "queries", "metrics"):
        records.read_jsonl(str(part / f"{name}.jsonl"), strict=True)   # whole lines only


def test_a_full_disk_leaves_no_partial_file(tmp_path, tiny_dataset, monkeypatch):
    w = tmp_path / "w"
    _run(w, tiny_dataset, config=_config(cycles=2))
    before = {p: p.read_bytes() for p in w.iterdir() if p.is_file() and p.name != ".lock"}
    real = os.fsync

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        records.atomic_write_json(str(w / "state.json"), {"x": 1})
    monkeypatch.setattr(os, "fsync", real)
    after = {p: p.read_bytes() for p in w.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before and not list(w.glob(".*.tmp"))
