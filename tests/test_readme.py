"""The README's library example runs as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs():
    text = README.read_text()
    section = text[text.index("## Use it as a library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    picked = np.asarray(scope["picked"])
    assert picked.shape == (20,) and np.unique(picked).size == 20
    assert picked.min() >= 0 and picked.max() < 1000


def test_every_public_name_resolves_and_is_documented():
    import lookahead_jax

    for name in lookahead_jax.__all__:
        obj = getattr(lookahead_jax, name)
        assert obj is not None
        if callable(obj) and not isinstance(obj, type(lookahead_jax)):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
