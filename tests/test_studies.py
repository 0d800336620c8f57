import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import claims, report, studies
from lookahead_jax import records

REPO = Path(__file__).resolve().parents[1]


def test_mean_ci_matches_hand_t_interval():
    v = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, ci = studies.mean_ci(v)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    # t_{0.975, 2} = 4.302652729749464 (tables); sd = 2, n = 3
    np.testing.assert_allclose(ci, [4.302652729749464 * 2 / np.sqrt(3), 0.0], rtol=1e-12)
    m1, c1 = studies.mean_ci(v[:1])
    assert np.all(np.isnan(c1)) and np.allclose(m1, [1.0, 2.0])


def _fake_study(root, accs, unfinished=()):
    """Writes a study.json and metric rows: accs = {arm: {seed: [acc per cycle]}}; the
    ``(arm, seed)`` pairs in ``unfinished`` are written as runs cut off before their end."""
    arms = [{"label": a, "overrides": {}, "baseline": None if a == "random" else "random"}
            for a in accs]
    seeds = sorted({s for v in accs.values() for s in v})
    records.atomic_write_json(os.path.join(root, "study.json"), {
        "figure": "fig2", "title": "t", "claim": "c", "commands": ["cmd"], "seeds": seeds,
        "arms": arms, "machine": studies.machine_info(), "run_seconds": {"x": 60.0},
        "base_config": studies.smoke_config().to_dict()})
    for a, per_seed in accs.items():
        for s, vals in per_seed.items():
            d = os.path.join(root, a, f"seed{s}")
            os.makedirs(d)
            for c, acc in enumerate(vals):
                records.append_jsonl(os.path.join(d, "metrics.jsonl"), {
                    "cycle": c, "num_labeled": 10 + 5 * c, "test_accuracy": acc,
                    "seconds_score": 0.5})
            cut = (a, s) in unfinished
            records.atomic_write_json(os.path.join(d, "config.json"),
                                      {"cycles": len(vals) + (2 if cut else 0)})
            records.atomic_write_json(os.path.join(d, "state.json"),
                                      {"cycle_done": len(vals) - 1, "stopped": None})


def test_summarize_pairs_seeds_with_the_baseline(tmp_path):
    _fake_study(str(tmp_path), {"random": {0: [0.5, 0.6], 1: [0.4, 0.7], 2: [0.5, 0.5]},
                                "mlmoc": {0: [0.5, 0.7], 1: [0.4, 0.9]}})
    s = studies.summarize(studies.load_study(str(tmp_path)))
    assert s["mlmoc"]["seeds"] == [0, 1]  # seed 2 of mlmoc never ran
    np.testing.assert_allclose(s["mlmoc"]["diff_mean"], [0.0, 0.15])
    np.testing.assert_allclose(s["random"]["accuracy_mean"], [0.4666666667, 0.6])
    md = report.study_markdown(studies.load_study(str(tmp_path)), "x.png")
    assert "| 15 | 60.00 ± " in md and "(Δ +15.00 ± " in md
    png = report.plot_study(studies.load_study(str(tmp_path)), str(tmp_path / "p.png"))
    assert os.path.getsize(png) > 1000


def test_a_run_not_finished_counts_nowhere_and_is_named(tmp_path):
    _fake_study(str(tmp_path), {"random": {0: [0.5, 0.6], 1: [0.4, 0.7], 2: [0.5, 0.5]},
                                "mlmoc": {0: [0.5, 0.7], 1: [0.4, 0.9], 2: [0.5]}},
                unfinished=[("mlmoc", 2)])
    study = studies.load_study(str(tmp_path))
    assert sorted(study.runs["mlmoc"]) == [0, 1] and study.unfinished == {"mlmoc": [2]}
    md = report.study_markdown(study, "x.png")
    assert "mlmoc 0, 1" in md and "not counted: mlmoc 2" in md


def test_report_builds_results_page(tmp_path):
    _fake_study(str(tmp_path / "studies" / "fig2_digits"),
                {"random": {0: [0.5, 0.6]}, "mlmoc": {0: [0.5, 0.7]}})
    text = report.build_report(str(tmp_path / "studies"), str(tmp_path / "docs"))
    assert "## fig2: t (`fig2_digits`)" in text and "`cmd`" in text
    assert "## The paper's claims, checked" in text
    net = report.network(studies.load_study(str(tmp_path / "studies" / "fig2_digits"))
                         .meta["base_config"])
    assert f"| fig2_digits | {net} | MLMOC beats" in text   # every verdict names its network
    assert (tmp_path / "docs" / "figures" / "fig2_digits.png").exists()
    # two study folders: both read, in turn
    _fake_study(str(tmp_path / "more" / "fig3a_other"),
                {"random": {0: [0.5, 0.6]}, "mlmoc": {0: [0.5, 0.7]}})
    both = report.build_report(f"{tmp_path / 'studies'},{tmp_path / 'more'}",
                               str(tmp_path / "docs2"))
    assert "(`fig2_digits`)" in both and "(`fig3a_other`)" in both
    with pytest.raises(ValueError, match="no such folder"):
        report.build_report(str(tmp_path / "absent"), str(tmp_path / "docs3"))


