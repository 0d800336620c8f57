"""The command line: ``lookahead-jax`` (installed) and ``python -m experiments.main``.

Only parses flags and calls :func:`lookahead_jax.loop.run_strategies`, the function tests
and notebooks call. Settings come from a config file (``--config=PATH``, Flax-examples
style; default: the embedded digits job) with ``--config.<field>=value`` overrides, e.g.
``--config.train.momentum=0.5``, ``--config.strategy_options.kernel=full``,
``--config.model_kwargs.widen_factor=8``. Every field of
:class:`~lookahead_jax.loop.LoopConfig` and :class:`~lookahead_jax.train.TrainConfig`
also has a short flag of its own name (``--dataset``, ``--strategy``, ``--cycles``,
``--epochs``, ``--momentum``, ...), derived from the dataclasses (type and help text), so
the list of fields exists once.

Rules:
  * ``--dataset=NAME`` without ``--config`` starts from that dataset's preset (the
    paper's setting, e.g. ``svhn``) when it has one; ``--config.*`` overrides and short
    flags apply on top, short flags last.
  * ``--model=NAME`` that changes the network uses that network's defaults plus any
    ``--config.model_kwargs.*`` given (the config's options belong to the other network).
  * ``--strategy`` (or the config's ``strategy``) may list several strategies, comma
    separated: one run each under ``WORKDIR/<strategy>/``, compared in one table and plot.

``--help`` lists the common flags (one sentence and the default each, :func:`usage`),
``--helpfull`` every flag. A config file may also be the JSON ``--print_config`` writes;
``--config.stop_options.NAME.KEY=V`` creates the criterion's entry, and
``--stop_options`` takes the whole mapping as JSON.

Bad input is one ``error:`` line on stderr with exit status 2, before any training (a
config file that is missing, a folder, not Python, broken, raising or returning no
settings included: :func:`load_config_file`); a diverged run exits 1 saying where its
finished cycles are; Ctrl-C exits 130, likewise, also while the command still imports
JAX and when the signal lands in a garbage-collection callback (:func:`_unraisable`). With
``--distributed`` a process that cannot join the others says so in one line and exits 1;
a process that fails after joining leaves at once (not through JAX's shutdown, which
would wait for the others), and the others, whose next collective then fails, say so in
one line and exit 1.
"""

from __future__ import annotations

import _thread
import ast
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import textwrap
import threading
import traceback
import typing
from typing import Mapping, Optional, Sequence


def _is_command() -> bool:
    """Whether this process is the command (``lookahead-jax``, ``python -m
    experiments.main``), not a program or notebook that imports this module."""
    arg0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(arg0) == "lookahead-jax" or \
        arg0.endswith(os.path.join("experiments", "main.py"))


@contextlib.contextmanager
def _starting():
    """Ctrl-C (or SIGTERM) while the command imports JAX and the library: one line and
    exit 130 (143), not a traceback from inside whatever module was importing. A signal's
    exception can surface as another one (an ``ImportError: initialization failed`` of a
    pybind11 module), so once a signal arrived, whatever escapes is that stop."""
    if not _is_command() or threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def on_signal(signum, frame):
        del frame
        received.append(signum)
        raise KeyboardInterrupt

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except BaseException:
        if not received:
            raise
        word = "terminated" if received[-1] == signal.SIGTERM else "interrupted"
        print(f"\n{word} while starting: nothing had started; the same command starts "
              "again", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + int(received[-1]))
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


with _starting():
    import jax
    import ml_collections
    from absl import app, flags, logging
    from ml_collections import config_flags

    from lookahead_jax import configs, data, loop, stopping, strategies, train
    from lookahead_jax.distributed import DistributedInitError
    from lookahead_jax.models import networks
    from lookahead_jax.oracles import LabelsNeeded

FLAGS = flags.FLAGS

