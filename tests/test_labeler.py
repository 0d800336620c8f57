"""The notebook labeler, driven headless through its widget objects (button clicks)."""

import jax
import numpy as np
import pytest

from lookahead_jax import data, labeler, models, records, strategies, train

pytest.importorskip("ipywidgets")


@pytest.fixture(scope="module")
def trained():
    ds = data.load_dataset("digits")
    model = models.get_model("mlp", ds.num_classes, widths=(64,))
    cfg = train.TrainConfig(epochs=20, batch_size=16)
    labeled = np.arange(30)
    state, _ = train.fit(train.create_train_state(model, model.init(jax.random.key(0),
                                                                    ds.x_train[:1]), cfg),
                         ds.x_train[labeled], ds.y_train[labeled], cfg, key=jax.random.key(1))
    return ds, model, state.variables, labeled


def _session(trained, folder, **kw):
    ds, model, variables, labeled = trained
    return labeler.LabelingSession(ds, model, variables, folder=str(folder), labeled=labeled,
                                   max_labels=25, max_candidates=150, **kw)


def test_twenty_clicks_each_on_disk_before_the_next_item_and_a_restart_resumes(
        trained, tmp_path, monkeypatch):
    ds = trained[0]
    ui = labeler.Labeler(_session(trained, tmp_path))
    shown = []
    original = labeler.Labeler._show

    def show_checked(self):
        # the ledger on disk holds every answer given so far when the next item appears
        on_disk = records.read_jsonl(self.session.path)
        assert len(on_disk) == len(self.session.answers)
        shown.append(self.session.current)
        original(self)

    monkeypatch.setattr(labeler.Labeler, "_show", show_checked)
    for _ in range(20):
        item = ui.session.current
        ui.buttons[int(ds.y_train[item])].click()            # the simulated person
    assert ui.session.num_answered == 20 and len(set(shown)) == 20
    answered = ui.session.labels()
    assert all(answered[i] == ds.y_train[i] for i in answered)
    assert "20 / 25" in ui.title.value
    # a restarted notebook: a new session on the same folder resumes after the last answer
    again = _session(trained, tmp_path)
    assert again.labels() == answered and again.current == ui.session.current


def test_clicks_follow_sequential_mlmoc(trained, tmp_path):
    """The items shown are exactly the picks of the strategies' sequential mode."""
    ds, model, variables, labeled = trained
    session = _session(trained, tmp_path)
    shown = []
    for _ in range(6):
        shown.append(session.current)
        session.answer(int(ds.y_train[session.current]))
    cand = session.candidates
    ctx = strategies.AcquisitionContext(
        model=model, params=variables.params, state=variables.state,
        x_labeled=ds.x_train[labeled], y_labeled=ds.y_train[labeled],
        x_candidates=ds.x_train[cand], num_classes=10, query_size=6, key=jax.random.key(0),
        labeled_capacity=len(labeled) + 25, label_fn=lambda j: int(ds.y_train[cand[j]]))
    sel = strategies.get("mlmoc")(ctx)
    assert shown == cand[sel.indices].tolist()


def test_skip_undo_and_bad_answers(trained, tmp_path):
    ds = trained[0]
    ui = labeler.Labeler(_session(trained, tmp_path))
    first = ui.session.current
    ui.skip_button.click()
    assert ui.session.current != first and ui.session.answers == [(first, labeler.SKIP)]
    second = ui.session.current
    ui.buttons[int(ds.y_train[second])].click()
    ui.undo_button.click()                              # the answer to `second` taken back
    assert ui.session.current == second and ui.session.answers == [(first, labeler.SKIP)]
    assert len(records.read_jsonl(ui.session.path)) == 1
    with pytest.raises(ValueError, match=r"label 10 is not an integer in \[0, 10\)"):
        ui.session.answer(10)
    # an edited ledger is refused on restart
    rows = open(ui.session.path).read().replace('"label": -1', '"label": 3')
    open(ui.session.path, "w").write(rows)
    with pytest.raises(ValueError, match="answers.jsonl row 1 was changed"):
        _session(trained, tmp_path)
