"""Active learning on a user's own data, labeled by people through files.

A folder of PNGs and tabular ``.npz`` pools run from the command line; the tests play the
person who writes the label files between runs.
"""

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image

from lookahead_jax import data, loop, oracles, records, run_setup, train

CLASSES = ("circle", "cross", "line")


def _image(k: int, rng, size: int = 8) -> np.ndarray:
    """A learnable picture of class k: a bright row band, column band or diagonal."""
    img = rng.uniform(0, 60, (size, size))
    if k == 0:
        img[size // 2 - 1:size // 2 + 1, :] += 180
    elif k == 1:
        img[:, size // 2 - 1:size // 2 + 1] += 180
    else:
        img[np.arange(size), np.arange(size)] += 180
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """3 classes with 8 labeled PNGs each, 45 unlabeled (their truth kept aside), a test
    split; a few images are 10×10 (resized to the common 8×8)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pictures"
    truth = {}
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        (root / "test" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(_image(k, rng, 10 if i == 0 else 8)).save(root / name / f"{i}.png")
        for i in range(6):
            Image.fromarray(_image(k, rng)).save(root / "test" / name / f"{i}.png")
    (root / "unlabeled").mkdir()
    for i in range(45):
        k = i % 3
        rel = f"unlabeled/u{i:02d}.png"
        Image.fromarray(_image(k, rng)).save(root / rel)
        truth[rel] = CLASSES[k]
    return root, truth


def test_folder_loader(image_folder):
    root, _ = image_folder
    ds = data.load_dataset(f"folder:{root}")
    assert ds.x_train.shape == (24 + 45, 8, 8, 1) and ds.x_test.shape == (18, 8, 8, 1)
    assert ds.class_names == CLASSES and ds.num_classes == 3
    assert int(ds.given.sum()) == 24 and np.all(ds.y_train[~ds.given] == -1)
    assert ds.items[0] == "circle/0.png" and ds.items[-1] == "unlabeled/u44.png"
    # normalised with the pool's statistics: mean 0, std 1 over the pool
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4


def _answer(request: Path, answer: Path, truth: dict) -> list:
    rows = list(csv.DictReader(request.open()))
    assert rows and set(rows[0]) == {"index", "item"}
    with answer.open("w") as fh:
        fh.write("index,label\n")
        for r in rows:
            fh.write(f"{r['index']},{truth[r['item']]}\n")
    return [int(r["index"]) for r in rows]


def _snapshot(workdir: Path) -> dict:
    return {f: (workdir / f).read_bytes() for f in ("labels.jsonl", "queries.jsonl",
                                                    "metrics.jsonl", "state.json")
            if (workdir / f).exists()}


def test_folder_with_the_files_oracle_for_three_cycles(image_folder, tmp_path):
    root, truth = image_folder
    work = tmp_path / "work"
    args = (f"--dataset=folder:{root}", "--oracle=files", "--strategy=mlmoc", "--cycles=3",
            "--query_size=5", "--subset_size=20", "--epochs=5", "--batch_size=8",
            f"--workdir={work}")
    run_dir = work / "mlmoc"
    answered = []
    for cycle in range(2):
        out = cli(*args)
        assert out.returncode == 0, out.stderr[-3000:]
        request = run_dir / "to_label" / f"cycle_{cycle}.csv"
        assert str(request) in out.stdout and "index,label" in out.stdout
        answer = run_dir / "labels" / f"cycle_{cycle}.csv"
        if cycle == 1:   # a malformed file first: refused, and nothing changes
            before = _snapshot(run_dir)
            answer.write_text("index,label\n" + "".join(
                f"{r['index']},triangle\n" for r in csv.DictReader(request.open())))
            bad = cli(*args)
            assert bad.returncode == 2 and "Traceback" not in bad.stderr
            assert "unknown class 'triangle'; classes: circle, cross, line" in bad.stderr
            assert _snapshot(run_dir) == before
        answered += _answer(request, answer, truth)
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cycle 3/3" in done.stdout
    ledger = records.read_jsonl(str(run_dir / "labels.jsonl"))
    given = [r["index"] for r in ledger if r["source"] == "given"]
    asked = [r["index"] for r in ledger if r["source"] == "oracle"]
    assert len(given) == 24 and sorted(asked) == sorted(answered) and len(asked) == 10
    ds = data.load_dataset(f"folder:{root}")
    for r in ledger:
        if r["source"] == "oracle":
            assert CLASSES[r["label"]] == truth[ds.items[r["index"]]]
    metrics = records.read_jsonl(str(run_dir / "metrics.jsonl"))
    assert [m["num_labeled"] for m in metrics] == [24, 29, 34]


def _tabular_npz(path: Path, known: float, with_truth: bool):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    keep = rng.uniform(size=150) < known
    y_known = np.where(keep, y, -1)
    arrays = dict(x=x, y=y_known, class_names=np.array(["a", "b", "c"]))
    if with_truth:
        arrays["y_true"] = y
    np.savez(path, **arrays)
    return y


@pytest.mark.parametrize("strategy", ["mlmoc", "badge"])
def test_tabular_npz_without_test_split_simulated(strategy, tmp_path):
    _tabular_npz(tmp_path / "pool.npz", known=0.0, with_truth=True)
    out = cli(f"--dataset=npz:{tmp_path / 'pool.npz'}", f"--strategy={strategy}",
              "--cycles=3", "--initial_size=20", "--query_size=10", "--subset_size=60",
              "--epochs=5", "--batch_size=8", f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = records.read_jsonl(str(tmp_path / "w" / strategy / "metrics.jsonl"))
    assert [m["num_labeled"] for m in metrics] == [20, 30, 40]
    assert all(m["test_accuracy"] is None for m in metrics) and "n/a" in out.stdout


def test_tabular_npz_with_unknown_labels_and_the_files_oracle(tmp_path):
    truth = _tabular_npz(tmp_path / "pool.npz", known=0.15, with_truth=False)
    args = (f"--dataset=npz:{tmp_path / 'pool.npz'}", "--strategy=mlmoc,badge", "--cycles=3",
            "--query_size=6", "--subset_size=40", "--epochs=5", "--batch_size=8",
            "--oracle=files", f"--workdir={tmp_path / 'w'}")
    simulated = cli(*args[:-2], f"--workdir={tmp_path / 'sim'}")
    assert simulated.returncode == 2 and "--oracle=files" in simulated.stderr
    for _ in range(10):
        out = cli(*args)
        assert out.returncode == 0, out.stderr[-3000:]
        if "to label" not in out.stdout:
            break
        request = Path(out.stdout.split("listed in ")[1].split("\n")[0])
        with request.with_name(request.name).open() as fh:
            rows = list(csv.DictReader(fh))
        answer = request.parent.parent / "labels" / request.name
        answer.write_text("index,label\n" + "".join(
            f"{r['index']},{'abc'[truth[int(r['index'])]]}\n" for r in rows))
    for s in ("mlmoc", "badge"):
        metrics = records.read_jsonl(str(tmp_path / "w" / s / "metrics.jsonl"))
        n0 = metrics[0]["num_labeled"]
        assert [m["num_labeled"] for m in metrics] == [n0, n0 + 6, n0 + 12]
        ledger = records.read_jsonl(str(tmp_path / "w" / s / "labels.jsonl"))
        for r in ledger:
            assert r["label"] == truth[r["index"]]


def test_from_arrays_scales_uint8_and_checks_labels():
    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    ds = data.from_arrays(x, np.r_[np.zeros(10, int), np.ones(10, int)])
    assert ds.x_train.dtype == np.float32 and abs(float(ds.x_train.mean())) < 1e-5
    with pytest.raises(ValueError, match=r"y and y_true disagree at pool item 1 \(1 vs 0\)"):
        data.from_arrays(x, np.r_[[0, 1, 0, 1], -np.ones(16, int)], y_true=np.zeros(20, int))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        data.from_arrays(x, np.zeros(20, int))
    with pytest.raises(ValueError, match="y must hold integer labels"):
        data.from_arrays(x, np.full(20, 0.5))
    json.dumps(run_setup.pool_info(ds))


def test_sequential_mode_with_files_asks_one_item_at_a_time(tmp_path):
    """--sequential with the files oracle: every request holds one item, the next item is
    asked only once the previous answer is on disk, and the answered items are exactly the
    ones the simulated run (same seed, the true labels) picks in the same order."""
    truth = _tabular_npz(tmp_path / "pool.npz", known=0.2, with_truth=False)
    pool = data.load_dataset(f"npz:{tmp_path / 'pool.npz'}")
    cfg = loop.LoopConfig(dataset=f"npz:{tmp_path / 'pool.npz'}", strategy="mlmoc",
                          sequential=True, cycles=2, query_size=3, subset_size=30,
                          oracle="files", train=train.TrainConfig(epochs=4, batch_size=8))
    work = str(tmp_path / "w")
    asked = []
    for _ in range(6):
        try:
            result = loop.run(cfg, work, dataset=pool, log=lambda s: None)
            break
        except oracles.LabelsNeeded as need:
            assert need.count == 1
            tag = os.path.basename(need.request)[:-len(".csv")]
            assert tag == f"cycle_0_step_{len(asked)}"
            with open(need.request) as fh:
                rows = list(csv.DictReader(fh))
            assert len(rows) == 1
            i = int(rows[0]["index"])
            asked.append(i)
            with open(need.answer, "w") as fh:
                fh.write(f"index,label\n{i},{'abc'[truth[i]]}\n")
    else:
        pytest.fail("the run kept asking after query_size answers")
    assert len(asked) == 3 == len(set(asked))
    assert result.metrics[1]["num_labeled"] == result.metrics[0]["num_labeled"] + 3
    ledger = records.read_jsonl(os.path.join(work, "labels.jsonl"))
    oracle_rows = [r for r in ledger if r["source"] == "oracle"]
    assert [r["index"] for r in oracle_rows] == asked
    assert all(r["label"] == truth[r["index"]] for r in ledger)
    # the same choices as a run told the true labels at once (answers change nothing else)
    sim = dataclasses.replace(cfg, oracle="simulated")
    loop.run(sim, str(tmp_path / "sim"), dataset=pool._replace(
        y_train=np.where(pool.y_train >= 0, pool.y_train, truth).astype(pool.y_train.dtype)), log=lambda s: None)
    ref_ledger = records.read_jsonl(str(tmp_path / "sim" / "labels.jsonl"))
    assert [r["index"] for r in ref_ledger if r["source"] == "oracle"] == asked