# One sentence per config field, for a person at the command line (the dataclasses'
# docstrings are written for the API). A field without one here falls back to the first
# sentence of its docstring; tests/test_cli_usability.py holds both to complete sentences.
_HELP = {
    "dataset": "The data: a built-in dataset ({datasets}), npz:PATH (your own .npz archive "
               "with x and y) or folder:PATH (your own images, one sub-folder per class).",
    "model": "The network, one of {models}.",
    "strategy": "The acquisition strategy, or several comma separated (one run each, "
                "compared in one table): {strategies}.",
    "sequential": "Reveal a query's labels one at a time inside the acquisition (needs a "
                  "sequential strategy such as mlmoc).",
    "cycles": "How many train/evaluate rounds to run; a query follows every round but the "
              "last.",
    "initial_size": "How many labels the seeded random initial set has.",
    "query_size": "How many labels each query asks for.",
    "subset_size": "How many random unlabeled candidates each query scores.",
    "seed": "The seed of every random choice (initial set, candidates, initialisation, "
            "shuffling), below 2**63.",
    "data_dir": "The folder built-in datasets are read from and downloaded to (tfds's "
                "data_dir).",
    "manual_dir": "The folder of manually downloaded dataset archives (tfds's manual_dir).",
    "download": "Download a built-in dataset that is not on disk yet.",
    "max_train": "Use a seeded random subset of this many training examples (quick runs).",
    "max_test": "Use a seeded random subset of this many test examples (quick runs).",
    "initial_set": "Where the first labels come from: auto (the pool's given labels when "
                   "it has any, else a random draw) or random (always the draw).",
    "oracle": "Who answers the queries: simulated (the dataset's own labels) or files "
              "(people, through CSV files in the workdir).",
    "stop": "Stopping criteria, comma separated ({criteria}); the run ends when one fires, "
            "and none runs every cycle.",
    "stop_options": "The stopping criteria's options as JSON, e.g. "
                    "--stop_options='{{\"budget\": {{\"max_labels\": 90}}}}' (or "
                    "--config.stop_options.budget.max_labels=90).",
    "stop_set_size": "How many random pool items the stop set holds (read by the "
                     "stabilizing_predictions and uncertainty criteria).",
    "distributed": "Join a multi-process run through jax.distributed before anything else.",
    "coordinator_address": "The HOST:PORT of process 0 of a multi-process run (with "
                           "--distributed).",
    "num_processes": "How many processes the multi-process run has (with --distributed).",
    "process_id": "This process's index in the multi-process run, from 0 (with "
                  "--distributed).",
    "join_timeout_s": "The longest this process waits for the others to join, in seconds "
                      "(with --distributed; unset: 300).",
    "epochs": "How many passes over the labeled set each cycle trains.",
    "batch_size": "The training mini-batch size.",
    "learning_rate": "The peak learning rate of the one-cycle schedule.",
    "momentum": "The SGD (heavy-ball) momentum.",
    "weight_decay": "The L2 coefficient added to the gradient.",
    "loss": "The training loss: mse (the paper's squared loss) or ce (softmax "
            "cross-entropy).",
    "warm_start": "Continue each cycle from the previous cycle's network "
                  "(--nowarm_start re-initialises it every cycle).",
    "pct_start": "The fraction of the steps spent warming up in the one-cycle schedule.",
    "eval_batch_size": "The batch size of evaluation and prediction.",
    "first_cycle_epochs": "How many epochs a cycle that trains from initialisation runs "
                          "(unset: --epochs).",
}

# What ``--help`` lists (``--helpfull``: every flag).
COMMON_FLAGS = ("config", "dataset", "model", "strategy", "cycles", "initial_size",
                "query_size", "subset_size", "epochs", "batch_size", "learning_rate", "seed",
                "oracle", "sequential", "stop", "stop_options", "workdir", "print_config")

_PLAN = flags.DEFINE_bool(
    "plan", False, "print per cycle the kernel and look-ahead FLOPs, peak memory, estimated "
    "seconds on this device and whether it fits (lookahead_jax.plan); trains nothing")

_NOT_SHORT = ("model_kwargs", "strategy_options", "train")
_DICT_FLAGS = ("stop_options",)   # short flags whose value is a JSON object


