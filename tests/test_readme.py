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
