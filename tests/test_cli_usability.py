"""The command line explains itself (issue 24) and every bad input is one line (issue 26):
config files that fail, the forms of stop options, help texts held to complete sentences
and to their config fields, a seed beyond 64 bits, a wrong model option, Ctrl-C while the
command starts and Ctrl-C swallowed by a garbage-collection callback.

Most checks call the CLI's functions in-process; three start the command (~8-20 s each).
"""

import dataclasses
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from conftest import REPO, cli

from lookahead_jax import cli as cli_lib
from lookahead_jax import configs, data, loop, records, stopping, train

# A text a person reads as a sentence: a capital (or a flag, a number, a quote) first,
# one period last, no reST roles or double backticks, balanced parentheses, no fragment
# such as "... see (config field oracle)".
SENTENCE = re.compile(r"^[A-Z0-9\"'(-].*[^.]\.$", re.S)


def _complete_sentence(text: str) -> bool:
    return bool(SENTENCE.match(text)) and "``" not in text and not re.search(
        r":\w+:`", text) and text.count("(") == text.count(")") and \
        not re.search(r"\b(see|the|a|of)\s*\(", text)


def test_complete_sentence_rule_catches_the_old_texts():
    """The rule refuses what --helpfull printed before (issue 24, item 4)."""
    assert not _complete_sentence('who answers: "simulated" (labels known in advance) or '
                                  '"files" (people: request and answer CSV files in the '
                                  'workdir, see (config field oracle)')
    assert not _complete_sentence("a name from models.MODELS, or the name of the Model "
                                  "given to (config field model)")
    assert _complete_sentence("The network, one of mlp, cnn (default mlp; --config.model).")


def test_every_flag_text_is_a_complete_sentence_and_names_its_config_field():
    from absl import flags

    fields = {f.name for f in dataclasses.fields(loop.LoopConfig)} - {
        "model_kwargs", "strategy_options", "train"}
    fields |= {f.name for f in dataclasses.fields(train.TrainConfig)}
    assert set(cli_lib.SHORT_FLAGS) == fields
    default = configs.load("default").to_dict()
    for name, path in cli_lib.SHORT_FLAGS.items():
        text = flags.FLAGS[name].help
        assert _complete_sentence(text), (name, text)
        node = default
        for p in path.split("."):          # the field exists, and its default is shown
            node = node[p]
        assert f"--config.{path})." in text, (name, text)
        assert f"(default {cli_lib._shown(node)};" in text, (name, text)
    for name in ("config", "workdir", "print_config"):
        assert _complete_sentence(flags.FLAGS[name].help), name
    helps = {n: flags.FLAGS[n].help for n in ("coordinator_address", "num_processes",
                                              "process_id")}
    assert len(set(helps.values())) == 3, helps         # each its own text
    assert "npz:PATH" in flags.FLAGS["dataset"].help
    assert "folder:PATH" in flags.FLAGS["dataset"].help


