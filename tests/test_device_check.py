"""benchmarks/device_check.py --quick: the one-command device check rehearsed on CPU."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.mark.slow
def test_device_check_quick_runs_every_step(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "dc.json"
    res = mod.main(["--quick", "--out", str(out), "--workdir", str(tmp_path / "runs")])
    assert res["ok"], {k: v.get("error") for k, v in res["steps"].items()}
    saved = json.loads(out.read_text())
    assert set(saved["steps"]) == {"plan", "ntk", "lookahead", "fig3a"}
    plan = saved["steps"]["plan"]
    assert plan["matmul_gflops"]["highest"] > 0 and plan["fig3a_plan"][0].startswith("plan:")
    seq = saved["steps"]["fig3a"]["rows"]["sequential"]
    assert [r["labeled"] for r in seq] == [20, 25]
