"""A person labels in a notebook, driving sequential MLMOC: each click is absorbed at once.

The paper's sequential mode as a tool: annotation is fast but training is slow, so every
answer joins the NTK look-ahead system through the rank-one update (no SGD, no new kernel
entries) and the next most informative item appears immediately.

* :class:`LabelingSession`: the logic, headless (what tests drive). Each answer is
  appended, hash-chained and fsync'ed to ``FOLDER/answers.jsonl`` *before* the next item
  is chosen; a new session on the same folder replays the answers and resumes after the
  last one. ``skip`` withdraws an item, ``undo`` takes the last answer back (the system
  is rebuilt from the remaining answers, exactly).
* :class:`Labeler`: the ipywidgets front end (Colab and Jupyter ship ipywidgets): the
  item (an image, or the row of a tabular pool), one button per class, Skip and Undo.

Example (``notebooks/04_label_your_data.ipynb``)::

    session = labeler.LabelingSession(pool, model, variables, folder="my_labels",
                                      labeled=start_indices, max_labels=50)
    labeler.Labeler(session).widget     # display it
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from lookahead_jax import records, rng
from lookahead_jax.data import Dataset
from lookahead_jax.models import Model, Variables
from lookahead_jax.strategies import AcquisitionContext
from lookahead_jax.strategies.ntk_lookahead import LookaheadSession

SKIP = -1


class LabelingSession:
    """Sequential MLMOC over a candidate set, answered by a person (see the module doc).

    Args:
      pool: the :class:`~lookahead_jax.data.Dataset`; labels of ``labeled`` are read from
        ``pool.y_train`` (they must be known).
      model, variables: the trained network f_L.
      folder: where the answers are kept (created; an existing one is resumed — its
        settings must match).
      labeled: pool indices of the labeled set L.
      candidates: pool indices offered for labeling (default: every unlabeled item, up to
        ``max_candidates`` of them drawn with ``seed``).
      max_labels: how many answers this session takes (the system is padded for them).
      options: the look-ahead options (``kernel``, ``jitter``, ...).
      seed: seeds the candidate draw.
    """

    def __init__(self, pool: Dataset, model: Model, variables: Variables, *, folder: str,
                 labeled: Sequence[int], candidates: Optional[Sequence[int]] = None,
                 max_labels: int = 50, max_candidates: int = 2000,
                 options: Optional[Mapping[str, Any]] = None, seed: int = 0):
        labeled = np.asarray(labeled, np.int64)
        if labeled.size == 0 or np.any(pool.y_train[labeled] < 0):
            raise ValueError("the labeled set must be non-empty and its labels known")
        if candidates is None:
            free = np.setdiff1d(np.arange(len(pool.x_train)), labeled)
            gen = rng.numpy_rng(rng.key(seed, "candidates", 0))
            candidates = np.sort(gen.choice(free, min(max_candidates, free.size),
                                            replace=False))
        self.candidates = np.asarray(candidates, np.int64)
        if np.intersect1d(self.candidates, labeled).size:
            raise ValueError("a candidate is already labeled")
        self.pool, self.model, self.variables = pool, model, variables
        self.labeled = labeled
        self.max_labels = int(max_labels)
        self.options = dict(options or {})
        self.folder = folder
        self.path = os.path.join(folder, "answers.jsonl")
        os.makedirs(folder, exist_ok=True)
        settings = {"labeled": labeled.tolist(), "candidates": self.candidates.tolist(),
                    "max_labels": self.max_labels, "options": self.options,
                    "pool": pool.name, "pool_size": int(len(pool.x_train))}
        settings_path = os.path.join(folder, "session.json")
        if os.path.exists(settings_path):
            if records.read_json(settings_path) != json.loads(records.dumps(settings)):
                raise ValueError(f"{folder} holds a labeling session with other settings; "
                                 "use a new folder")
        else:
            records.atomic_write_json(settings_path, settings)
        records.repair_jsonl(self.path)
        rows = records.read_jsonl(self.path, strict=True)
        self._head = records.verify_chain(self.path, rows)
        self.answers: list[tuple[int, int]] = [(int(r["index"]), int(r["label"]))
                                               for r in rows]
        self._rebuild()

    # ------------------------------------------------------------------ state

    def _rebuild(self) -> None:
        """The look-ahead system with every recorded answer replayed, and the next item."""
        pool = self.pool
        ctx = AcquisitionContext(
            model=self.model, params=self.variables.params, state=self.variables.state,
            x_labeled=pool.x_train[self.labeled], y_labeled=pool.y_train[self.labeled],
            x_candidates=pool.x_train[self.candidates], num_classes=pool.num_classes,
            query_size=1, key=jax.random.key(0), options=self.options)
        self._session = LookaheadSession(ctx, "mlmoc", max_steps=self.max_labels)
        position = {int(p): j for j, p in enumerate(self.candidates)}
        for index, label in self.answers:
            j = position[index]
            if label == SKIP:
                self._session.skip(j)
            else:
                self._session.absorb(j, label)
        self._next()

    def _next(self) -> None:
        labeled = sum(1 for _, y in self.answers if y != SKIP)
        left = self.candidates.size - len(self.answers)
        if labeled >= self.max_labels or left <= 0:
            self.current = None
            return
        self.current = int(self.candidates[self._session.best()])

    @property
    def done(self) -> bool:
        return self.current is None

    @property
    def num_answered(self) -> int:
        return sum(1 for _, y in self.answers if y != SKIP)

    def labels(self) -> dict[int, int]:
        """``{pool index: label}`` of every answer so far (skips excluded)."""
        return {i: y for i, y in self.answers if y != SKIP}

    # ------------------------------------------------------------------ actions

    def _record(self, index: int, label: int) -> None:
        """Appends the answer to the ledger and fsyncs it: on disk before anything else."""
        self._head = records.append_chained(self.path, {"index": index, "label": label},
                                            self._head)
        self.answers.append((index, label))

    def answer(self, label: int) -> None:
        """The person's label for the item shown: persisted, absorbed, next item chosen."""
        if self.current is None:
            raise ValueError("the session is finished: nothing is waiting for a label")
        C = self.pool.num_classes
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 <= int(label) < C:
            raise ValueError(f"label {label!r} is not an integer in [0, {C})")
        j = int(np.flatnonzero(self.candidates == self.current)[0])
        self._record(self.current, int(label))
        self._session.absorb(j, int(label))
        self._next()

    def skip(self) -> None:
        """Withdraws the item shown (recorded; never shown again in this session)."""
        if self.current is None:
            raise ValueError("the session is finished: nothing to skip")
        j = int(np.flatnonzero(self.candidates == self.current)[0])
        self._record(self.current, SKIP)
        self._session.skip(j)
        self._next()

    def undo(self) -> None:
        """Takes the last answer (or skip) back; the system is rebuilt without it."""
        if not self.answers:
            raise ValueError("nothing to undo")
        self.answers.pop()
        rows = records.chain_rows([{"index": i, "label": y} for i, y in self.answers])
        records.rewrite_jsonl(self.path, rows)
        self._head = rows[-1]["sha"] if rows else records.GENESIS
        self._rebuild()


