"""The Label Studio oracle against a real Label Studio server.

The server (``label-studio`` from PyPI, in its own venv: it does not share the pinned one)
is started once for this module on 127.0.0.1 with its own scratch data folder and SQLite
database; the tests answer through its HTTP API as a person's annotations arrive.
``LOOKAHEAD_LABEL_STUDIO`` names its ``label-studio`` executable; unset, the module is
skipped (``.ci/run``'s third step sets it, and a skip there fails the step).
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from lookahead_jax import label_studio, records

ENV = "LOOKAHEAD_LABEL_STUDIO"
pytestmark = pytest.mark.skipif(
    not os.environ.get(ENV), reason=f"{ENV} is not set (the path of a label-studio "
    "executable in its own venv; .ci/run's third step sets it)")

CLASSES = ("circle", "cross", "line")
START_TIMEOUT_S = 600          # first start migrates the SQLite database (~1 min idle)


# ----------------------------------------------------------------------------- the server


class Server:
    """A running Label Studio: its URL, the token, the document root for local files."""

    def __init__(self, url, token, root, log):
        self.url, self.token, self.root, self.log = url, token, root, log

    def api(self, method, path, body=None, query=None):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(
            url, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get_bytes(self, path):
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Token {self.token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read()

    def project(self, title):
        got = self.api("GET", "/api/projects/", query={"title": title, "page_size": 100})
        found = [p for p in got["results"] if p["title"] == title]
        assert len(found) == 1, f"{len(found)} projects titled {title!r}"
        return found[0]

    def tasks(self, title):
        pid = self.project(title)["id"]
        got = self.api("GET", "/api/tasks/", query={
            "project": pid, "fields": "all", "resolve_uri": "false", "page_size": 1000})
        return sorted(got["tasks"], key=lambda t: t["id"])

    def annotate(self, task, choice, ground_truth=False):
        kind = "image" if "image" in task["data"] else "text"
        return self.api("POST", f"/api/tasks/{task['id']}/annotations/", {
            "result": [{"from_name": "label", "to_name": kind, "type": "choices",
                        "value": {"choices": [choice]}}], "ground_truth": ground_truth})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exe = os.environ[ENV]
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"{ENV}={exe} is not an executable label-studio")
    scratch = tmp_path_factory.mktemp("label_studio")
    root = scratch / "files"
    root.mkdir()
    port, token = _free_port(), "lookahead-test-" + secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(scratch / "data"),
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(root),
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               LABEL_STUDIO_LATEST_VERSION_CHECK="false",
               LABEL_STUDIO_COLLECT_ANALYTICS="false")
    log = scratch / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
             str(port), "--username", "annotator@example.com",
             "--password", secrets.token_hex(8), "--user-token", token],
            env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=scratch,
            start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", token, root, log)
    deadline = time.time() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited ({proc.returncode}) at start:\n"
                            + log.read_text()[-3000:])
            try:
                srv.api("GET", "/api/projects/")
                break
            except (urllib.error.URLError, OSError, ValueError):
                if time.time() > deadline:
                    pytest.fail(f"label-studio did not answer within {START_TIMEOUT_S} s:\n"
                                + log.read_text()[-3000:])
                time.sleep(1)
        yield srv
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ----------------------------------------------------------------------------- pools


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


def _image_pool(folder: Path) -> dict:
    """3 classes with 4 labeled PNGs each and 30 unlabeled; ``{item: class name}``."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(_image(k, rng)).save(folder / name / f"{i}.png")
    (folder / "unlabeled").mkdir()
    truth = {}
    for i in range(30):
        rel = f"unlabeled/u{i:02d}.png"
        Image.fromarray(_image(i % 3, rng)).save(folder / rel)
        truth[rel] = CLASSES[i % 3]
    return truth