def field_docs(cls) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a dataclass's docstring."""
    docs, name = {}, None
    section = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    for line in section.splitlines():
        m = re.match(r"^ {6}(\w+(?:, \w+)*):\s*(.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                docs[n] = m.group(2)
            name = names
        elif name and line.strip():
            for n in name:
                docs[n] += " " + line.strip()
    return {k: re.sub(r":\w+:`~?([^`]*)`|``([^`]*)``",
                      lambda m: m.group(1) or m.group(2), v) for k, v in docs.items()}


def _sentence(text: str) -> str:
    """The first sentence of ``text``, capitalised and ending in a period."""
    first = re.split(r"(?<=[.;])\s", text.strip(), maxsplit=1)[0].rstrip(".;")
    return first[:1].upper() + first[1:] + "."


def _shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or "empty"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _flag_help(name: str, path: str, doc: str, default) -> str:
    """One complete sentence: what the flag sets, its default (the embedded default job's)
    and the config field it is a short form of."""
    text = _HELP.get(name)
    if text is None:
        text = _sentence(doc or name)
    text = text.format(datasets=", ".join(data.DATASETS), models=", ".join(networks.MODELS),
                       strategies=", ".join(strategies.names()),
                       criteria=", ".join(stopping.names()))
    return f"{text[:-1]} (default {_shown(default)}; --config.{path})."


def _define(name: str, tp, help_text: str) -> None:
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = inner[0] if inner else tp
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
              float: flags.DEFINE_float}.get(tp, flags.DEFINE_string)
    define(name, None, help_text)


def _short_flags() -> dict[str, str]:
    """Defines one flag per config field; returns ``{flag: config path}``."""
    out = {}
    default = configs.load("default").to_dict()
    for cls, prefix in ((loop.LoopConfig, ""), (train.TrainConfig, "train.")):
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        values = default["train"] if prefix else default
        for f in dataclasses.fields(cls):
            if f.name in _NOT_SHORT:
                continue
            _define(f.name, hints[f.name], _flag_help(f.name, prefix + f.name,
                                                      docs.get(f.name), values.get(f.name)))
            out[f.name] = prefix + f.name
    return out


_CONFIG = config_flags.DEFINE_config_file(   # its default is set with its parser, below
    "config", None, "A Python file whose get_config() returns the run's "
    "settings (a ConfigDict), or the JSON that --print_config writes; --config.FIELD=VALUE "
    "overrides one field, e.g. --config.train.momentum=0.5 (default: the embedded digits "
    "job).", lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The output folder, resumed when it exists (default "
    "runs/<dataset>_<model>_seed<seed>).")
_PRINT = flags.DEFINE_bool(
    "print_config", False, "Print the resolved run settings as JSON and exit without running "
    "anything.")
SHORT_FLAGS = _short_flags()


def _config_argv() -> list[str]:
    """The arguments the config flag reads its overrides from (as ml_collections does)."""
    return list(sys.argv)


def _error_line(file: str, e: BaseException) -> str:
    """Where in ``file`` an exception was raised: `` (line N)`` or ``""``."""
    where = os.path.abspath(file)
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
             if os.path.abspath(f.filename) == where]
    return f" (line {lines[-1]})" if lines else ""


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot give a run's settings (the message says why)."""


def load_config_file(path: str, argv: Optional[Sequence[str]] = None):
    """The settings of ``--config=PATH[:ARG]``: ``get_config([ARG])`` of a Python file, or
    a JSON file as ``--print_config`` writes it, as an unlocked ConfigDict.

    ``--config.stop_options.NAME.KEY=V`` in ``argv`` (default: ``sys.argv``) gets an empty
    ``stop_options.NAME`` to set its key in. Every way the file can fail is one
    ``ValueError`` naming the file and what to do.
    """
    file, _, arg = str(path).partition(":")
    example = "e.g. start from experiments/configs/default.py"
    if not os.path.exists(file):
        raise ConfigFileError(f"--config file {file} does not exist{_looked_in(file)}; give "
                              f"a Python file with get_config(), {example}")
    if os.path.isdir(file):
        raise ConfigFileError(f"--config {file} is a folder; give a Python file with "
                              f"get_config() (or a --print_config JSON), {example}")
    suffix = os.path.splitext(file)[1].lower()
    if suffix == ".json":
        try:
            with open(file, encoding="utf-8") as f:
                values = json.load(f)
            if not isinstance(values, dict):
                raise ValueError(f"it holds a JSON {type(values).__name__}, not an object")
            cfg = _as_config_dict(values)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigFileError(f"--config file {file} is not a run's settings ({e}); "
                                  "write it with --print_config, or give a Python file with "
                                  "get_config()") from None
    elif suffix != ".py":
        raise ConfigFileError(f"--config file {file} is a {suffix or 'suffix-less'} file; "
                              "give a Python file with get_config() (or the JSON "
                              f"--print_config writes), {example}")
    else:
        cfg = _run_config_file(file, arg)
    stop = cfg.get("stop_options")
    if isinstance(stop, ml_collections.ConfigDict):
        for a in _config_argv() if argv is None else argv:
            m = re.match(r"^--?config\.stop_options\.(\w+)\.\w", a)
            if m and m.group(1) not in stop:
                stop[m.group(1)] = ml_collections.ConfigDict()
    return cfg


