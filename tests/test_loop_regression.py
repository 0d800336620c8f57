"""The loop's queries, labels and accuracies stay bit-for-bit those of commit d98d79d.

Recorded at d98d79d (before the loop was split into modules and its state made one
pytree) from these commands, run from the repository root:

    python -m experiments.main --dataset=digits --strategy=random,mlmoc --cycles=4 \
        --initial_size=20 --query_size=10 --subset_size=100 --epochs=5 --seed=3 \
        --max_train=400 --max_test=200 --workdir=WORK/full
    # the resumed run: two cycles, then the same workdir extended to four
    python -m experiments.main ... (same flags) --cycles=2 --workdir=WORK/resumed
    python -m experiments.main ... (same flags) --cycles=4 --workdir=WORK/resumed

``tests/data/loop_regression_d98d79d.json`` holds, per run and strategy, the query rows
(cycle, indices, labels), the label ledger (cycle, index, label, source) and the metric
rows' cycle, num_labeled and test_accuracy. Regenerate (only at a commit whose behaviour
is the reference) with ``python tests/test_loop_regression.py WORK OUT.json``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "tests" / "data" / "loop_regression_d98d79d.json"
STRATEGIES = ("random", "mlmoc")
FLAGS = ["--dataset=digits", "--strategy=" + ",".join(STRATEGIES), "--initial_size=20",
         "--query_size=10", "--subset_size=100", "--epochs=5", "--seed=3",
         "--max_train=400", "--max_test=200"]
RUNS = {"full": [["--cycles=4"]], "resumed": [["--cycles=2"], ["--cycles=4"]]}


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(workdir: str) -> dict:
    """Runs the recorded commands under ``workdir``; returns what the records say."""
    out = {}
    for name, steps in RUNS.items():
        wd = os.path.join(workdir, name)
        for extra in steps:
            proc = subprocess.run([sys.executable, "-m", "experiments.main", *FLAGS, *extra,
                                   f"--workdir={wd}"], cwd=REPO, capture_output=True,
                                  text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            assert proc.returncode == 0, proc.stderr[-3000:]
        out[name] = {}
        for s in STRATEGIES:
            sub = os.path.join(wd, s)
            out[name][s] = {
                "queries": [{k: q[k] for k in ("cycle", "indices", "labels")}
                            for q in _jsonl(os.path.join(sub, "queries.jsonl"))],
                "labels": [{k: r[k] for k in ("cycle", "index", "label", "source")}
                           for r in _jsonl(os.path.join(sub, "labels.jsonl"))],
                "metrics": [{k: m[k] for k in ("cycle", "num_labeled", "test_accuracy")}
                            for m in _jsonl(os.path.join(sub, "metrics.jsonl"))]}
    return out


@pytest.mark.slow
def test_seeded_and_resumed_runs_match_d98d79d_bit_for_bit(tmp_path):
    want = json.loads(RECORD.read_text())
    got = json.loads(json.dumps(collect(str(tmp_path))))   # the same JSON round trip
    for name in RUNS:
        for s in STRATEGIES:
            for kind in ("queries", "labels", "metrics"):
                assert got[name][s][kind] == want[name][s][kind], (name, s, kind)


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(collect(sys.argv[1]), indent=1) + "\n")