def test_help_lists_the_common_flags_with_their_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli_lib.parse_flags(["lookahead-jax", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Try --helpfull" not in out and "--helpfull lists every flag" in out
    for name in cli_lib.COMMON_FLAGS:
        block = out.split(f"  --{name}: ", 1)[1].split("\n  --", 1)[0]
        assert "(default" in block, name
        assert _complete_sentence(" ".join(block.split()).split("\n\n")[0]), name
    assert "(default 32; --config.train.batch_size)" in " ".join(out.split())


def test_dataset_errors_name_the_own_data_forms():
    with pytest.raises(ValueError) as e:
        data.canonical_name("bc_pool.npz")
    assert "npz:PATH" in str(e.value) and "folder:PATH" in str(e.value)
    assert "npz:bc_pool.npz" in str(e.value)        # a file name: the form that reads it


CONFIG_FILES = {
    "raises.py": ("raise RuntimeError('boom')\n", "raised RuntimeError: boom (line 1)"),
    "get_config_raises.py": ("def get_config():\n    return 1 / 0\n",
                             "get_config() raised ZeroDivisionError"),
    "no_get_config.py": ("x = 1\n", "defines no get_config()"),
    "syntax.py": ("def get_config(:\n", "has a syntax error at line 1"),
    "none.py": ("def get_config():\n    pass\n", "returned NoneType (a missing return?)"),
    "list.py": ("def get_config():\n    return [1]\n", "returned list"),
    "bad_dict.py": ("def get_config():\n    return {'cycels': 2}\n",
                    "returned a dict that is not a run's settings"),
    "settings.yaml": ("cycles: 2\n", "is a .yaml file"),
    "bad.json": ("[1, 2]", "is not a run's settings"),
    "a_folder": (None, "is a folder"),
    "missing.py": (False, "does not exist"),
}


def test_every_way_a_config_file_fails_is_one_line_naming_the_file(tmp_path):
    """Issue 26: each ends in one line naming the file and what to do (before: tracebacks,
    and UnboundLocalError in the CLI's own handler for a folder or a missing file)."""
    for name, (text, message) in CONFIG_FILES.items():
        path = tmp_path / name
        if text is None:
            path.mkdir()
        elif text is not False:
            path.write_text(text)
        with pytest.raises(cli_lib.ConfigFileError) as e:
            cli_lib.load_config_file(str(path), argv=[])
        line = str(e.value)
        assert message in line and str(path) in line and "\n" not in line, (name, line)
        assert re.search(r"; (fix|give|write|add|make)", line), (name, line)
    # a dict is taken as the settings it names, and --print_config's JSON reads back
    (tmp_path / "as_dict.py").write_text("def get_config():\n    return {'cycles': 2}\n")
    cfg = cli_lib.load_config_file(str(tmp_path / "as_dict.py"), argv=[])
    assert isinstance(cfg, ml_collections.ConfigDict) and cfg.cycles == 2
    want = loop.LoopConfig(cycles=3, strategy_options={"jitter": 1e-4},
                           train=train.TrainConfig(epochs=7))
    (tmp_path / "run.json").write_text(json.dumps({**want.to_dict(), "strategy": "random,mlmoc"}))
    cfg = cli_lib.load_config_file(str(tmp_path / "run.json"), argv=[]).to_dict()
    assert cfg.pop("strategy") == "random,mlmoc"
    assert loop.LoopConfig.from_dict({**cfg, "strategy": "random"}) == want


def test_the_cli_handler_reports_a_missing_config_file_in_one_line(tmp_path):
    out = cli(f"--config={tmp_path / 'nope.py'}", "--print_config")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (f"error: --config file {tmp_path / 'nope.py'} does not exist; "
                                  "give a Python file with get_config(), e.g. start from "
                                  "experiments/configs/default.py")


def test_seed_beyond_64_bits_is_refused_naming_the_field():
    loop.LoopConfig(seed=2**63 - 1)
    for seed in (2**63, 2**64, 10**23):
        with pytest.raises(ValueError, match=r"seed must be below 2\*\*63 \(a 64-bit signed "
                                             r"integer\), got \d+$"):
            loop.LoopConfig(seed=seed)


def test_a_wrong_model_option_names_its_flag(monkeypatch):
    monkeypatch.setattr(cli_lib, "_config_argv", lambda: ["x", "--config.model_kwargs.widths=abc"])
    cfg = ml_collections.ConfigDict({"model": "mlp", "model_kwargs": {"widths": ("abc",)}})
    with pytest.raises(ValueError) as e:
        cli_lib._check_model_kwargs(cfg, {})
    assert str(e.value).startswith("--config.model_kwargs.widths=abc: model 'mlp' takes a "
                                   "tuple of int")
    for good in ((64,), [64, 32]):
        cli_lib._check_model_kwargs(ml_collections.ConfigDict(
            {"model": "mlp", "model_kwargs": {"widths": good}}), {})
    for name in configs.PRESETS:              # every preset's options pass
        cli_lib._check_model_kwargs(configs.load(name), {})


def test_the_short_stop_options_flag_reads_json_and_python():
    want = {"budget": {"max_labels": 90}}
    assert cli_lib._dict_flag("stop_options", '{"budget": {"max_labels": 90}}') == want
    assert cli_lib._dict_flag("stop_options", "{'budget': {'max_labels': 90}}") == want
    with pytest.raises(ValueError, match="--stop_options must be a JSON object of objects"):
        cli_lib._dict_flag("stop_options", "budget=90")


def test_stop_options_forms_end_to_end(tmp_path):
    """Issue 24, item 1: the nested --config form creates the entry and stops the run at the
    budget, the hint of --stop=budget names that form, and the short flag takes JSON."""
    with pytest.raises(ValueError) as e:
        stopping.parse("budget", {})
    hint = re.search(r"--config\.stop_options\.budget\.max_labels=N", str(e.value))
    assert hint, str(e.value)
    form = hint.group(0).replace("=N", "=70")
    out = cli("--stop=budget", form, "--strategy=random", "--cycles=5", "--initial_size=30",
              "--query_size=20", "--subset_size=60", "--epochs=1", "--max_test=200",
              f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = records.read_jsonl(str(tmp_path / "random" / "metrics.jsonl"))
    assert [r["num_labeled"] for r in rows] == [30, 50, 70]
    assert rows[-1]["stopped_by"] == "budget"
    # the short flag's value, set as build_config sets it, gives a valid run's settings
    cfg = configs.load("default")
    cli_lib._set(cfg, "stop_options", cli_lib._dict_flag(
        "stop_options", '{"budget": {"max_labels": 90}}'))
    cfg = {**cfg.to_dict(), "stop": "budget", "strategy": "random"}
    assert loop.LoopConfig.from_dict(cfg).stop_options == (("budget", (("max_labels", 90),)),)


def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130():
    """A SIGINT raised while ml_collections is being imported (JAX is loading), exactly
    then: an import hook sends it."""
    code = ("import builtins, os, signal, sys\n"
            "sys.argv = ['lookahead-jax', '--print_config']\n"
            "real = builtins.__import__\n"
            "def hook(name, *a, **k):\n"
            "    if name == 'ml_collections':\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = hook\n"
            "from lookahead_jax.cli import run\n"
            "run()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 130, out.stderr[-3000:]
    assert out.stderr.strip() == ("interrupted while starting: nothing had started; the same "
                                  "command starts again")


def test_ctrl_c_in_a_garbage_collection_callback_still_stops(monkeypatch):
    """A stop raised inside a gc callback (as in JAX's ``_xla_gc_callback``) is only printed
    by Python ("Exception ignored in"); the CLI sends it again so the run stops."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    seen = []

    def callback(phase, info):
        if phase == "start" and not seen:
            seen.append(phase)
            os.kill(os.getpid(), signal.SIGINT)      # the handler runs inside the callback
            for _ in range(1000):
                pass

    try:
        cli_lib._install_signals()
        gc.callbacks.append(callback)
        with pytest.raises(KeyboardInterrupt) as e:
            gc.collect()
            deadline = time.time() + 10
            while time.time() < deadline:            # the run's own code goes on
                time.sleep(0.01)
        assert isinstance(e.value, cli_lib._Stopped) and e.value.signum == signal.SIGINT
        assert seen
    finally:
        gc.callbacks.remove(callback)
        for s, h in before.items():
            signal.signal(s, h)


def test_api_and_cli_agree_on_the_batch_size():
    assert loop.LoopConfig().train.batch_size == configs.load("default").train.batch_size


def test_the_first_stabilizing_value_is_not_nan():
    crit = stopping.get("stabilizing_predictions")
    opts = crit.options.parse({}, strategy=crit.name)
    probs = np.eye(3)[[0, 1, 2, 0]]
    obs = stopping.Observation(cycle=0, num_labeled=10, stop_probs=probs)
    fired, value, memory = crit.check(opts, obs, {})
    assert value is None and not fired            # nothing to compare with: not recorded
    fired, value, _ = crit.check(opts, obs, memory)
    assert value == 1.0