class Labeler:
    """The ipywidgets front end of a :class:`LabelingSession` (``.widget`` to display)."""

    def __init__(self, session: LabelingSession):
        try:
            import ipywidgets as w
        except ImportError:
            raise ImportError("the notebook labeler needs ipywidgets: pip install ipywidgets "
                              "(Colab and Jupyter ship it)") from None
        self.session = session
        names = session.pool.class_names or [str(c) for c in range(session.pool.num_classes)]
        self.title = w.HTML()
        self.image = w.Image(format="png")
        self.row = w.HTML()
        self.buttons = [w.Button(description=str(n)) for n in names]
        for k, b in enumerate(self.buttons):
            b.on_click(lambda _, k=k: self._act(self.session.answer, k))
        self.skip_button = w.Button(description="Skip", button_style="warning")
        self.undo_button = w.Button(description="Undo", button_style="info")
        self.skip_button.on_click(lambda _: self._act(self.session.skip))
        self.undo_button.on_click(lambda _: self._act(self.session.undo))
        self.message = w.HTML()
        self.widget = w.VBox([self.title, self.image, self.row, w.HBox(self.buttons),
                              w.HBox([self.skip_button, self.undo_button]), self.message])
        self._show()

    def _act(self, fn, *args) -> None:
        try:
            fn(*args)
            self.message.value = ""
        except ValueError as e:
            self.message.value = f"<b>{e}</b>"
        self._show()

    def _show(self) -> None:
        s = self.session
        if s.done:
            self.title.value = (f"<b>Done</b>: {s.num_answered} labels in "
                                f"{s.path}")
            for b in self.buttons + [self.skip_button]:
                b.disabled = True
            return
        i = s.current
        self.title.value = (f"<b>{s.num_answered} / {s.max_labels}</b> labeled &middot; "
                            f"item {s.pool.item(i)} (pool index {i})")
        x = np.asarray(s.pool.x_train[i])
        if x.ndim == 3:
            self.image.value = _png(x)
            self.row.value = ""
        else:
            self.image.value = b""
            self.row.value = "<table>" + "".join(
                f"<tr><td>{k}</td><td>{v:.4g}</td></tr>"
                for k, v in enumerate(x.reshape(-1)[:64])) + "</table>"


def _png(x: np.ndarray) -> bytes:
    """An image ``(H, W, C)`` (standardised) as PNG bytes, contrast-stretched."""
    img = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    fig = Figure(figsize=(2.2, 2.2), dpi=80)
    ax = fig.subplots()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
