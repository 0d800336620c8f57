"""The loop's state is one pytree, its steps are pure, and a run is set up once.

``run_cycle(setup, state) -> (state, row)`` leaves its arguments as they were; a
strategy run goes through :func:`~lookahead_jax.run_setup.setup` and
:func:`~lookahead_jax.config.validate_config` once (counted with ``mock`` wrappers);
no function of the loop's modules returns a tuple of more than three (read with ``ast``).
"""

import ast
import copy
from pathlib import Path
from unittest import mock

import jax
import numpy as np
from conftest import loop_config

from lookahead_jax import config, loop, run_setup
from lookahead_jax.resume import open_run
from lookahead_jax.state import LoopState
from lookahead_jax.workdir import Workdir

LOOP_MODULES = ("loop", "config", "state", "run_setup", "resume", "oracles", "records",
                "plots", "workdir", "stopping", "options", "registry", "labeler",
                "distributed", "strategies/options", "strategies/registry",
                "strategies/base")


def _quiet(line):
    del line


def test_setup_and_validation_run_once_per_strategy_run(tiny_dataset):
    cfg = loop_config("random", epochs=1, cycles=1)
    with mock.patch.object(loop, "setup", wraps=run_setup.setup) as setup, \
            mock.patch.object(run_setup, "validate_config",
                              wraps=config.validate_config) as validate, \
            mock.patch.object(loop, "join", wraps=loop.join) as join:
        loop.run_strategies(cfg, ["random", "entropy"], None, dataset=tiny_dataset,
                            log=_quiet)
        assert (setup.call_count, validate.call_count, join.call_count) == (2, 2, 1)


def test_run_cycle_returns_a_new_state_and_leaves_its_arguments_alone(tiny_dataset):
    cfg = loop_config("entropy", epochs=1, cycles=3, stop="budget",
                      stop_options={"budget": {"max_labels": 1000}})
    with Workdir.open(None) as wd:
        run_, state = open_run(run_setup.setup(cfg, None, dataset=tiny_dataset), wd, _quiet)
        assert isinstance(state, LoopState) and state.cycle == 0 and state.pending is None
        leaves = [np.asarray(x).copy() for x in jax.tree.leaves(state)]
        memory, queries = copy.deepcopy(state.memory), state.queries
        trained = loop.train_cycle(run_, state)
        pending = copy.deepcopy(trained.pending)
        new, row = loop.run_cycle(run_, trained)
    # the pytree's leaves are the pool ledger (mask, labels) and the network
    assert len(leaves) == 2 + len(jax.tree.leaves(state.variables))
    for before, now in zip(leaves, jax.tree.leaves(state)):
        np.testing.assert_array_equal(before, now)
    assert state.memory == memory and state.queries == queries and state.cycle == 0
    assert trained.pending == pending and "stop_budget" not in pending["row"]
    assert new.cycle == 1 and new.pending is None and len(new.queries) == 1
    added = np.flatnonzero(new.pool.labeled & ~state.pool.labeled)
    assert sorted(new.queries[0]["indices"]) == added.tolist()
    assert added.size == cfg.query_size
    assert row["cycle"] == 0 and "stop_budget" in row and "budget" in new.memory


def test_no_function_of_the_loop_returns_a_tuple_of_more_than_three():
    root = Path(__file__).resolve().parents[1] / "lookahead_jax"
    wide = []
    for name in LOOP_MODULES:
        path = root / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and \
                    len(node.value.elts) > 3:
                wide.append(f"{name}.py:{node.lineno}")
    assert not wide, wide