def _table_pool(path: Path) -> np.ndarray:
    """90 rows of 5 features, 3 classes, 12 labels known; the complete labels."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    y_known = np.full(90, -1)
    y_known[:12] = y[:12]
    np.savez(path, x=x, y=y_known, class_names=np.array(CLASSES),
             items=np.array([f"row-{i:03d}" for i in range(90)]))
    return y


@pytest.fixture(params=["images", "table"])
def pool(request, server, tmp_path):
    """``(dataset flag, truth(task data) -> class name, raw bytes/values check)``."""
    name = f"{request.param}-{secrets.token_hex(3)}"
    if request.param == "images":
        folder = server.root / name / "pictures"
        truth = _image_pool(folder)
        return f"folder:{folder}", lambda data: truth[data["item"]], folder
    y = _table_pool(tmp_path / "pool.npz")
    return (f"npz:{tmp_path / 'pool.npz'}",
            lambda data: CLASSES[y[data["lookahead_index"]]], None)


# ----------------------------------------------------------------------------- runs


def _env(server, title, wait=0.0):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update(PYTHONUNBUFFERED="1", LABEL_STUDIO_URL=server.url,
               LABEL_STUDIO_API_KEY=server.token, LABEL_STUDIO_PROJECT=title,
               LABEL_STUDIO_WAIT=str(wait), LABEL_STUDIO_POLL="0.3",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(server.root))
    return env


def _cli(args, env, outputs, background=False):
    cmd = dict(args=[sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=env,
               text=True)
    if background:
        return subprocess.Popen(**cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = subprocess.run(**cmd, capture_output=True, timeout=900)
    outputs.append(out.stdout + out.stderr)
    return out


def _mine(server, title, workdir):
    """This run's tasks (``label_studio.json`` names its run id)."""
    run = records.read_json(str(workdir / label_studio.RECORD))["run"]
    return [t for t in server.tasks(title) if t["data"].get("lookahead_run") == run]


def _wait_for(cond, timeout, what, proc=None):
    deadline = time.time() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {what}:\n"
                        + proc.stderr.read()[-3000:])
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.3)


def _no_token(server, workdir: Path, outputs):
    """The token is in no file the run wrote and in none of its output."""
    token = server.token.encode()
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert any(p.name == label_studio.RECORD for p in files)
    for p in files:
        assert token not in p.read_bytes(), f"the token is written in {p}"
    for text in outputs:
        assert server.token not in text


def _snapshot(workdir: Path) -> dict:
    return {f: (workdir / f).read_bytes() for f in ("labels.jsonl", "queries.jsonl",
                                                    "metrics.jsonl", "state.json")
            if (workdir / f).exists()}


