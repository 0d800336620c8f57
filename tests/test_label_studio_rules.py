"""The Label Studio oracle's rules that need no server: how annotations become a label
(the disagreement rule), the labeling interface, the settings. The round trips against a
real server are in test_label_studio.py (skipped unless LOOKAHEAD_LABEL_STUDIO is set)."""

import numpy as np
import pytest

from lookahead_jax import label_studio as ls
from lookahead_jax import loop

NAMES = ["cat", "dog", "fox"]


def _ann(i, choices, **kw):
    return {"id": i, "result": [{"from_name": ls.CHOICES, "to_name": "image",
                                 "type": "choices", "value": {"choices": choices}}], **kw}


def _label(*anns):
    return ls.task_label({"annotations": list(anns)}, NAMES, "task 7 (pool item 3)")


def test_agreeing_annotations_give_the_label_and_none_is_waiting():
    assert _label() is None
    assert _label(_ann(1, ["dog"])) == 1
    assert _label(_ann(1, ["fox"]), _ann(2, ["fox"])) == 2
    # a skipped annotation does not count; the others decide
    assert _label(_ann(1, ["cat"]), _ann(2, [], was_cancelled=True)) == 0


def test_ground_truth_decides_and_a_disagreement_is_one_line():
    assert _label(_ann(1, ["cat"]), _ann(2, ["dog"], ground_truth=True)) == 1
    with pytest.raises(ls.LabelStudioError) as e:
        _label(_ann(1, ["cat"]), _ann(2, ["dog"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task 7 (pool item 3): the annotators disagree")
    assert "'cat' (annotation 1), 'dog' (annotation 2)" in msg and "ground truth" in msg
    with pytest.raises(ls.LabelStudioError, match="disagree"):   # two ground truths
        _label(_ann(1, ["cat"], ground_truth=True), _ann(2, ["dog"], ground_truth=True))


@pytest.mark.parametrize("anns, message", [
    ([_ann(4, ["wolf"])], "annotation 4 chose 'wolf', not one of the classes cat, dog, fox"),
    ([_ann(4, ["cat", "dog"])], "annotation 4 has 2 choices, expected exactly one"),
    ([{"id": 4, "result": []}], "annotation 4 has 0 choices"),
    ([_ann(4, ["cat"], was_cancelled=True)], "was skipped in Label Studio"),
])
def test_bad_annotations_are_one_line(anns, message):
    with pytest.raises(ls.LabelStudioError) as e:
        _label(*anns)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("task 7 (pool item 3)")


def test_label_config_round_trip_with_names_that_need_escaping():
    names = ['a "b"', "c<d", "e&f"]
    for kind in ("image", "text"):
        assert ls.config_choices(ls.label_config(kind, names)) == (kind, names)
    assert ls.config_choices("<View><Text name='t' value='$t'/></View>") == (None, [])
    assert ls.config_choices("not xml") == (None, [])


def test_settings_are_validated_and_never_hold_the_token(monkeypatch):
    s = ls.Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9/",
                              "LABEL_STUDIO_PROJECT": "birds", "LABEL_STUDIO_WAIT": "30"})
    assert (s.url, s.project, s.wait_s, s.poll_s) == ("http://127.0.0.1:9", "birds", 30.0, 5.0)
    for env, message in [({"LABEL_STUDIO_PROJECT": ""}, "needs a project title in "
                                                        "LABEL_STUDIO_PROJECT"),
                         ({"LABEL_STUDIO_PROJECT": "p", "LABEL_STUDIO_URL": "localhost:8080"},
                          "LABEL_STUDIO_URL must be the server's address"),
                         ({"LABEL_STUDIO_PROJECT": "p", "LABEL_STUDIO_WAIT": "-1"},
                          "LABEL_STUDIO_WAIT must be a non-negative number"),
                         ({"LABEL_STUDIO_PROJECT": "p", "LABEL_STUDIO_POLL": "0"},
                          "LABEL_STUDIO_POLL must be a positive number"),
                         ({"LABEL_STUDIO_PROJECT": "p", "LABEL_STUDIO_WAIT": "soon"},
                          "LABEL_STUDIO_WAIT must be a number of seconds"),
                         ({"LABEL_STUDIO_PROJECT": "x" * 51}, "at most 50")]:
        with pytest.raises(ls.LabelStudioError, match=message):
            ls.Settings.from_env(env)
    monkeypatch.delenv(ls.ENV_TOKEN, raising=False)
    with pytest.raises(ls.LabelStudioError, match="token in the environment variable "
                                                  "LABEL_STUDIO_API_KEY"):
        s.token()
    monkeypatch.setenv(ls.ENV_TOKEN, "sekrit-123")
    client = ls.Client(s)
    assert "sekrit-123" not in repr(s) + repr(client) + str(vars(s))


def test_the_loop_knows_the_oracle_and_it_refuses_what_it_cannot_serve(tmp_path):
    cfg = loop.LoopConfig(oracle="label_studio")
    assert cfg.to_dict()["oracle"] == "label_studio"
    with pytest.raises(ValueError, match="oracle must be one of simulated, files, "
                                         "label_studio"):
        loop.LoopConfig(oracle="labelstudio")
    ds = type("D", (), dict(class_names=None, num_classes=2, items=None,
                            x_train=np.zeros((3, 2)), item=lambda self, i: f"p[{i}]"))()
    with pytest.raises(ls.LabelStudioError, match="needs a workdir"):
        ls.from_run(cfg, ds, None)
    (tmp_path / "root").mkdir()
    settings = ls.Settings(url="http://127.0.0.1:9", project="p",
                           document_root=str(tmp_path / "root"))
    with pytest.raises(ls.LabelStudioError, match="not a folder below "
                                                  "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        ls.LabelStudioOracle(settings, str(tmp_path), ["a.png"], NAMES,
                             image_root=str(tmp_path / "elsewhere"))
    with pytest.raises(ls.LabelStudioError, match="local-files serving"):
        ls.LabelStudioOracle(ls.Settings(url="http://127.0.0.1:9", project="p"),
                             str(tmp_path), ["a.png"], NAMES, image_root=str(tmp_path))


def _offline(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv(ls.ENV_TOKEN, "t")
    return ls.LabelStudioOracle(ls.Settings(url="http://127.0.0.1:9", project="birds", **kw),
                                str(tmp_path), ["a", "b", "c"], NAMES)


def test_a_wait_outlasts_a_server_that_stops_answering(tmp_path, monkeypatch):
    lines = []
    oracle = _offline(tmp_path, monkeypatch, wait_s=30.0, poll_s=0.01)
    oracle.log = lines.append
    monkeypatch.setattr(oracle, "project", lambda record=None: {"id": 1})
    looks = iter([({}, [2]), ls.Unreachable("cannot reach Label Studio at X"),
                  ls.Unreachable("cannot reach Label Studio at X"), ({2: 1}, [])])

    def collect(*args):
        got = next(looks)
        if isinstance(got, Exception):
            raise got
        return got

    monkeypatch.setattr(oracle, "_collect", collect)
    np.testing.assert_array_equal(oracle.ask(np.array([2]), "cycle_0"), [1])
    assert [line.split(":")[0] for line in lines] == [
        "waiting up to 30 s for 1 of 1 labels in Label Studio",
        "cannot reach Label Studio at X; still waiting", "Label Studio answers again"]


def test_a_workdir_keeps_its_project(tmp_path, monkeypatch):
    oracle = _offline(tmp_path, monkeypatch)
    (tmp_path / ls.RECORD).write_text('{"run": "r1", "project": "owls", "tasks": {}}')
    with pytest.raises(ls.LabelStudioError) as e:
        oracle.project()
    assert "tasks are in Label Studio project 'owls', but LABEL_STUDIO_PROJECT is 'birds'" \
        in str(e.value)
    (tmp_path / ls.RECORD).write_text("{not json")
    with pytest.raises(ls.LabelStudioError, match="label_studio.json is not readable JSON"):
        oracle.project()