def _looked_in(file: str) -> str:
    where = os.path.abspath(file)
    return "" if where == file else f" (looked in {where})"


def _as_config_dict(values: Mapping):
    """A run's settings as a typed, unlocked ConfigDict (unknown fields refused)."""
    values = dict(values)
    names = str(values.pop("strategy", "random"))
    first = names.split(",")[0].strip() or "random"
    cfg = loop.LoopConfig.from_dict({**values, "strategy": first}).to_config_dict()
    cfg.strategy = names
    return cfg


def _run_config_file(file: str, arg: str):
    """``get_config([arg])`` of the Python file ``file``, every failure as one line."""
    import importlib.util

    what = f"--config file {file}"
    try:
        spec = importlib.util.spec_from_file_location("config_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigFileError(f"{what} has a syntax error at line {e.lineno}: {e.msg}; fix "
                              "the file") from None
    except Exception as e:
        raise ConfigFileError(f"{what} raised {type(e).__name__}: {e}{_error_line(file, e)} "
                              "when it was run; fix the file") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"{what} defines no get_config(); add one returning an "
                              "ml_collections.ConfigDict, as experiments/configs/default.py "
                              "does")
    call = f"get_config({arg!r})" if arg else "get_config()"
    try:
        cfg = get_config(*([arg] if arg else []))
    except Exception as e:
        raise ConfigFileError(f"{what}: {call} raised {type(e).__name__}: {e}"
                              f"{_error_line(file, e)}; fix the file") from None
    if isinstance(cfg, Mapping) and not isinstance(cfg, ml_collections.ConfigDict):
        try:
            return _as_config_dict(cfg)
        except (ValueError, TypeError) as e:
            raise ConfigFileError(f"{what}: {call} returned a dict that is not a run's "
                                  f"settings ({e}); fix the file") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        hint = " (a missing return?)" if cfg is None else ""
        raise ConfigFileError(f"{what}: {call} returned {type(cfg).__name__}{hint}; make "
                              "it return an ml_collections.ConfigDict (or a dict), as "
                              "experiments/configs/default.py does")
    return cfg


class _ConfigFileParser(flags.ArgumentParser):
    """``--config``'s parser: :func:`load_config_file` (absl turns its ``ValueError`` into
    ``flag --config=PATH: message``)."""

    def parse(self, argument):
        return load_config_file(argument)

    def flag_type(self):
        return "config object"


FLAGS["config"].parser = _ConfigFileParser()
FLAGS.set_default("config", configs.path("default"))


def _set(cfg, path: str, value) -> None:
    """``cfg.<path> = value`` for a dotted path (adds missing keys, nested ones too)."""
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        if p not in node:
            node[p] = ml_collections.ConfigDict()
        node = node[p]
    node[last] = value


