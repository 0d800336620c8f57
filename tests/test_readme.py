"""The README's examples run as written, and its public names exist."""

import importlib
import os
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(heading: str) -> list[str]:
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_library_example_runs():
    scope: dict = {}
    exec(compile(_python_blocks("## Use it as a library")[0], str(README), "exec"), scope)
    picked = np.asarray(scope["picked"])
    assert picked.shape == (20,) and np.unique(picked).size == 20
    assert picked.min() >= 0 and picked.max() < 1000


def test_own_model_example_runs(tmp_path, monkeypatch):
    """The NNX example of "Your own model", in an empty folder (it writes runs/...)."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_python_blocks("### Your own model")[0], str(README), "exec"), scope)
    result = scope["result"]
    assert [m["num_labeled"] for m in result.metrics] == [30, 40, 50]
    assert os.path.exists("runs/readme_nnx/metrics.jsonl")
    cfg = (tmp_path / "runs" / "readme_nnx" / "config.json").read_text()
    assert '"model": "Net"' in cfg


def test_every_public_name_resolves_to_its_module_and_is_documented():
    import lookahead_jax

    for name in lookahead_jax.__all__:
        obj = getattr(lookahead_jax, name)
        if name in lookahead_jax._MODULES:
            assert obj is importlib.import_module(f"lookahead_jax.{name}")
            continue
        module = importlib.import_module(f"lookahead_jax.{lookahead_jax._NAMES[name]}")
        assert obj is getattr(module, name), name
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def _section(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end]


def test_strategy_table_is_the_registry():
    """"`strategies.names()` lists these strategies; each one is also a valid
    `--strategy`": the table's first column is exactly the registry."""
    from lookahead_jax import strategies

    rows = [line for line in _section("### Strategies").splitlines()
            if line.startswith("| `")]
    listed = [n for row in rows for n in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(strategies.names())
    for name in listed:                                   # typed options, per the README
        assert strategies.get(name).options is not None, name


def test_library_section_names_exist_and_are_documented():
    """Every `module.name` the library section mentions (``ntk.kernel_set``,
    ``lookahead.add_labeled``, ``rng.key``, ...) exists in that module, documented."""
    import lookahead_jax

    mentioned = set(re.findall(r"`(\w+)\.(\w+)[(`]", _section("## Use it as a library")))
    mentioned = {(m, n) for m, n in mentioned if m in lookahead_jax._MODULES}
    assert len(mentioned) >= 12, mentioned
    for module, name in sorted(mentioned):
        obj = getattr(importlib.import_module(f"lookahead_jax.{module}"), name, None)
        assert obj is not None, f"README names {module}.{name}, which does not exist"
        assert (obj.__doc__ or "").strip(), f"{module}.{name} has no docstring"

