"""The command line (python -m experiments.main, lookahead_jax/cli.py): end to end runs,
one-line errors, config files and flags, and signals (Ctrl-C / SIGTERM).

Moved here unchanged from tests/test_loop.py and tests/test_workdir.py.
"""

import json
import signal
import subprocess
import sys

import pytest
from conftest import cli, cli_start, wait_until

from lookahead_jax import records


def test_cli_end_to_end_on_digits(tmp_path):
    out = cli("--cycles=3", "--initial_size=30", "--query_size=10", "--subset_size=100",
              "--epochs=3", "--strategy=random,least_confidence", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "least_confidence" in out.stdout and "cycle 3/3" in out.stdout
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    rows = records.read_jsonl(str(tmp_path / "random" / "metrics.jsonl"))
    assert [r["num_labeled"] for r in rows] == [30, 40, 50]
    # same command again: resumes, nothing to do, same table
    again = cli("--cycles=3", "--initial_size=30", "--query_size=10", "--subset_size=100",
                "--epochs=3", "--strategy=random,least_confidence", f"--workdir={tmp_path}")
    assert again.returncode == 0 and "resuming" in again.stdout
    assert again.stdout.split("cycle  labeled")[1] == out.stdout.split("cycle  labeled")[1]


@pytest.mark.parametrize("flag, message", [
    ("--dataset=imagenet", "unknown dataset 'imagenet'; known datasets: digits"),
    ("--strategy=bogus", "unknown strategy 'bogus'"),
    ("--query_size=-1", "query_size must be positive"),
    ("--strategy=random,random", "strategy 'random' is given twice"),
    ("--config.strategy_options.jiter=1e-4", "no strategy of random, mlmoc has an option"),
])
def test_cli_bad_input_is_one_clear_line(flag, message, tmp_path):
    out = cli(flag, f"--workdir={tmp_path}")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_cli_diverged_training_is_a_clear_error_that_keeps_the_records(tmp_path):
    out = cli("--cycles=2", "--initial_size=30", "--query_size=10", "--subset_size=100",
              "--epochs=3", "--learning_rate=1e9", "--strategy=random",
              f"--workdir={tmp_path}")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "training diverged" in out.stderr and "Traceback" not in out.stderr
    # diverged in the first cycle: nothing finished, and the line says so (not "kept")
    assert "no cycle had finished, so nothing is kept yet" in out.stderr
    assert (tmp_path / "random" / "config.json").exists()
    assert not (tmp_path / "random" / "metrics.jsonl").exists() or \
        (tmp_path / "random" / "metrics.jsonl").read_text() == ""


def test_config_file_overrides_and_a_misspelled_option(tmp_path, monkeypatch):
    """The issue's two commands: a typo in a strategy option is refused before training."""
    ok = cli("--config=experiments/configs/default.py",
             "--config.strategy_options.jitter=1e-4", "--strategy=mlmoc", "--cycles=2",
             "--epochs=2", "--initial_size=20", "--subset_size=80", f"--workdir={tmp_path}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    cfg = records.read_json(str(tmp_path / "mlmoc" / "config.json"))
    assert cfg["strategy_options"] == {"jitter": 1e-4}
    bad = cli("--config=experiments/configs/default.py",
              "--config.strategy_options.jiter=1e-4", "--strategy=mlmoc", "--cycles=2",
              f"--workdir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert ("error: strategy 'mlmoc' has no option 'jiter' (did you mean 'jitter'?); its "
            "options: u_floor, chunk_size, jitter, kernel") in bad.stderr
    assert not (tmp_path / "bad").exists()          # refused before anything was written


def _resolved(*argv):
    out = cli(*argv, "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_cli_config_rules():
    """Short flags alias config fields; a dataset's preset; --model resets its options."""
    c = _resolved("--momentum=0.5", "--config.train.weight_decay=0.0", "--cycles=3")
    assert (c["train"]["momentum"], c["train"]["weight_decay"], c["cycles"]) == (0.5, 0.0, 3)
    c = _resolved("--dataset=mnist", "--config.train.epochs=7")
    assert (c["model"], c["initial_size"], c["train"]["epochs"]) == ("wide_resnet", 100, 7)
    c = _resolved("--dataset=mnist", "--model=mlp")
    assert c["model"] == "mlp" and c["model_kwargs"] == {}
    c = _resolved("--dataset=mnist", "--model=mlp", "--config.model_kwargs.widths=(64,)")
    assert c["model_kwargs"] == {"widths": [64]}
    c = _resolved("--config=experiments/configs/mnist_mlp.py", "--dataset=fashion_mnist")
    assert (c["dataset"], c["model"]) == ("fashion_mnist", "mlp")    # --config given: kept


def test_short_flags_are_derived_from_the_config_dataclasses():
    from absl import flags

    from lookahead_jax import cli

    assert set(cli.SHORT_FLAGS) >= {"dataset", "strategy", "model", "cycles", "seed",
                                    "epochs", "learning_rate", "momentum", "weight_decay",
                                    "batch_size", "loss", "sequential", "manual_dir"}
    assert cli.SHORT_FLAGS["momentum"] == "train.momentum"
    assert "one-cycle" in flags.FLAGS["learning_rate"].help


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_is_one_line_and_the_run_resumes(sig, code, word, tmp_path):
    args = ("--strategy=random", "--cycles=6", "--initial_size=30", "--query_size=10",
            "--subset_size=100", "--epochs=30", f"--workdir={tmp_path}")
    proc = cli_start(*args)
    state = tmp_path / "random" / "state.json"
    wait_until(state.exists, 300, "the first cycle's state.json")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err, err[-2000:]
    assert err.strip().startswith(f"{word}: finished cycles are kept in")
    assert len(err.strip().splitlines()) == 1
    if sig == signal.SIGTERM:    # the same path from here on (tested with SIGINT)
        assert records.read_json(str(state))["cycle_done"] >= 0
        return
    again = cli_start(*args)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "resuming" in out, err[-2000:]


def test_a_signal_that_surfaces_as_another_error_still_stops_the_run():
    # a signal's exception raised while a pybind11 module is imported surfaces as
    # "ImportError: initialization failed" (seen once with SIGTERM after the first cycle):
    # once a signal has arrived, whatever escapes is that signal's stop
    from lookahead_jax import cli as cli_lib

    with cli_lib._signals_win():        # no signal: errors pass through unchanged
        pass
    with pytest.raises(ImportError):
        with cli_lib._signals_win():
            raise ImportError("initialization failed")
    cli_lib._RECEIVED.append(signal.SIGTERM)
    try:
        with pytest.raises(cli_lib._Stopped) as info:
            with cli_lib._signals_win():
                raise ImportError("initialization failed")
        assert info.value.signum == signal.SIGTERM
        assert isinstance(info.value.__cause__, ImportError)
    finally:
        cli_lib._RECEIVED.clear()


_AFTER_THE_RUN = """
import os, signal, sys
from lookahead_jax import cli
def ran(config, names, workdir):           # a run that has finished (no training needed)
    return {}
def report(results, workdir):              # the signal arrives while the table prints
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()
cli.loop.run_strategies = ran
cli._report = report
sys.argv = ["lookahead-jax", "--strategy=random", "--workdir=" + sys.argv[1]]
cli.run()
"""


_AT_SHUTDOWN = """
import os, signal, sys
from lookahead_jax import cli
import atexit
atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), signal.pause()))
sys.argv = ["lookahead-jax", "--print_config"]
cli.run()
"""


@pytest.mark.parametrize("script,code,word", [(_AFTER_THE_RUN, 143, "terminated: "),
                                              (_AT_SHUTDOWN, 130, "")])
def test_a_signal_after_the_run_is_quiet_too(script, code, word, tmp_path):
    # while the finished run's table prints it is the usual one line; during the
    # interpreter's shutdown it leaves with the signal's status and says nothing
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip() == (word + "no cycle had finished, so nothing is kept yet; "
                                   "the same command starts again" if word else "")