def _dict_flag(name: str, text: str) -> dict:
    """A short flag's JSON object (``--stop_options='{"budget": {"max_labels": 90}}'``);
    a Python literal is accepted too."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            return value
    raise ValueError(f"--{name} must be a JSON object of objects, e.g. --{name}='{{\"budget\": "
                     f"{{\"max_labels\": 90}}}}', got {text!r} (or set one option with "
                     f"--config.{name}.NAME.KEY=VALUE)")


def _check_model_kwargs(cfg, overrides: Mapping[str, object]) -> None:
    """A built-in model's options against the types of their defaults, the offending
    ``--config.model_kwargs.KEY`` flag named (else a wrong type fails deep in Flax)."""
    cls = networks.MODELS.get(cfg.get("model"))
    kwargs = cfg.get("model_kwargs") or {}
    if cls is None or not hasattr(kwargs, "items"):
        return
    for key, value in kwargs.items():
        field = getattr(cls, "__dataclass_fields__", {}).get(key)
        if field is None or field.default is dataclasses.MISSING:
            continue
        default = field.default
        if isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list)) and all(
                isinstance(v, type(d)) and not isinstance(v, bool)
                for v, d in zip(value, list(default) * len(value)))
        elif isinstance(default, bool) or default is None:
            ok = default is None or isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                isinstance(default, float) or isinstance(value, int))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            flag = f"--config.model_kwargs.{key}"
            raw = [a.split("=", 1)[1] for a in _config_argv() if a.startswith(flag + "=")]
            given = f"{flag}={raw[-1]}" if raw else f"model_kwargs.{key}={value!r} (the config)"
            kind = type(default).__name__
            if isinstance(default, (tuple, list)) and default:
                kind += f" of {type(default[0]).__name__}"
            raise ValueError(f"{given}: model {cfg.model!r} takes a {kind} (its default: "
                             f"{default!r}), e.g. {flag}='{default!r}'")


def build_config():
    """The ConfigDict these flags describe (see the module docstring for the rules)."""
    cfg = _CONFIG.value
    overrides = config_flags.get_override_values(FLAGS["config"])
    if FLAGS["config"].present == 0 and FLAGS.dataset is not None:
        preset = configs.for_dataset(data.canonical_name(FLAGS.dataset)) \
            if not FLAGS.dataset.startswith(data.SOURCE_PREFIXES) else None
        if preset is not None:
            cfg = configs.load(preset)
            for path, value in overrides.items():
                _set(cfg, path, value)
    old_model = cfg.get("model")
    for flag, path in SHORT_FLAGS.items():
        value = getattr(FLAGS, flag)
        if value is not None:
            if flag in _DICT_FLAGS:
                value = _dict_flag(flag, value)
            _set(cfg, path, value)
    if cfg.get("model") != old_model:   # the config's options belong to the other network
        cfg.model_kwargs = {p[len("model_kwargs."):]: v for p, v in overrides.items()
                            if p.startswith("model_kwargs.")}
    _check_model_kwargs(cfg, overrides)
    return cfg


def usage() -> str:
    """What ``--help`` prints: how to call the command and the common flags, one line
    of text each (``--helpfull``: every flag)."""
    lines = [
        "lookahead-jax: look-ahead active learning with empirical neural tangent kernels "
        "(the same command as python -m experiments.main).",
        "",
        "Usage: lookahead-jax [--FLAG=VALUE ...] [--config=FILE] [--config.FIELD=VALUE ...]",
        "",
        "With no flags it runs the embedded default job (digits, a small MLP, random vs. "
        "MLMOC) on the CPU in about a minute. The defaults below are that job's; "
        "--dataset=NAME starts from that dataset's preset (the paper's setting) when it has "
        "one, and --config=FILE from the file's settings.",
        "",
        "Common flags:",
    ]
    for name in COMMON_FLAGS:
        flag = FLAGS[name]
        text = flag.help
        if name in ("workdir", "print_config", "config"):
            text = text.rstrip(".")
            text = text if "(default" in text else f"{text} (default {_shown(flag.default)})"
            text += "."
        lines += textwrap.wrap(text, 100, initial_indent=f"  --{name}: ",
                               subsequent_indent="      ")
    lines += ["", "Every setting is a config field: --config.FIELD=VALUE sets any of them, "
              "e.g. --config.train.momentum=0.5 or --config.model_kwargs.widths='(64, 64)'. "
              "--helpfull lists every flag."]
    return "\n".join(lines)


def summary_table(curves: Mapping[str, Sequence[dict]]) -> str:
    """A text table of test accuracy per cycle, one column per run."""
    names = list(curves)
    n = max(len(v) for v in curves.values())
    head = f"{'cycle':>5} {'labeled':>8} " + " ".join(f"{s:>16}" for s in names)
    lines = [head, "-" * len(head)]
    for c in range(n):
        first = next(v[c] for v in curves.values() if len(v) > c)
        cells = [(f"{100 * v[c]['test_accuracy']:15.2f}%" if v[c]["test_accuracy"] is not None
                  else f"{'n/a':>16}") if len(v) > c else " " * 16 for v in curves.values()]
        lines.append(f"{c + 1:>5} {first['num_labeled']:>8} " + " ".join(cells))
    return "\n".join(lines)


def _kept(workdir: Optional[str], names: Sequence[str]) -> str:
    """What survives an interrupted run, said truthfully."""
    if jax.distributed.is_initialized() and jax.process_index() != 0:
        return ("process 0 keeps the finished cycles in its --workdir; the same commands, "
                "on every process, resume from there")
    done = []
    for s in names or ():
        state = os.path.join(workdir or "", s, "state.json")
        if workdir and os.path.exists(state):
            done.append(s)
    if not done:
        return "no cycle had finished, so nothing is kept yet; the same command starts again"
    return (f"finished cycles are kept in {os.path.abspath(workdir)} ({', '.join(done)}); "
            "the same command resumes from there (after changing a setting, use a new "
            "--workdir)")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    _exit(code)


def _exit(code: int) -> None:
    """``sys.exit``; a process of a multi-process run leaves at once instead.

    JAX's shutdown at exit waits for every process (measured: ~5 min, then a C++ abort
    with a stack trace on each); leaving closes this process's connections, so the other
    processes' next collective fails at once and they say so in one line
    (:func:`_lost_peer`).
    """
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _lost_peer(e: BaseException) -> Optional[str]:
    """The one line for a collective of a multi-process run that failed because another
    process is gone (gloo on CPU raises ``ValueError: UNKNOWN: Gloo ... failed: ...
    Connection closed by peer``); ``None`` for any other error."""
    if not jax.distributed.is_initialized() or not (
            isinstance(e, jax.errors.JaxRuntimeError) or "Gloo" in str(e) or "NCCL" in str(e)):
        return None
    return (f"another process of the multi-process run stopped (this one's collective "
            f"failed: {str(e).splitlines()[0]}); see that process's output")


class _Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT, exit 130) or SIGTERM (a scheduler's stop or preemption, exit 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_RECEIVED: list[int] = []   # the signals that arrived, in order


def _on_signal(signum, frame) -> None:
    del frame
    _RECEIVED.append(signum)
    raise _Stopped(signum)


def _unraisable(hook):
    """``sys.unraisablehook`` that does not let a stop be swallowed: a signal whose
    exception was raised where Python can only print it (a garbage-collection callback
    such as JAX's ``_xla_gc_callback``, a ``__del__``) is sent again, so it lands in the
    run's own code at the next bytecode and stops the run (exit 130/143)."""
    def unraisable(info):
        if isinstance(info.exc_value, _Stopped):   # from a thread (not waited for): the
            # main thread handles it after the callback, at its next bytecode
            _thread.start_new_thread(os.kill, (os.getpid(), info.exc_value.signum))
            return
        hook(info)
    unraisable.stops_are_resent = True
    return unraisable


def _install_signals() -> None:
    """Ctrl-C and SIGTERM raise :class:`_Stopped` from here on (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    if not getattr(sys.unraisablehook, "stops_are_resent", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)


@contextlib.contextmanager
def _signals_win():
    """A signal's exception can surface as another one (raised while a pybind11 module is
    imported, it becomes ``ImportError: initialization failed``): once a signal has
    arrived, whatever escapes is the stop that signal asked for."""
    try:
        yield
    except BaseException as e:
        if _RECEIVED and not isinstance(e, (_Stopped, SystemExit)):
            raise _Stopped(_RECEIVED[-1]) from e
        raise


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    _install_signals()
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend chatter out of the table
    workdir: Optional[str] = None
    names: list[str] = []
    try:
        with _signals_win():
            cfg = build_config().to_dict()
            names = [s.strip() for s in str(cfg.pop("strategy")).split(",") if s.strip()]
            if not names:
                raise ValueError("--strategy is empty")
            config = loop.LoopConfig.from_dict({**cfg, "strategy": names[0]})
            if _PRINT.value:
                print(json.dumps({**config.to_dict(), "strategy": ",".join(names)}, indent=2,
                                 sort_keys=True))
                return
            if _PLAN.value:
                from lookahead_jax import plan
                plans = plan.plan_config(config)
                print(plan.format_plan(config, plans))
                plan.check_fits(config, plans)
                return
            workdir = _WORKDIR.value or os.path.join(
                "runs", f"{config.dataset}_{config.model}_seed{config.seed}")
            writes = loop.join(config)          # --distributed: only process 0 reports
            results = loop.run_strategies(config, names, workdir)
            if writes:                          # a signal while printing: still one line
                _report(results, workdir)
    except LabelsNeeded as e:                            # people answer first: not an error
        print(f"\n{e.instructions()}")
        if len(names) > 1:
            print(f"(strategies run in order: {', '.join(names)}; the others follow)")
        return
    except (ValueError, TypeError, ImportError) as e:   # bad input or a missing extra
        if _lost_peer(e):
            _fail(_lost_peer(e), 1)
        _fail(str(e), 2)
    except DistributedInitError as e:                   # --distributed: could not join
        _fail(str(e), 1)
    except FloatingPointError as e:                     # diverged training, bad scores
        _fail(f"{e}\n{_kept(workdir, names)}", 1)
    except OSError as e:                                # a full disk, a vanished folder
        where = f" ({e.filename})" if e.filename else ""
        _fail(f"cannot read or write the records{where}: {e.strerror or e}; nothing "
              f"half-written was left. {_kept(workdir, names)}", 1)
    except KeyboardInterrupt as e:                      # Ctrl-C, or SIGTERM
        signum = getattr(e, "signum", signal.SIGINT)
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"\n{word}: {_kept(workdir, names)}", file=sys.stderr)
        _exit(128 + int(signum))
    except Exception as e:                              # a bug: its traceback
        if not jax.distributed.is_initialized():
            raise
        if _lost_peer(e):
            _fail(_lost_peer(e), 1)
        traceback.print_exc()
        _exit(1)


def _report(results: Mapping[str, "loop.RunResult"], workdir: str) -> None:
    """The accuracy table and where the records and the plot are."""
    print()
    print(summary_table({s: r.metrics for s, r in results.items()}))
    for s, r in results.items():
        if r.stopped:
            print(f"{s}: stopped at cycle {r.stopped['cycle'] + 1} by {r.stopped['by']}")
    print(f"\nrecords: {os.path.abspath(workdir)}")
    print(f"plot:    {os.path.abspath(os.path.join(workdir, 'learning_curves.png'))}")


def _quiet_from_here() -> None:
    """Once the run has ended (its records are final), a signal during the interpreter's
    shutdown leaves quietly with its usual status instead of a traceback from wherever the
    shutdown was."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum, frame):
        del frame
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + int(signum))

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave)


_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with a bad flag (or config file) as one ``error:`` line and
    exit status 2; ``--help`` prints :func:`usage`."""
    args = list(argv[1:])
    if "--" in args:
        args = args[:args.index("--")]
    if any(a in _HELP_ARGS for a in args):
        print(usage())
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        cause = e.__context__
        _fail(f"{cause if isinstance(cause, ConfigFileError) else e}", 2)
    except (KeyError, AttributeError, TypeError, ValueError) as e:   # a --config.* override
        _fail(f"the --config overrides could not be applied ({type(e).__name__}: "
              f"{str(e).strip(chr(34))}); check the --config.FIELD=VALUE flags against "
              "--print_config", 2)


def run() -> None:
    """The console command's entry point (and ``python -m experiments.main``'s)."""
    _install_signals()          # a stop while the flags (and a config file) are read
    try:
        with _signals_win():
            app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt as e:                      # before main's own handler
        signum = getattr(e, "signum", signal.SIGINT)
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"\n{word}: nothing had started; the same command starts again",
              file=sys.stderr)
        _exit(128 + int(signum))
    finally:                   # SystemExit from app.run: the interpreter shuts down next
        _quiet_from_here()


if __name__ == "__main__":
    run()
