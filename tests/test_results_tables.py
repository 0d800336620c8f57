"""The README's measured tables are the ones the benchmarks print from the committed JSON
(never typed in, never from another day's numbers)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("script", ["benchmarks/ntk_vs_nt.py", "benchmarks/theorem31.py",
                                    "benchmarks/projected_bench.py",
                                    "benchmarks/precision_emulation.py"])
def test_readme_quotes_the_table_its_json_prints(script):
    quoted = re.findall(rf"`python {script} --table (benchmarks/results/[\w.]+\.json)`", README)
    assert quoted, f"the README names no results file of {script}"
    for path in set(quoted):
        out = subprocess.run([sys.executable, script, "--table", path], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        table = [line for line in out.stdout.splitlines() if line.startswith("|")]
        assert table and "\n".join(table) in README, f"README's table differs from {path}"


def test_side_by_side_record_is_one_run_with_both_sides():
    """Each case of the committed NT-vs-ours record alternates both sides in one run."""
    for path in re.findall(r"`python benchmarks/ntk_vs_nt.py --table "
                           r"(benchmarks/results/[\w.]+\.json)`", README):
        rec = json.loads((REPO / path).read_text())
        assert rec["peak_gflops"] > 0 and not rec["settings"]["quick"]
        for case in rec["cases"].values():
            assert len(case["rounds"]) == rec["settings"]["rounds"] >= 3
            assert all("nt" in r and "ours" in r for r in case["rounds"])
            assert case["median_rel_dev_ours_vs_nt"] < 1e-5   # float32 kernels agree
