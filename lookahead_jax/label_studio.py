"""Label Studio as the oracle: people answer in the labeling tool they already use.

``--oracle=label_studio``. Each request of the loop (``"initial"``, ``"cycle_3"``,
``"cycle_3_step_7"`` in sequential mode) becomes one task per pool item in a Label Studio
project; the annotations are read back through its HTTP API (the standard library's
``urllib``: nothing to install), checked like a label file, and only then handed to the
loop, which writes them to the workdir's label ledger.

Configuration (one place: :class:`Settings`, read from the environment so that the token
never enters a flag, ``config.json`` or a log):

==================================  ====================================================
``LABEL_STUDIO_URL``                the server (default ``http://localhost:8080``)
``LABEL_STUDIO_API_KEY``            the access token (a legacy token, sent as
                                    ``Authorization: Token ...``); read when a request
                                    is sent, never written anywhere
``LABEL_STUDIO_PROJECT``            the project's title: reused when it exists (its
                                    choices must be the pool's classes), else created
``LABEL_STUDIO_WAIT``               seconds to wait for the annotations, polling (default
                                    0: the run exits 0 and the same command resumes)
``LABEL_STUDIO_POLL``               seconds between two polls (default 5)
``LABEL_STUDIO_LOCAL_FILES_         the folder the server serves local files from (the
DOCUMENT_ROOT``                     server's own setting, with
                                    ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``);
                                    needed for image folders
==================================  ====================================================

Tasks. An image folder (``--dataset=folder:PATH``) is shown through Label Studio's
local-files serving (``/data/local-files/?d=<path under the document root>``; the oracle
adds a local-files storage for ``PATH`` to the project, never synced). Other pools are
shown as text: the item's id and, for an ``.npz`` table, the row's values as JSON. Each
task's data carries ``lookahead_run`` (an id kept in ``WORKDIR/label_studio.json``),
``lookahead_request`` (the request's name) and ``lookahead_index`` (the pool index), so a
rerun finds the tasks it made and never imports one twice; ``label_studio.json`` also
keeps every task id, so a task deleted in the tool is noticed.

Checks, each refused with one line before anything is recorded: a choice that is not one
of the classes, an annotation without exactly one choice, a task of the request deleted in
the tool (the next run asks for the item again in a new task), an annotated task no
request asked for, a task only skipped, and annotators who disagree.

Disagreement rule: a task's label is the choice of its annotations (skipped ones left
out); when any annotation is marked *ground truth*, only those count. If the counted
annotations do not all choose the same class the run stops, naming the task and the
choices: settle it in Label Studio (mark one annotation as ground truth, or fix or delete
the others) and run the same command again. No vote decides silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from lookahead_jax import records
from lookahead_jax.oracles import LabelsNeeded

ENV_URL = "LABEL_STUDIO_URL"
ENV_TOKEN = "LABEL_STUDIO_API_KEY"
ENV_PROJECT = "LABEL_STUDIO_PROJECT"
ENV_WAIT = "LABEL_STUDIO_WAIT"
ENV_POLL = "LABEL_STUDIO_POLL"
ENV_ROOT = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
DEFAULT_URL = "http://localhost:8080"
RECORD = "label_studio.json"
CHOICES = "label"             # the <Choices name=...> of the projects this oracle makes
KEYS = ("lookahead_run", "lookahead_request", "lookahead_index")
MAX_TEXT_VALUES = 200         # a table row's values shown in a text task


class LabelStudioError(ValueError):
    """A problem with the server, the project or an annotation: one line, nothing recorded.

    A ``ValueError``, so the command line prints it as one ``error:`` line (exit 2).
    """


class Unreachable(LabelStudioError):
    """The server does not answer (stopped, restarting, the wrong address)."""


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the oracle's project lives and how long a run waits; validated here.

    Attributes:
      url: the server's base URL, ``http(s)://host[:port]`` (no trailing path).
      project: the project's title (created, or reused by title).
      token_env: the *name* of the environment variable holding the token (the token
        itself is never stored in this object).
      wait_s: seconds a request waits for its annotations (polling); 0: exit and resume.
      poll_s: seconds between two polls.
      document_root: the server's local-files document root (image folders only).
      timeout_s: one HTTP request's limit.
    """

    url: str = DEFAULT_URL
    project: str = ""
    token_env: str = ENV_TOKEN
    wait_s: float = 0.0
    poll_s: float = 5.0
    document_root: Optional[str] = None
    timeout_s: float = 60.0

    def __post_init__(self):
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or \
                parsed.path not in ("", "/") or parsed.query:
            raise LabelStudioError(f"{ENV_URL} must be the server's address "
                                   f"http(s)://host:port, got {self.url!r}")
        object.__setattr__(self, "url", self.url.rstrip("/"))
        if not isinstance(self.project, str) or not self.project.strip():
            raise LabelStudioError(f"--oracle=label_studio needs a project title in "
                                   f"{ENV_PROJECT} (created when missing, reused by title)")
        if len(self.project) > 50:
            raise LabelStudioError(f"{ENV_PROJECT} is {len(self.project)} characters; "
                                   "Label Studio titles hold at most 50")
        for name, low in (("wait_s", 0.0), ("poll_s", 0.0), ("timeout_s", 0.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < low or (v == low and name != "wait_s"):
                raise LabelStudioError(f"{_ENV_OF[name]} must be a "
                                       f"{'non-negative' if name == 'wait_s' else 'positive'}"
                                       f" number of seconds, got {v!r}")
        if self.document_root is not None and not os.path.isdir(self.document_root):
            raise LabelStudioError(f"{ENV_ROOT} is {self.document_root!r}, not a folder")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """The settings the environment gives (see the module docstring)."""
        env = os.environ if environ is None else environ

        def seconds(name, default):
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return float(raw)
            except ValueError:
                raise LabelStudioError(f"{name} must be a number of seconds, got "
                                       f"{raw!r}") from None

        return cls(url=env.get(ENV_URL, "").strip() or DEFAULT_URL,
                   project=env.get(ENV_PROJECT, "").strip(),
                   wait_s=seconds(ENV_WAIT, 0.0), poll_s=seconds(ENV_POLL, 5.0),
                   document_root=env.get(ENV_ROOT, "").strip() or None)

    def token(self) -> str:
        """The token, from the environment at the moment of use."""
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise LabelStudioError(f"--oracle=label_studio needs the Label Studio access "
                                   f"token in the environment variable {self.token_env} "
                                   "(Account & Settings in Label Studio)")
        return token


_ENV_OF = {"wait_s": ENV_WAIT, "poll_s": ENV_POLL, "timeout_s": "timeout_s"}


# ----------------------------------------------------------------------------- HTTP


class Client:
    """The few calls of Label Studio's HTTP API this oracle needs (JSON over urllib).

    Every failure is one :class:`LabelStudioError` line naming the call; the token goes
    in the ``Authorization`` header only and is in no message and no ``repr``.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._auth = f"Token {settings.token()}"

    def __repr__(self) -> str:
        return f"Client({self.settings.url!r})"

    def request(self, method: str, path: str, body: Any = None,
                query: Optional[Mapping[str, Any]] = None) -> Any:
        url = self.settings.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": self._auth, "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        what = f"{method} {path}"
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _detail(e.read())
            if e.code in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.settings.url} refused the token in "
                    f"{self.settings.token_env} ({e.code} on {what}): use a legacy access "
                    "token of a user of the project's organization") from None
            raise LabelStudioError(f"Label Studio at {self.settings.url} answered {e.code} "
                                   f"to {what}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable(f"cannot reach Label Studio at {self.settings.url} "
                                   f"({reason}) on {what}: start the server or set "
                                   f"{ENV_URL}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.settings.url} answered {what} "
                                   "with something that is not JSON (is this the server's "
                                   "address?)") from None

    def pages(self, path: str, key: Optional[str], query: Mapping[str, Any]) -> list:
        """Every item of a paginated list (``results`` or ``key``), page after page."""
        out, page = [], 1
        while True:
            got = self.request("GET", path, query={**query, "page": page, "page_size": 100})
            if isinstance(got, list):           # an unpaginated answer
                return out + got
            items = got.get(key or "results", []) if isinstance(got, dict) else []
            out += items
            total = got.get("total", got.get("count")) if isinstance(got, dict) else None
            if not items or (total is not None and len(out) >= int(total)) or \
                    (key is None and not got.get("next")):
                return out
            page += 1


def _detail(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        text = json.dumps(obj.get("validation_errors") or obj.get("detail") or obj)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


# ----------------------------------------------------------------------------- project


def label_config(kind: str, class_names: Sequence[str]) -> str:
    """The labeling interface: the item (``kind`` ``"image"`` or ``"text"``) and one
    single-choice question whose choices are the classes, in class order."""
    tag = "Image" if kind == "image" else "Text"
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in class_names)
    return (f'<View>\n  <{tag} name="{kind}" value="${kind}"/>\n'
            f'  <Choices name="{CHOICES}" toName="{kind}" choice="single" '
            f'showInLine="true" required="true">\n{choices}\n  </Choices>\n</View>')


def config_choices(config: str) -> tuple[Optional[str], list[str]]:
    """``(item kind, choices)`` of a project's labeling interface (``None``: not ours)."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError:
        return None, []
    node = next((n for n in root.iter("Choices") if n.get("name") == CHOICES), None)
    if node is None:
        return None, []
    return node.get("toName"), [c.get("value") for c in node.iter("Choice")]


# ----------------------------------------------------------------------------- reading


def task_label(task: Mapping, names: Sequence[str], where: str) -> Optional[int]:
    """The class a task's annotations give (the disagreement rule in the module
    docstring), ``None`` while it has none; one :class:`LabelStudioError` line else."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
    if not anns:
        return None
    counted = [a for a in anns if not a.get("was_cancelled")]
    if not counted:
        raise LabelStudioError(f"{where} was skipped in Label Studio: every asked item needs "
                               "a label; give it one, then run the same command again")
    if any(a.get("ground_truth") for a in counted):
        counted = [a for a in counted if a.get("ground_truth")]
    chosen = {}
    for a in counted:
        picks = [c for r in a.get("result") or [] if isinstance(r, Mapping)
                 and r.get("type") == "choices" and r.get("from_name") == CHOICES
                 for c in (r.get("value") or {}).get("choices") or []]
        if len(picks) != 1:
            raise LabelStudioError(f"{where}: annotation {a.get('id')} has {len(picks)} "
                                   f"choices, expected exactly one of {', '.join(names)}; "
                                   "correct it in Label Studio, then run the same command "
                                   "again")
        if picks[0] not in names:
            raise LabelStudioError(f"{where}: annotation {a.get('id')} chose {picks[0]!r}, "
                                   f"not one of the classes {', '.join(names)}; correct it "
                                   "in Label Studio, then run the same command again")
        chosen[a.get("id")] = picks[0]
    if len(set(chosen.values())) > 1:
        votes = ", ".join(f"{c!r} (annotation {i})" for i, c in sorted(
            chosen.items(), key=lambda kv: str(kv[0])))
        raise LabelStudioError(f"{where}: the annotators disagree: {votes}; settle it in "
                               "Label Studio (mark one annotation as ground truth, or fix or "
                               "delete the others), then run the same command again")
    return list(names).index(next(iter(chosen.values())))


# ----------------------------------------------------------------------------- oracle


class LabelStudioLabelsNeeded(LabelsNeeded):
    """Tasks wait in Label Studio for people (not an error: the run exits 0)."""

    def __init__(self, project_url: str, title: str, tag: str, waiting: int, count: int):
        self.title, self.tag, self.waiting = title, tag, waiting
        super().__init__(project_url, project_url, count)

    def instructions(self) -> str:
        return (f"{self.waiting} of {self.count} item{'s' if self.count != 1 else ''} to "
                f"label in Label Studio: project {self.title!r} at {self.request} "
                f"(request {self.tag}); label them there, then run the same command again")


@dataclasses.dataclass
class LabelStudioOracle:
    """People answer in a Label Studio project (see the module docstring).

    Attributes:
      settings: the server, the project, how long to wait.
      workdir: the run's folder (``label_studio.json`` keeps the run id and task ids).
      items: per pool index, what a person finds the item by.
      class_names: the C classes, the project's choices.
      image_root: the image folder (tasks show ``image_root / items[i]``), or ``None``.
      table: ``(N, D)`` rows shown as text (an ``.npz`` table), or ``None``.
      log: where the waiting lines go.
    """

    settings: Settings
    workdir: str
    items: Sequence[str]
    class_names: Sequence[str]
    image_root: Optional[str] = None
    table: Optional[np.ndarray] = None
    log: Any = print

    def __post_init__(self):
        self.kind = "image" if self.image_root is not None else "text"
        if self.image_root is not None:
            root = self.settings.document_root
            if root is None:
                raise LabelStudioError(
                    f"images reach Label Studio through its local-files serving: start the "
                    f"server with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and {ENV_ROOT}"
                    f" set to a folder holding {self.image_root}, and set {ENV_ROOT} to the "
                    "same folder here")
            real, top = Path(self.image_root).resolve(), Path(root).resolve()
            if top not in real.parents:
                raise LabelStudioError(f"the image folder {real} is not a folder below "
                                       f"{ENV_ROOT} ({top}): Label Studio serves local files "
                                       "only from its subfolders")
            self.image_root = str(real)
        self._client: Optional[Client] = None
        self._project: Optional[dict] = None

    # -- the loop's interface
    def __call__(self, pool_indices: np.ndarray) -> np.ndarray:
        return self.ask(pool_indices, "request")

    def ask(self, pool_indices: np.ndarray, tag: str) -> np.ndarray:
        """Labels of ``pool_indices`` (in that order) once annotated in Label Studio;
        raises :class:`LabelStudioLabelsNeeded` while some are not (after waiting
        ``settings.wait_s``)."""
        idx = [int(i) for i in np.asarray(pool_indices).reshape(-1)]
        record = self._record()
        project = self.project(record)
        deadline = time.monotonic() + self.settings.wait_s
        announced, down = False, False
        labels, waiting = self._collect(project, record, idx, tag)
        while True:
            if not waiting:
                return np.asarray([labels[i] for i in idx], np.int32)
            if time.monotonic() >= deadline:
                raise LabelStudioLabelsNeeded(self.project_url(project), self.settings.project,
                                              tag, len(waiting), len(idx))
            if not announced:
                self.log(f"waiting up to {self.settings.wait_s:g} s for {len(waiting)} of "
                         f"{len(idx)} labels in Label Studio: project "
                         f"{self.settings.project!r} at {self.project_url(project)} "
                         f"(request {tag})")
                announced = True
            time.sleep(min(self.settings.poll_s, max(0.0, deadline - time.monotonic())))
            try:             # a server that stops while the run waits: keep waiting
                labels, waiting = self._collect(project, record, idx, tag)
                if down:
                    self.log("Label Studio answers again")
                down = False
            except Unreachable as e:
                if not down:
                    self.log(f"{e}; still waiting")
                down = True

    # -- the project
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings)
        return self._client

    def project_url(self, project: Mapping) -> str:
        return f"{self.settings.url}/projects/{project['id']}/data"

    def find_project(self) -> Optional[dict]:
        """The project titled ``settings.project`` with its choices checked, or ``None``
        (read only: also the check made before any training)."""
        title = self.settings.project
        client = self.client()
        found = [p for p in client.pages("/api/projects/", None, {"title": title})
                 if p.get("title") == title]
        if len(found) > 1:
            raise LabelStudioError(f"Label Studio holds {len(found)} projects titled "
                                   f"{title!r} (ids {', '.join(str(p['id']) for p in found)}): "
                                   f"rename all but one, or choose another {ENV_PROJECT}")
        if not found:
            return None
        project = found[0]
        if "label_config" not in project:
            project = client.request("GET", f"/api/projects/{project['id']}/")
        kind, choices = config_choices(project.get("label_config", ""))
        names = [str(c) for c in self.class_names]
        if kind != self.kind or choices != names:
            asks = f"for {', '.join(map(str, choices))}" if choices else "other questions"
            raise LabelStudioError(
                f"Label Studio project {title!r} (id {project['id']}) asks {asks} on "
                f"{kind or 'its own'} items, but this pool needs one of {', '.join(names)} "
                f"on {self.kind} items: choose another {ENV_PROJECT}")
        return project

    def project(self, record: Optional[dict] = None) -> dict:
        """The project titled ``settings.project``: found (its choices checked) or made."""
        if self._project is not None:
            return self._project
        record = self._record() if record is None else record
        title = self.settings.project
        if record.get("project") not in (None, title):
            raise LabelStudioError(
                f"{self._record_path()} says this run's tasks are in Label Studio project "
                f"{record['project']!r}, but {ENV_PROJECT} is {title!r}: set it back (a new "
                "project would ask every item again), or use a new workdir")
        project = self.find_project()
        if project is None:
            project = self.client().request("POST", "/api/projects/", {
                "title": title, "label_config": label_config(
                    self.kind, [str(c) for c in self.class_names]),
                "description": "Active learning with lookahead-jax: each task is a pool item "
                               "the run asks for (data.lookahead_index)."})
        if self.image_root is not None:
            self._ensure_storage(project)
        if record.get("project_id") != project["id"] or record.get("project") != title:
            record.update(project=title, project_id=project["id"], url=self.settings.url)
            self._save_record(record)
        self._project = project
        return project

    def _ensure_storage(self, project: Mapping) -> None:
        """A local-files storage for the image folder (Label Studio serves a local file
        only under one); never synced: the tasks are imported by this oracle."""
        got = self.client().request("GET", "/api/storages/localfiles/",
                                    query={"project": project["id"]}) or []
        root = Path(self.image_root)
        for s in got:
            p = Path(str(s.get("path", "")))
            if p == root or p in root.parents:
                return
        self.client().request("POST", "/api/storages/localfiles/", {
            "project": project["id"], "path": str(root), "title": "lookahead-jax images",
            "use_blob_urls": False, "regex_filter": ""})

    # -- the tasks
    def _collect(self, project: Mapping, record: dict, idx: list, tag: str,
                 imported: bool = False):
        """One look at the project: makes the request's missing tasks, checks every
        annotation of this run; ``({index: label}, [indices still waiting])``."""
        run = record["run"]
        tasks = self.client().pages("/api/tasks/", "tasks", {
            "project": project["id"], "fields": "all", "resolve_uri": "false"})
        asked = set(idx)
        known = record.setdefault("tasks", {})
        mine: dict[int, list] = {}
        present = {t.get("id") for t in tasks}
        title = self.settings.project
        for t in tasks:
            data = t.get("data") or {}
            where = f"Label Studio project {title!r}: task {t.get('id')}"
            if data.get("lookahead_run") is None:
                if t.get("annotations"):
                    raise LabelStudioError(
                        f"{where} is annotated but no run asked for it (its data has no "
                        "lookahead_index): delete it, or keep such tasks in another project")
                continue
            if data.get("lookahead_run") != run:
                continue                                   # another run's task
            req, i = data.get("lookahead_request"), data.get("lookahead_index")
            ours = (req == tag and i in asked) or str(i) in known.get(req, {})
            if not ours:
                if t.get("annotations"):
                    raise LabelStudioError(
                        f"{where} (pool item {i}, request {req}) is annotated but this run "
                        "never asked for it there: delete it in Label Studio")
                continue
            if req == tag:
                mine.setdefault(int(i), []).append(t)
        mine_req = known.setdefault(tag, {})
        gone = [i for i in idx if str(i) in mine_req and mine_req[str(i)] not in present
                and i not in mine]
        if gone:
            for i in gone:
                del mine_req[str(i)]
            self._save_record(record)
            raise LabelStudioError(
                f"Label Studio project {title!r}: the task of pool item {gone[0]} (request "
                f"{tag}) was deleted in the tool ({len(gone)} such); run the same command "
                "again to ask for it in a new task")
        adopted = False
        for i, ts in mine.items():
            if str(i) not in mine_req:
                mine_req[str(i)] = min(t["id"] for t in ts)
                adopted = True
        missing = [i for i in idx if i not in mine]
        if missing and imported:
            raise LabelStudioError(f"Label Studio project {title!r}: {len(missing)} imported "
                                   f"task(s) of request {tag} are not in its task list, e.g. "
                                   f"pool item {missing[0]}")
        if missing:
            for i, task_id in zip(missing, self._import(project, run, tag, missing)):
                mine_req[str(i)] = task_id
            self._save_record(record)
            return self._collect(project, record, idx, tag, imported=True)
        if adopted:
            self._save_record(record)
        labels, waiting = {}, []
        names = [str(c) for c in self.class_names]
        for i in idx:
            # several tasks for one item (a copy made in the tool): their annotations together
            merged = {"annotations": [a for t in sorted(mine[i], key=lambda t: t["id"])
                                      for a in t.get("annotations") or []]}
            y = task_label(merged, names, f"Label Studio project {title!r}: task "
                           f"{mine_req[str(i)]} (pool item {i}, request {tag})")
            if y is None:
                waiting.append(i)
            else:
                labels[i] = y
        return labels, waiting

    def _import(self, project: Mapping, run: str, tag: str, missing: list) -> list:
        """Imports one task per missing item (one call); their task ids, in order."""
        tasks = [{"data": {**self.task_data(i), "lookahead_run": run,
                           "lookahead_request": tag, "lookahead_index": int(i)}}
                 for i in missing]
        got = self.client().request("POST", f"/api/projects/{project['id']}/import", tasks,
                                    query={"return_task_ids": "true"}) or {}
        ids = got.get("task_ids") or []
        return ids if len(ids) == len(missing) else []

    def task_data(self, i: int) -> dict:
        """What a person sees of pool item ``i``: the image, or the text."""
        item = str(self.items[i])
        if self.image_root is not None:
            rel = (Path(self.image_root) / item).resolve().relative_to(
                Path(self.settings.document_root).resolve())
            return {"image": "/data/local-files/?d=" + urllib.parse.quote(rel.as_posix()),
                    "item": item}
        text = item
        if self.table is not None:
            row = np.asarray(self.table[i]).reshape(-1)
            shown = [float(f"{v:.6g}") for v in row[:MAX_TEXT_VALUES].tolist()]
            more = f" (first {MAX_TEXT_VALUES} of {row.size})" if row.size > MAX_TEXT_VALUES \
                else ""
            text = f"{item}{more}\n{json.dumps(shown)}"
        return {"text": text, "item": item}

    # -- label_studio.json
    def _record_path(self) -> str:
        return os.path.join(self.workdir, RECORD)

    def _record(self) -> dict:
        path = self._record_path()
        if os.path.exists(path):
            try:
                rec = records.read_json(path)
            except Exception as e:  # noqa: BLE001  (one line, whatever the damage)
                raise LabelStudioError(f"{path} is not readable JSON ({e}); it names this "
                                       "run's Label Studio tasks: restore it") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("run"), str):
                raise LabelStudioError(f"{path} has no run id; it names this run's Label "
                                       "Studio tasks: restore it")
            return rec
        rec = {"run": uuid.uuid4().hex[:16], "tasks": {}}
        self._save_record(rec)
        return rec

    def _save_record(self, rec: dict) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        records.atomic_write_json(self._record_path(), rec)


def from_run(config, dataset, workdir: Optional[str],
             environ: Optional[Mapping[str, str]] = None) -> LabelStudioOracle:
    """The oracle ``--oracle=label_studio`` builds for a run (settings from the
    environment, checked now, before any training)."""
    if workdir is None:
        raise LabelStudioError("oracle 'label_studio' needs a workdir (label_studio.json "
                               "there names the run's tasks)")
    settings = Settings.from_env(environ)
    names = list(dataset.class_names) if dataset.class_names else \
        [str(k) for k in range(dataset.num_classes)]
    items = dataset.items if dataset.items is not None else \
        [dataset.item(i) for i in range(len(dataset.x_train))]
    name = str(config.dataset)
    image_root = table = None
    if name.startswith("folder:"):
        image_root = name[len("folder:"):]
    elif name.startswith("npz:"):
        with np.load(name[len("npz:"):], allow_pickle=False) as f:
            x = f["x"]
        if x.ndim == 2:
            table = x
    oracle = LabelStudioOracle(settings, workdir, items, names, image_root=image_root,
                               table=table)
    oracle.find_project()    # the server, the token and the project's choices, checked now
    return oracle