def test_network_names():
    assert report.network({"model": "mlp", "model_kwargs": {"widths": [1024, 1024]},
                           "dataset": "mnist"}) == "MLP 784-1024-1024-10"
    assert report.network({"model": "wide_resnet", "dataset": "mnist",
                           "model_kwargs": {"num_groups": 1, "widen_factor": 4}}) == \
        "WideResNet, 1 group, widen factor 4 (width 64)"


def test_overrides_reach_training_and_strategy_options():
    cfg = studies.apply_overrides(studies.smoke_config(), {
        "strategy": "mlmoc", "train.loss": "ce", "strategy_options": {"kernel": "sum_logits"}})
    assert cfg.train.loss == "ce" and dict(cfg.strategy_options) == {"kernel": "sum_logits"}


@pytest.mark.parametrize("figure", sorted(studies.FIGURES))
def test_every_figure_smoke(figure, tmp_path, digits):
    """Each figure's runner end to end on a tiny digits setting, so none of them rots."""
    meta = studies.run_study(figure, studies.smoke_config(), [0], str(tmp_path), dataset=digits,
                           log=lambda s: None)
    s = studies.load_study(str(tmp_path))
    assert all(s.runs[a["label"]] for a in meta["arms"])
    assert studies.summarize(s)


def test_figures_cli_smoke(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.figures", "--figure=fig5b",
                          "--smoke", "--seeds=0", f"--root={tmp_path}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "## fig5b" in out.stdout and (tmp_path / "fig5b.png").exists()


def test_paired_average_and_claim_verdicts(tmp_path):
    # mlmoc beats random in every seed; margin beats mlmoc in every seed
    _fake_study(str(tmp_path), {
        "random": {0: [0.5, 0.6, 0.7], 1: [0.4, 0.5, 0.6], 2: [0.5, 0.6, 0.6]},
        "mlmoc": {0: [0.5, 0.7, 0.8], 1: [0.4, 0.6, 0.8], 2: [0.5, 0.7, 0.7]},
        "margin": {0: [0.5, 0.8, 0.9], 1: [0.4, 0.7, 0.9], 2: [0.5, 0.8, 0.8]}})
    s = studies.load_study(str(tmp_path))
    mean, ci, n = claims.paired_average(s, "mlmoc", "random")
    # per-seed means over cycles 1..2 (cycle 0 is the shared initial set): .1, .15, .1
    per_seed = np.array([0.1, 0.15, 0.1])
    assert n == 3 and mean == pytest.approx(per_seed.mean())
    assert ci == pytest.approx(4.302652729749464 * per_seed.std(ddof=1) / np.sqrt(3))
    by_statement = {c.statement: c for c in claims.check_claims(s)}
    beats = next(c for k, c in by_statement.items() if k.startswith("MLMOC beats random"))
    assert beats.holds is True and "+11.67 ±" in beats.measured
    vs_margin = next(c for k, c in by_statement.items() if "than margin" in k)
    assert vs_margin.holds is False and "-10.00 ± 0.00" in vs_margin.measured
    md = report.study_markdown(s, "x.png")
    assert "**does not hold** MLMOC is equal to or better than margin" in md


def test_claims_undecided_with_one_seed_or_missing_arm(tmp_path):
    _fake_study(str(tmp_path), {"random": {0: [0.5, 0.6]}, "mlmoc": {0: [0.5, 0.7]}})
    s = studies.load_study(str(tmp_path))
    (claim,) = claims.check_claims(s)
    assert claim.holds is None and "one seed" in claim.measured
    c = claims._compare(s, "mlmoc", "gp", "x", "better")
    assert c.holds is None and "not run" in c.measured


def test_reproduce_script_names_real_figures_and_flags():
    """experiments/reproduce_mnist.sh stays in step with the figures and the CLI flags."""
    import re

    from absl import flags

    from experiments import figures  # noqa: F401  (defines the flags)

    text = (REPO / "experiments" / "reproduce_mnist.sh").read_text()
    common = re.search(r"common=\((.*)\)", text).group(1).split()
    variables = dict(re.findall(r"^(\w+)=(--\S+)$", text, flags=re.M))  # three=--seeds=...
    lines = [[variables.get(a[1:], a) for a in ln.split()[1:]]
             for ln in text.splitlines() if ln.startswith("run --")]
    assert {a.split("=")[1] for ln in lines for a in ln if a.startswith("--figure=")} \
        == set(studies.FIGURES) - {"batch"}          # every paper figure; 'batch' is ours
    for arg in common + [a for ln in lines for a in ln]:
        name = arg.lstrip("-").split("=")[0]
        assert name in flags.FLAGS, f"{arg} is not a flag of experiments.figures"
    for script in ("reproduce_mnist_wrn.sh", "reproduce_batch.sh"):
        other = (REPO / "experiments" / script).read_text()
        for arg in set(re.findall(r"(?<![\w-])--(\w+)=", other)) - {"studies", "out",
                                                                     "preamble"}:  # report's
            assert arg in flags.FLAGS, f"{script}: --{arg} is not a flag"
        assert "--figure=" in other
    assert "--figure=batch" in (REPO / "experiments" / "reproduce_batch.sh").read_text()
    assert "--preamble=docs/results_preamble.md" in text
    assert (REPO / "docs" / "results_preamble.md").exists()


def test_claims_table_names_each_arms_network(tmp_path):
    # Fig. 3b's arms change the width: each row names the width of its own arm, not the base's
    base = {"model": "wide_resnet", "dataset": "mnist",
            "model_kwargs": {"num_groups": 1, "widen_factor": 4}}
    meta = {"base_config": base, "arms": [
        {"label": "ntk_w16", "baseline": "random_w16",
         "overrides": {"strategy": '"mlmoc"',
                       "model_kwargs": '{"num_groups": 1, "widen_factor": 1}'}},
        {"label": "random", "baseline": None, "overrides": {"strategy": '"random"'}}]}
    study = studies.Study(meta=meta, runs={}, unfinished={})
    assert report.arm_network(study, "ntk_w16") == \
        "WideResNet, 1 group, widen factor 1 (width 16)"
    assert report.arm_network(study, "random") == report.arm_network(study, None) == \
        "WideResNet, 1 group, widen factor 4 (width 64)"


def test_two_commands_extending_one_study_keep_each_others_records(tmp_path):
    # two commands run one study's seeds at once (one per core): each holds its own record
    # in memory; a write must keep the other's run times, reuses, seeds and command
    path = str(tmp_path / "study.json")
    arms = [{"label": "random", "overrides": {}, "baseline": None}]
    first = {"commands": ["figures --seeds=0,1,2"], "seeds": [0, 1, 2], "arms": arms,
             "started": "2026-11-30T16:40:00Z",
             "run_seconds": {"random/seed0": 480.0}, "reused": {}}
    second = {"commands": ["figures --seeds=3,4"], "seeds": [3, 4],
              "arms": arms + [{"label": "badge", "overrides": {}, "baseline": "random"}],
              "started": "2026-11-30T16:41:00Z",
              "run_seconds": {"random/seed3": 500.0}, "reused": {"badge/seed3": "x/badge"}}
    first = studies._write_study(path, first, {"random/seed0"})
    second = studies._write_study(path, second, {"random/seed3", "badge/seed3"})
    assert second == records.read_json(path)
    assert second["run_seconds"] == {"random/seed0": 480.0, "random/seed3": 500.0}
    assert second["reused"] == {"badge/seed3": "x/badge"}
    assert second["seeds"] == [0, 1, 2, 3, 4]
    assert second["commands"] == ["figures --seeds=0,1,2", "figures --seeds=3,4"]
    assert second["started"] == "2026-11-30T16:40:00Z"
    assert [a["label"] for a in second["arms"]] == ["random", "badge"]
    # the first writes again, so it now holds the second's time for random/seed3 (500 s);
    # the second resumes that run (650 s in all); the first's next write must keep 650
    first = studies._write_study(path, first, {"random/seed0"})
    assert first["run_seconds"]["random/seed3"] == 500.0
    second["run_seconds"]["random/seed3"] = 650.0
    second = studies._write_study(path, second, {"random/seed3", "badge/seed3"})
    first["run_seconds"]["random/seed1"] = 470.0
    first = studies._write_study(path, first, {"random/seed0", "random/seed1"})
    assert first["run_seconds"] == {"random/seed0": 480.0, "random/seed1": 470.0,
                                    "random/seed3": 650.0}
    assert first["commands"] == second["commands"]
    assert [a["label"] for a in first["arms"]] == ["random", "badge"]
    assert records.read_json(path) == first
