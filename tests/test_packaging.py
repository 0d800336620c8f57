"""The installed package: a wheel without the repository's launchers, and a console command
that runs the default job from any folder, even one with an ``experiments/`` of its own."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the repository, installed (not editable) into a folder."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist"), str(REPO)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = (root / "dist").glob("lookahead_jax-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(root / "site"), str(wheel)], check=True, timeout=600,
                   capture_output=True)
    return wheel, root / "site"


def test_wheel_holds_the_library_and_its_configs_only(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("experiments/") for n in names)
    assert "lookahead_jax/configs/default.py" in names
    assert "lookahead_jax/strategies/registry.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lookahead-jax = lookahead_jax.cli:run" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.slow
def test_console_command_runs_the_default_job_in_a_foreign_folder(installed, tmp_path):
    _, site = installed
    work = tmp_path / "project"
    (work / "experiments").mkdir(parents=True)
    (work / "experiments" / "__init__.py").write_text("")
    (work / "experiments" / "main.py").write_text("raise SystemExit('the wrong experiments')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    where = subprocess.run([sys.executable, "-c", "import lookahead_jax; print(lookahead_jax"
                            ".__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site)), where.stdout      # the installed copy
    out = subprocess.run([str(site / "bin" / "lookahead-jax"), "--cycles=2", "--epochs=2",
                          "--initial_size=20", "--subset_size=60", "--workdir=runs"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mlmoc" in out.stdout and "random" in out.stdout
    assert (work / "runs" / "mlmoc" / "metrics.jsonl").exists()
