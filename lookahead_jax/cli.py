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

Bad input is one ``error:`` line on stderr with exit status 2, before any training; a
diverged run exits 1 saying where its finished cycles are; Ctrl-C exits 130, likewise. With
``--distributed`` a process that cannot join the others says so in one line and exits 1;
a process that fails after joining leaves at once (not through JAX's shutdown, which
would wait for the others), and the others, whose next collective then fails, say so in
one line and exit 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import traceback
import typing
from typing import Mapping, Optional, Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lookahead_jax import configs, data, loop, train
from lookahead_jax.distributed import DistributedInitError
from lookahead_jax.oracles import LabelsNeeded

FLAGS = flags.FLAGS

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path("default"), "a config file (get_config() -> ConfigDict); "
    "override its fields with --config.<field>=value", lock_config=False,
    accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "output folder (default runs/<dataset>_<model>_seed<seed>); an "
    "existing one is resumed")

_PRINT = flags.DEFINE_bool(
    "print_config", False, "print the resolved run settings as JSON and exit (runs nothing)")

_PLAN = flags.DEFINE_bool(
    "plan", False, "print per cycle the kernel and look-ahead FLOPs, peak memory, estimated "
    "seconds on this device and whether it fits (lookahead_jax.plan); trains nothing")

_NOT_SHORT = ("model_kwargs", "strategy_options", "train")


def field_docs(cls) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a dataclass's docstring."""
    docs, name = {}, None
    section = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    for line in section.splitlines():
        m = re.match(r"^\s{6}([\w, ]+):\s*(.*)$", line)
        if m:
            names = [n.strip() for n in m.group(1).split(",")]
            for n in names:
                docs[n] = m.group(2)
            name = names
        elif name and line.strip():
            for n in name:
                docs[n] += " " + line.strip()
    return {k: re.sub(r"``", "", v) for k, v in docs.items()}


def _define(name: str, tp, help_text: str) -> None:
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = inner[0] if inner else tp
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
              float: flags.DEFINE_float}.get(tp, flags.DEFINE_string)
    define(name, None, help_text)


def _short_flags() -> dict[str, str]:
    """Defines one flag per config field; returns ``{flag: config path}``."""
    out = {}
    for cls, prefix in ((loop.LoopConfig, ""), (train.TrainConfig, "train.")):
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in _NOT_SHORT:
                continue
            _define(f.name, hints[f.name], f"{docs.get(f.name, f.name)} (config field "
                                           f"{prefix}{f.name})")
            out[f.name] = prefix + f.name
    return out


SHORT_FLAGS = _short_flags()


def _set(cfg, path: str, value) -> None:
    """``cfg.<path> = value`` for a dotted path (adds the key if needed)."""
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value


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
    old_model = cfg.model
    for flag, path in SHORT_FLAGS.items():
        value = getattr(FLAGS, flag)
        if value is not None:
            _set(cfg, path, value)
    if cfg.model != old_model:   # the config's options belong to the other network
        cfg.model_kwargs = {p[len("model_kwargs."):]: v for p, v in overrides.items()
                            if p.startswith("model_kwargs.")}
    return cfg


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


@contextlib.contextmanager
def _signals_win():
    """A signal's exception can surface as another one (raised while a pybind11 module is
    imported, it becomes ``ImportError: initialization failed``): once a signal has
    arrived, whatever escapes is the stop that signal asked for."""
    try:
        yield
    except BaseException as e:
        if _RECEIVED and not isinstance(e, _Stopped):
            raise _Stopped(_RECEIVED[-1]) from e
        raise


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend chatter out of the table
    workdir: Optional[str] = None
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


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with a bad flag as one ``error:`` line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}", 2)


def run() -> None:
    """The console command's entry point (and ``python -m experiments.main``'s)."""
    try:
        app.run(main, flags_parser=parse_flags)
    finally:                   # SystemExit from app.run: the interpreter shuts down next
        _quiet_from_here()


if __name__ == "__main__":
    run()