def test_three_cycles_through_label_studio_with_a_resume(server, pool, tmp_path):
    """Cycle 0's request is answered while the run is away (it exited 0), one bad
    annotation is refused in one line, the run is killed while cycle 1's tasks are out,
    and the resumed run imports nothing twice; the ledger holds what was annotated."""
    dataset, truth, folder = pool
    title = f"test {tmp_path.name}"[:50]
    work = tmp_path / "work"
    args = (f"--dataset={dataset}", "--oracle=label_studio", "--strategy=entropy",
            "--cycles=3", "--query_size=4", "--subset_size=16", "--epochs=3",
            "--batch_size=8", "--config.model_kwargs.widths=(16,)", f"--workdir={work}")
    run_dir, outputs = work / "entropy", []

    first = _cli(args, _env(server, title), outputs)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"4 of 4 items to label in Label Studio: project {title!r}" in first.stdout
    tasks = _mine(server, title, run_dir)
    assert [t["data"]["lookahead_request"] for t in tasks] == ["cycle_0"] * 4
    if folder is not None:     # the picture, served by the server's local-files serving
        t = tasks[0]
        assert server.get_bytes(t["data"]["image"]) == (folder / t["data"]["item"]).read_bytes()
    else:
        values = json.loads(tasks[0]["data"]["text"].split("\n", 1)[1])
        x = np.load(dataset[len("npz:"):])["x"][tasks[0]["data"]["lookahead_index"]]
        np.testing.assert_allclose(values, x, rtol=1e-5)   # %.6g: 6 significant digits

    answered = {}
    for t in tasks[1:]:
        server.annotate(t, truth(t["data"]))
        answered[t["data"]["lookahead_index"]] = truth(t["data"])
    bad = server.annotate(tasks[0], "triangle")
    before = _snapshot(run_dir)
    refused = _cli(args, _env(server, title), outputs)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and f"task {tasks[0]['id']}" in line
    assert f"annotation {bad['id']} chose 'triangle', not one of the classes " \
           "circle, cross, line" in line
    assert _snapshot(run_dir) == before
    server.api("PATCH", f"/api/annotations/{bad['id']}/", {"result": [
        {**bad["result"][0], "value": {"choices": [truth(tasks[0]["data"])]}}]})
    answered[tasks[0]["data"]["lookahead_index"]] = truth(tasks[0]["data"])

    # the run waits (polling) for cycle 1's tasks, and is killed while they are out
    waiting = _cli(args, _env(server, title, wait=600), outputs, background=True)
    try:
        cycle1 = _wait_for(lambda: [t for t in _mine(server, title, run_dir)
                                    if t["data"]["lookahead_request"] == "cycle_1"],
                           600, "cycle 1's tasks", waiting)
        time.sleep(1.0)                          # the run is polling now
    finally:
        waiting.kill()
        out, err = waiting.communicate()
        outputs.append(out + err)
    assert len(cycle1) == 4 and "waiting up to 600 s for 4 of 4 labels" in out
    for t in cycle1:
        server.annotate(t, truth(t["data"]))
        answered[t["data"]["lookahead_index"]] = truth(t["data"])

    done = _cli(args, _env(server, title), outputs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cycle 3/3" in done.stdout
    tasks = _mine(server, title, run_dir)
    keys = [(t["data"]["lookahead_request"], t["data"]["lookahead_index"]) for t in tasks]
    assert len(keys) == 8 == len(set(keys)), "a task was imported twice"
    ledger = records.read_jsonl(str(run_dir / "labels.jsonl"))
    asked = {r["index"]: CLASSES[r["label"]] for r in ledger if r["source"] == "oracle"}
    assert asked == answered
    metrics = records.read_jsonl(str(run_dir / "metrics.jsonl"))
    n0 = metrics[0]["num_labeled"]
    assert [m["num_labeled"] for m in metrics] == [n0, n0 + 4, n0 + 8]
    _no_token(server, work, outputs)


def test_sequential_mode_asks_one_task_at_a_time(server, tmp_path):
    """--sequential: while the run waits, at most one of its tasks is unanswered; the
    test answers each as it appears, and the 5 answers are the ledger's."""
    y = _table_pool(tmp_path / "pool.npz")
    title = f"test {tmp_path.name}"[:50]
    work = tmp_path / "work"
    args = (f"--dataset=npz:{tmp_path / 'pool.npz'}", "--oracle=label_studio",
            "--strategy=mlmoc", "--sequential", "--cycles=2", "--query_size=5",
            "--subset_size=20", "--epochs=3", "--batch_size=8",
            "--config.model_kwargs.widths=(16,)", f"--workdir={work}")
    outputs, answered = [], []
    proc = _cli(args, _env(server, title, wait=600), outputs, background=True)
    try:
        while len(answered) < 5:
            open_ = _wait_for(lambda: [t for t in _mine_or_none(server, title, work / "mlmoc")
                                       if not t["annotations"]] or None,
                              600, f"task {len(answered) + 1}", proc)
            assert len(open_) == 1, f"{len(open_)} tasks out at once"
            t = open_[0]
            assert t["data"]["lookahead_request"] == f"cycle_0_step_{len(answered)}"
            server.annotate(t, CLASSES[y[t["data"]["lookahead_index"]]])
            answered.append(t["data"]["lookahead_index"])
        out, err = proc.communicate(timeout=600)
        outputs.append(out + err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "cycle 2/2" in out
    assert len(_mine(server, title, work / "mlmoc")) == 5 == len(set(answered))
    ledger = records.read_jsonl(str(work / "mlmoc" / "labels.jsonl"))
    rows = [r for r in ledger if r["source"] == "oracle"]
    assert [r["index"] for r in rows] == answered
    assert all(r["label"] == y[r["index"]] for r in rows)
    _no_token(server, work, outputs)


def _mine_or_none(server, title, workdir):
    if not (workdir / label_studio.RECORD).exists():
        return []
    try:
        return _mine(server, title, workdir)
    except AssertionError:          # the project is not made yet
        return []


# ----------------------------------------------------------------------------- checks


@pytest.fixture
def oracle(server, tmp_path, monkeypatch):
    monkeypatch.setenv(label_studio.ENV_TOKEN, server.token)
    settings = label_studio.Settings(url=server.url, project=f"checks {tmp_path.name}"[:50])
    return label_studio.LabelStudioOracle(settings, str(tmp_path / "w"),
                                          [f"item-{i}" for i in range(12)], ["a", "b", "c"],
                                          log=lambda s: None)


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


def test_disagreement_deleted_task_and_unasked_annotation(server, oracle):
    title = oracle.settings.project
    with pytest.raises(label_studio.LabelStudioLabelsNeeded) as need:
        oracle.ask(np.array([3, 8]), "cycle_0")
    assert need.value.waiting == 2 and need.value.count == 2
    t3, t8 = sorted(server.tasks(title), key=lambda t: t["data"]["lookahead_index"])
    assert (t3["data"]["item"], t3["data"]["text"]) == ("item-3", "item-3")

    # two annotators disagree: refused, naming both; a ground-truth annotation settles it
    server.annotate(t3, "a")
    b = server.annotate(t3, "b")
    server.annotate(t8, "c")
    with pytest.raises(label_studio.LabelStudioError) as e:
        oracle.ask(np.array([3, 8]), "cycle_0")
    _one_line(e, f"task {t3['id']}", "pool item 3", "the annotators disagree", "'a'", "'b'")
    server.api("PATCH", f"/api/annotations/{b['id']}/", {"ground_truth": True})
    np.testing.assert_array_equal(oracle.ask(np.array([8, 3]), "cycle_0"), [2, 1])
    assert len(server.tasks(title)) == 2                       # nothing imported again

    # a task deleted in the tool: one line, and the next ask makes a new task
    with pytest.raises(label_studio.LabelStudioLabelsNeeded):
        oracle.ask(np.array([5]), "cycle_1")
    (t5,) = [t for t in server.tasks(title) if t["data"]["lookahead_index"] == 5]
    server.api("DELETE", f"/api/tasks/{t5['id']}/")
    with pytest.raises(label_studio.LabelStudioError) as e:
        oracle.ask(np.array([5]), "cycle_1")
    _one_line(e, "pool item 5", "request cycle_1", "was deleted in the tool")
    with pytest.raises(label_studio.LabelStudioLabelsNeeded):
        oracle.ask(np.array([5]), "cycle_1")
    (t5,) = [t for t in server.tasks(title) if t["data"]["lookahead_index"] == 5]
    server.annotate(t5, "a")

    # an annotated task this run never asked for (its keys, another item): refused
    run = records.read_json(os.path.join(oracle.workdir, label_studio.RECORD))["run"]
    pid = server.project(title)["id"]
    got = server.api("POST", f"/api/projects/{pid}/import", [{"data": {
        "text": "item-9", "item": "item-9", "lookahead_run": run,
        "lookahead_request": "cycle_1", "lookahead_index": 9}}],
        query={"return_task_ids": "true"})
    stray = {"id": got["task_ids"][0], "data": {"text": "item-9"}}
    server.annotate(stray, "b")
    with pytest.raises(label_studio.LabelStudioError) as e:
        oracle.ask(np.array([5]), "cycle_1")
    _one_line(e, f"task {stray['id']}", "pool item 9", "never asked for it")
    server.api("DELETE", f"/api/tasks/{stray['id']}/")
    np.testing.assert_array_equal(oracle.ask(np.array([5]), "cycle_1"), [0])

    # a task someone added by hand and annotated: refused too
    got = server.api("POST", f"/api/projects/{pid}/import", [{"data": {"text": "mine"}}],
                     query={"return_task_ids": "true"})
    server.annotate({"id": got["task_ids"][0], "data": {"text": "mine"}}, "c")
    with pytest.raises(label_studio.LabelStudioError) as e:
        oracle.ask(np.array([6]), "cycle_2")
    _one_line(e, f"task {got['task_ids'][0]}", "no run asked for it")
    assert server.token not in Path(oracle.workdir, label_studio.RECORD).read_text()


def test_project_reused_by_title_only_with_the_same_classes(server, oracle, tmp_path):
    with pytest.raises(label_studio.LabelStudioLabelsNeeded):
        oracle.ask(np.array([1]), "initial")
    other = label_studio.LabelStudioOracle(oracle.settings, str(tmp_path / "w2"),
                                           oracle.items, ["x", "y"])
    with pytest.raises(label_studio.LabelStudioError) as e:
        other.find_project()
    _one_line(e, "asks for a, b, c on text items", "needs one of x, y",
              label_studio.ENV_PROJECT)
    bad = label_studio.Settings(url=server.url, project=oracle.settings.project,
                                token_env="LOOKAHEAD_TEST_WRONG_TOKEN")
    os.environ["LOOKAHEAD_TEST_WRONG_TOKEN"] = "not-the-token"
    try:
        with pytest.raises(label_studio.LabelStudioError) as e:
            label_studio.LabelStudioOracle(bad, str(tmp_path / "w3"), oracle.items,
                                           ["a", "b", "c"]).find_project()
    finally:
        del os.environ["LOOKAHEAD_TEST_WRONG_TOKEN"]
    _one_line(e, "refused the token in LOOKAHEAD_TEST_WRONG_TOKEN")
    assert "not-the-token" not in str(e.value)
