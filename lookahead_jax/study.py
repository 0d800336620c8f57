"""Multi-seed studies: the paper's figures as sets of runs, aggregated with 95% CIs.

A *study* runs several *arms* (a strategy plus config overrides) for several seeds on
one base :class:`~lookahead_jax.loop.LoopConfig`. Every run is an ordinary resumable
loop run in ``root/<arm>/seed<k>/``; ``root/study.json`` records the figure, the exact
command, the machine, the seeds and the wall time. :func:`summarize` turns the runs'
``metrics.jsonl`` into per-cycle means with 95% confidence intervals (Student t over
seeds) and, where an arm names a baseline, the per-seed paired difference from it —
the paper's presentation in Figs. 2–4 ("difference from random, whose accuracy is shown
in text"). Plots and the results page are made from those files, never typed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from lookahead_jax import loop, records
from lookahead_jax import train as train_lib


class Arm(NamedTuple):
    """One line of a figure.

    Attributes:
      label: folder name and legend entry.
      overrides: ``LoopConfig`` fields to replace (``"train.<field>"`` for training).
      baseline: label of the arm this one is compared with (paired by seed), or None.
    """

    label: str
    overrides: Mapping[str, Any]
    baseline: Optional[str] = None


class Figure(NamedTuple):
    """A figure of the paper as arms over a base config.

    ``checks`` turns a finished study into :class:`Claim` verdicts, computed from the
    runs' records (see :func:`check_claims`).
    """

    name: str
    title: str
    claim: str
    arms: Callable[[loop.LoopConfig], list]
    checks: Callable[["Study"], list]


def apply_overrides(base: loop.LoopConfig, overrides: Mapping[str, Any]) -> loop.LoopConfig:
    """``base`` with ``overrides`` applied (``"train.epochs"`` etc. for training fields)."""
    top = {k: v for k, v in overrides.items() if not k.startswith("train.")}
    tr = {k[len("train."):]: v for k, v in overrides.items() if k.startswith("train.")}
    if "strategy_options" in top and isinstance(top["strategy_options"], Mapping):
        top["strategy_options"] = tuple(sorted(top["strategy_options"].items()))
    if "model_kwargs" in top and isinstance(top["model_kwargs"], Mapping):
        top["model_kwargs"] = tuple(sorted(top["model_kwargs"].items()))
    cfg = dataclasses.replace(base, **top)
    if tr:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **tr))
    return cfg


# ----------------------------------------------------------------------------- figures


def _fig1a(base):
    # differences are taken against the proposed method: w/o block must be ~0 (same
    # algebra, Eq. 12 vs. direct solves), naive is the paper's accuracy comparison
    return [Arm("ntk_block", {"strategy": "mlmoc"}),
            Arm("ntk_without_block", {"strategy": "mlmoc",
                                      "strategy_options": {"block": False}}, "ntk_block"),
            Arm("naive", {"strategy": "naive_lookahead",
                          "strategy_options": {"epochs": 15}}, "ntk_block")]


def _fig1b(base):
    return [Arm("random", {"strategy": "random"}),
            Arm("empirical_ntk", {"strategy": "mlmoc"}, "random"),
            Arm("infinite_ntk", {"strategy": "infinite_ntk_lookahead"}, "random"),
            Arm("one_step", {"strategy": "onestep_lookahead"}, "random"),
            Arm("gp", {"strategy": "gp_lookahead"}, "random")]


def _fig2(base):
    arms = [Arm("random", {"strategy": "random"})]
    for s in ("mlmoc", "entropy", "margin", "badge", "ll4al", "coreset"):
        arms.append(Arm(s, {"strategy": s}, "random"))
    # BALD needs a network trained with dropout (MC dropout, Gal et al. 2017)
    dropout = {**dict(base.model_kwargs), "dropout_rate": 0.5}
    arms.append(Arm("bald", {"strategy": "bald", "model_kwargs": dropout,
                             "strategy_options": {"strict": True}}, "random"))
    return arms


def _fig3a(base):
    return [Arm("random", {"strategy": "random"}),
            Arm("batch_ntk", {"strategy": "mlmoc"}, "random"),
            Arm("sequential_ntk", {"strategy": "mlmoc", "sequential": True}, "random")]


def _fig3b(base):
    arms = []
    for w in (128, 256, 512, 1024):
        kw = _width_kwargs(base, w)
        arms.append(Arm(f"random_w{w}", {"strategy": "random", "model_kwargs": kw}))
        arms.append(Arm(f"ntk_w{w}", {"strategy": "mlmoc", "model_kwargs": kw},
                        f"random_w{w}"))
    return arms


def _width_kwargs(base: loop.LoopConfig, width: int) -> dict:
    kw = dict(base.model_kwargs)
    if base.model == "mlp":
        kw["widths"] = (width,) * max(1, len(kw.get("widths", (0, 0))))
    elif base.model == "wide_resnet":
        kw["widen_factor"] = max(1, width // (16 * 2 ** (kw.get("num_groups", 3) - 1)))
    elif base.model == "cnn":
        kw["channels"] = (width // 2, width)
    else:
        kw["base_width"] = max(1, width // 8)
    return kw


def _fig5b(base):
    return [Arm("random_mse", {"strategy": "random", "train.loss": "mse"}),
            Arm("ntk_mse", {"strategy": "mlmoc", "train.loss": "mse"}, "random_mse"),
            Arm("random_ce", {"strategy": "random", "train.loss": "ce"}),
            Arm("ntk_ce", {"strategy": "mlmoc", "train.loss": "ce"}, "random_ce")]


# ----------------------------------------------------------------------------- claims


class Claim(NamedTuple):
    """One of the paper's claims, checked against a study's records.

    Attributes:
      statement: the claim, in numbers.
      measured: what the runs show (mean ± 95% CI over seeds).
      holds: True / False, or None where the runs cannot decide (arm not run, one seed).
    """

    statement: str
    measured: str
    holds: Optional[bool]


def paired_average(study: "Study", arm: str, ref: str) -> tuple[float, float, int]:
    """Mean and 95% CI (over seeds) of arm − ref accuracy, averaged over the acquisition
    cycles (every cycle after the first, whose labeled set is the shared random one).

    One number per seed, paired by seed, over the seeds both arms finished and their
    common cycles. Returns ``(mean, ci, n_seeds)``; NaNs where fewer than 2 seeds.
    """
    a, b = study.runs.get(arm, {}), study.runs.get(ref, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), float("nan"), 0
    x, y = _matrix(a, "test_accuracy", seeds), _matrix(b, "test_accuracy", seeds)
    m = min(x.shape[1], y.shape[1])
    d = (x[:, :m] - y[:, :m])[:, 1:] if m > 1 else x[:, :m] - y[:, :m]
    mean, ci = mean_ci(d.mean(axis=1))
    return float(mean), float(ci), len(seeds)


def _pts(mean: float, ci: float) -> str:
    return f"{100 * mean:+.2f} ± {100 * ci:.2f} points" if np.isfinite(ci) else \
        f"{100 * mean:+.2f} points (one seed, no CI)"


def _compare(study, arm, ref, statement, want: str) -> Claim:
    """``want``: "better" (CI above 0), "not_better" (CI not above 0), "not_worse" (CI
    not below 0) or "same" (CI covers 0) for the cycle-averaged paired arm − ref."""
    mean, ci, n = paired_average(study, arm, ref)
    if n == 0:
        return Claim(statement, f"not run ({arm} or {ref} missing)", None)
    text = (f"{arm} − {ref}, averaged over acquisition cycles: {_pts(mean, ci)} "
            f"({n} seed{'s' if n > 1 else ''})")
    if not np.isfinite(ci):
        return Claim(statement, text, None)
    lo, hi = mean - ci, mean + ci
    holds = {"better": lo > 0, "not_better": not lo > 0, "not_worse": hi >= 0,
             "same": lo <= 0 <= hi}[want]
    return Claim(statement, text, bool(holds))


def _check_fig1a(study):
    summary = summarize(study)
    out = []
    if "ntk_block" in summary and "naive" in summary:
        t_ntk = summary["ntk_block"]["seconds_score_mean"]
        t_naive = summary["naive"]["seconds_score_mean"]
        ratio = t_naive / t_ntk
        u = study.meta["base_config"]["subset_size"]
        out.append(Claim("NTK look-ahead is more than 100x faster than naive retraining "
                         "(15 epochs per candidate)",
                         f"{ratio:.0f}x: {t_naive:.1f} s vs {t_ntk:.2f} s per acquisition "
                         f"over {u} candidates (mean over seeds and cycles)", ratio > 100))
    else:
        out.append(Claim("NTK look-ahead is more than 100x faster than naive retraining",
                         "not run (ntk_block or naive missing)", None))
    if "ntk_block" in summary and "ntk_without_block" in summary:
        t_ntk = summary["ntk_block"]["seconds_score_mean"]
        t_wo = summary["ntk_without_block"]["seconds_score_mean"]
        u = study.meta["base_config"]["subset_size"]
        out.append(Claim("The block form (Eq. 12) is faster than solving every augmented "
                         "system (NTK w/o Block)",
                         f"{t_wo / t_ntk:.1f}x: {t_wo:.2f} s vs {t_ntk:.2f} s per acquisition "
                         f"over {u} candidates", t_wo > t_ntk))
    out.append(_compare(study, "ntk_block", "naive",
                        "NTK look-ahead yields significantly more accurate models than naive "
                        "retraining", "better"))
    return out


def _check_fig1b(study):
    out = [_compare(study, "empirical_ntk", "random",
                    "The empirical-NTK look-ahead outperforms random", "better")]
    for arm in ("infinite_ntk", "one_step", "gp"):
        out.append(_compare(study, arm, "random",
                            f"The {arm} look-ahead does not outperform random", "not_better"))
    for arm in ("infinite_ntk", "one_step", "gp"):
        out.append(_compare(study, "empirical_ntk", arm,
                            f"The empirical-NTK look-ahead beats the {arm} look-ahead",
                            "better"))
    return out


def _check_fig2(study):
    out = [_compare(study, "mlmoc", "random", "MLMOC beats random (paper: by large margins)",
                    "better")]
    for arm in [a["label"] for a in study.meta["arms"]]:
        if arm not in ("random", "mlmoc"):
            out.append(_compare(study, "mlmoc", arm,
                                f"MLMOC is equal to or better than {arm} (not significantly "
                                "worse)", "not_worse"))
    return out


def _check_fig3a(study):
    summary, out = summarize(study), []
    e = summary.get("sequential_ntk")
    for cycle, target in ((1, 0.94), (3, 0.96)):
        statement = f"Sequential NTK reaches {100 * target:.0f}% at cycle {cycle}"
        if e is None or len(e["accuracy_mean"]) <= cycle:
            out.append(Claim(statement, "not run", None))
            continue
        m, ci = float(e["accuracy_mean"][cycle]), float(e["accuracy_ci"][cycle])
        out.append(Claim(statement, f"{100 * m:.2f} ± {100 * ci:.2f}% with "
                         f"{e['num_labeled'][cycle]} labels", m >= target))
    out.append(_compare(study, "sequential_ntk", "batch_ntk",
                        "Sequential NTK outperforms batch NTK", "better"))
    out.append(_compare(study, "batch_ntk", "random",
                        "Batch NTK MLMOC beats random on MNIST (paper: by large margins)",
                        "better"))
    return out


def _check_fig3b(study):
    arms = [a["label"] for a in study.meta["arms"] if a["label"].startswith("ntk_w")]
    return [_compare(study, a, "random_" + a[len("ntk_"):],
                     f"NTK significantly outperforms random at width {a[len('ntk_w'):]}",
                     "better") for a in arms]


def _check_fig5b(study):
    return [_compare(study, f"{s}_mse", f"{s}_ce",
                     f"{s}: L2 and cross-entropy do not differ significantly", "same")
            for s in ("random", "ntk")]


def check_claims(study: "Study") -> list:
    """The paper's claims for ``study``'s figure as :class:`Claim` verdicts.

    "Beats"/"outperforms" means the 95% CI (Student t over seeds) of the paired
    difference, averaged over acquisition cycles, lies above zero; "equal to or better"
    means it does not lie below zero; "not significant" means it covers zero.
    """
    fig = FIGURES.get(study.meta["figure"])
    return fig.checks(study) if fig is not None else []


FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure("fig1a", "MLMOC with NTK (block), NTK without block, naive retraining",
           "The NTK look-ahead is more than 100x faster than naive retraining and yields "
           "significantly more accurate models.", _fig1a, _check_fig1a),
    Figure("fig1b", "Look-ahead variants next to random",
           "The empirical-NTK look-ahead beats the infinite-NTK, one-step and GP "
           "look-aheads, which do not beat random.", _fig1b, _check_fig1b),
    Figure("fig2", "MLMOC vs. the state of the art (difference from random)",
           "MLMOC is equal to or better than entropy, margin, BADGE and LL4AL.", _fig2,
           _check_fig2),
    Figure("fig3a", "Sequential vs. batch NTK querying",
           "Sequential NTK reaches more than 94% after one cycle and 96% at cycle 3 on "
           "MNIST, where batch NTK plateaus.", _fig3a, _check_fig3a),
    Figure("fig3b", "Improvement over random for several widths",
           "The NTK method outperforms random for every width.", _fig3b, _check_fig3b),
    Figure("fig5b", "Squared loss vs. cross-entropy",
           "The difference between L2 and cross-entropy is not significant.", _fig5b,
           _check_fig5b),
)}


def get_figure(name: str) -> Figure:
    try:
        return FIGURES[name]
    except KeyError:
        raise ValueError(f"unknown figure {name!r}; figures: {', '.join(FIGURES)}") from None


# ----------------------------------------------------------------------------- running


def machine_info() -> dict:
    """Where a study ran: platform, CPU count, JAX version and devices."""
    import jax

    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()]}


def run_study(figure: str, base: loop.LoopConfig, seeds: Sequence[int], root: str, *,
              command: str = "", dataset=None, log: Callable[[str], None] = print,
              arms: Optional[Sequence[str]] = None) -> dict:
    """Runs every arm of ``figure`` for every seed under ``root`` (resumable).

    Args:
      figure: a name from :data:`FIGURES`.
      base: the shared settings (dataset, model, sizes, training).
      seeds: the seeds; every arm runs each.
      root: output folder; ``root/study.json`` is rewritten after every run.
      command: the command line that produced the study (recorded).
      dataset: a preloaded dataset (else loaded from ``base``).
      arms: run only these arm labels.

    Returns:
      the study record (also in ``root/study.json``).
    """
    fig = get_figure(figure)
    all_arms = fig.arms(base)
    chosen = [a for a in all_arms if arms is None or a.label in arms]
    if not chosen:
        raise ValueError(f"no arm of {figure} matches {arms}; arms: "
                         f"{', '.join(a.label for a in all_arms)}")
    for a in chosen:
        if a.baseline and a.baseline not in {b.label for b in chosen}:
            chosen.insert(0, next(b for b in all_arms if b.label == a.baseline))
    configs = {a.label: apply_overrides(base, a.overrides) for a in chosen}
    for cfg in configs.values():
        loop.validate_config(cfg)
    if dataset is None:
        dataset = loop.load_config_dataset(base)
    path = os.path.join(root, "study.json")
    previous = records.read_json(path) if os.path.exists(path) else {}
    meta = {
        "figure": figure, "title": fig.title, "claim": fig.claim,
        # every command that added runs to this study, in order
        "commands": _append_unique(previous.get("commands") or (
            [previous["command"]] if previous.get("command") else []), command),
        "machine": machine_info(), "seeds": list(seeds),
        # a run of some arms (--arms) keeps the arms an earlier run of this study recorded
        "arms": [{"label": a.label, "overrides": {k: records.dumps(v) for k, v in
                                                  a.overrides.items()},
                  "baseline": a.baseline} for a in all_arms
                 if a in chosen or a.label in {p["label"] for p in previous.get("arms", [])}],
        "base_config": base.to_dict(),
        "started": previous.get("started", _now()),
        "run_seconds": previous.get("run_seconds", {}),
    }
    for seed in seeds:
        for a in chosen:
            cfg = dataclasses.replace(configs[a.label], seed=seed)
            key = f"{a.label}/seed{seed}"
            t0 = time.perf_counter()
            loop.run(cfg, os.path.join(root, a.label, f"seed{seed}"), dataset=dataset, log=log)
            meta["run_seconds"][key] = meta["run_seconds"].get(key, 0.0) + \
                time.perf_counter() - t0
            meta["finished"] = _now()
            records.atomic_write_json(path, meta)
    return meta


def _append_unique(items: list, item: str) -> list:
    return list(items) + ([item] if item and item not in items else [])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- aggregation


class Study(NamedTuple):
    meta: dict
    runs: dict  # {arm: {seed: [metric rows]}}


def load_study(root: str) -> Study:
    """Reads ``study.json`` and every finished run's metric rows."""
    meta = records.read_json(os.path.join(root, "study.json"))
    runs = {}
    for arm in meta["arms"]:
        runs[arm["label"]] = {}
        for seed in meta["seeds"]:
            rows = records.read_jsonl(os.path.join(root, arm["label"], f"seed{seed}",
                                                   "metrics.jsonl"))
            if rows:
                runs[arm["label"]][seed] = rows
    return Study(meta, runs)


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% CI half-width (Student t, n − 1 dof) along ``axis``; n = 1 gives NaN."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = values.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean, stats.t.ppf(0.975, n - 1) * sem


def _matrix(runs: Mapping[int, list], key: str, seeds: Sequence[int]) -> np.ndarray:
    """``(seeds, cycles)`` of ``key`` over the seeds every arm finished, common length."""
    cycles = min(len(runs[s]) for s in seeds)
    return np.array([[runs[s][c][key] for c in range(cycles)] for s in seeds], dtype=float)


def summarize(study: Study) -> dict:
    """Per arm: labels per cycle, accuracy mean/CI, seconds per acquisition, and the
    paired difference from its baseline (mean/CI), over the seeds both finished."""
    out = {}
    for arm in study.meta["arms"]:
        label, base = arm["label"], arm["baseline"]
        runs = study.runs.get(label, {})
        seeds = sorted(runs)
        if base:
            seeds = sorted(set(seeds) & set(study.runs.get(base, {})))
        if not seeds:
            continue
        acc = _matrix(runs, "test_accuracy", seeds)
        entry = {"seeds": seeds,
                 "num_labeled": [r["num_labeled"] for r in runs[seeds[0]][:acc.shape[1]]]}
        entry["accuracy_mean"], entry["accuracy_ci"] = mean_ci(acc)
        score = _matrix(runs, "seconds_score", seeds)[:, :-1]
        entry["seconds_score_mean"] = float(score.mean()) if score.size else float("nan")
        if base:
            ref = _matrix(study.runs[base], "test_accuracy", seeds)
            m = min(acc.shape[1], ref.shape[1])
            entry["diff_mean"], entry["diff_ci"] = mean_ci(acc[:, :m] - ref[:, :m])
            entry["baseline_mean"] = ref[:, :m].mean(axis=0)
        out[label] = entry
    return out


def plot_study(study: Study, path: str) -> str:
    """Accuracy per cycle with 95% bands; a second panel with differences from baselines
    (random's accuracy written under the zero line), as in the paper's Figs. 2–4."""
    import io

    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    summary = summarize(study)
    has_diff = any("diff_mean" in e for e in summary.values())
    ncols = 3 if has_diff else 2
    fig = Figure(figsize=(4.6 * ncols + 1.0, 4.3), dpi=110)
    axes = fig.subplots(1, ncols, squeeze=False,
                        gridspec_kw={"width_ratios": [3] * (ncols - 1) + [2]})
    color = {label: f"C{i % 10}" for i, label in enumerate(summary)}  # same in both panels
    ax = axes[0, 0]
    for label, e in summary.items():
        x, m, ci = np.asarray(e["num_labeled"]), 100 * e["accuracy_mean"], 100 * e["accuracy_ci"]
        ax.plot(x, m, marker="o", ms=3, label=label, color=color[label])
        if np.all(np.isfinite(ci)):
            ax.fill_between(x, m - ci, m + ci, alpha=0.2, color=color[label])
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_diff:
        ax = axes[0, 1]
        ax.axhline(0.0, color="k", lw=1)
        shown_base = set()
        for label, e in summary.items():
            if "diff_mean" not in e:
                continue
            x = np.asarray(e["num_labeled"][:len(e["diff_mean"])])
            m, ci = 100 * e["diff_mean"], 100 * e["diff_ci"]
            ax.plot(x, m, marker="o", ms=3, label=f"{label} − {_baseline_of(study, label)}",
                    color=color[label])
            if np.all(np.isfinite(ci)):
                ax.fill_between(x, m - ci, m + ci, alpha=0.2, color=color[label])
            base = _baseline_of(study, label)
            if base not in shown_base and len(shown_base) == 0:
                for xi, b in zip(x, e["baseline_mean"]):
                    ax.annotate(f"{100 * b:.1f}", (xi, 0), textcoords="offset points",
                                xytext=(0, -12), ha="center", fontsize=7, color="0.3")
                shown_base.add(base)
        ax.set_xlabel("labeled examples")
        ax.set_ylabel("accuracy − baseline (percentage points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0, ncols - 1]  # the paper's Fig. 1a bars: wall-clock time per acquisition
    labels = [k for k, e in summary.items() if np.isfinite(e["seconds_score_mean"])]
    secs = [summary[k]["seconds_score_mean"] for k in labels]
    # bars floored at 1 ms so a log axis can draw them; the labels give the real values
    ax.bar(range(len(labels)), [max(v, 1e-3) for v in secs],
           color=[color[k] for k in labels])
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("seconds per acquisition (scoring)")
    for i, v in enumerate(secs):
        ax.annotate(f"{v:.2g}", (i, max(v, 1e-3)), textcoords="offset points", xytext=(0, 2),
                    ha="center", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    meta = study.meta
    fig.suptitle(f"{meta['figure']}: {meta['title']} "
                 f"({meta['base_config']['dataset']}, {len(meta['seeds'])} seeds)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    records.atomic_write_bytes(path, buf.getvalue())
    return path


def _baseline_of(study: Study, label: str) -> Optional[str]:
    return next(a["baseline"] for a in study.meta["arms"] if a["label"] == label)


def study_markdown(study: Study, image: str, name: Optional[str] = None) -> str:
    """A results-page section: setting, command, machine, table (mean ± CI), plot.

    ``name`` (the study folder) goes in the heading, to tell apart two studies of one
    figure."""
    meta, summary = study.meta, summarize(study)
    cfg = meta["base_config"]
    total = sum(meta.get("run_seconds", {}).values())
    lines = [f"## {meta['figure']}: {meta['title']}" + (f" (`{name}`)" if name else ""), "",
             f"Paper's claim: {meta['claim']}", ""]
    claims = check_claims(study)
    if claims:
        lines += ["Checked against these runs:", ""]
        lines += [f"- {verdict(c.holds)} {c.statement}: {c.measured}" for c in claims]
        lines.append("")
    lines += [
             "- command(s): " + "; ".join(f"`{c}`" for c in meta.get("commands", [])),
             f"- setting: {cfg['dataset']}, {cfg['model']} {cfg['model_kwargs']}, initial "
             f"{cfg['initial_size']}, query {cfg['query_size']}, subset {cfg['subset_size']}, "
             f"{cfg['cycles']} cycles, {cfg['train']['epochs']} epochs per cycle, loss "
             f"{cfg['train']['loss']}",
             f"- seeds: {meta['seeds']}; wall time {total / 60:.1f} min; machine: "
             f"{meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs, "
             f"jax {meta['machine']['jax']} on {', '.join(meta['machine']['devices'])}",
             ""]
    labels = list(summary)
    if labels:
        n = max(len(e["num_labeled"]) for e in summary.values())
        lines.append("| labeled | " + " | ".join(labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        ref = max(summary.values(), key=lambda e: len(e["num_labeled"]))
        for c in range(n):
            cells = []
            for e in summary.values():
                if c >= len(e["accuracy_mean"]):
                    cells.append("")
                    continue
                cell = _pm(e["accuracy_mean"][c], e["accuracy_ci"][c])
                if "diff_mean" in e and c < len(e["diff_mean"]):
                    cell += f" (Δ {_pm(e['diff_mean'][c], e['diff_ci'][c], signed=True)})"
                cells.append(cell)
            lines.append(f"| {ref['num_labeled'][c]} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Accuracy in %, mean ± 95% CI over seeds; Δ = paired difference from "
                     "the arm's baseline in percentage points.")
        secs = ", ".join(f"{k} {v['seconds_score_mean']:.2f} s" for k, v in summary.items())
        lines += ["", f"Mean seconds per acquisition (scoring): {secs}.", ""]
    lines += [f"![{meta['figure']}]({image})", ""]
    return "\n".join(lines)


def verdict(holds: Optional[bool]) -> str:
    """The mark a results page shows for a :class:`Claim`."""
    return {True: "**holds**", False: "**does not hold**", None: "**undecided**"}[holds]


def _pm(mean: float, ci: float, signed: bool = False) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    s = fmt.format(100 * mean)
    return s + (f" ± {100 * ci:.2f}" if np.isfinite(ci) else "")


def smoke_config(**overrides) -> loop.LoopConfig:
    """A tiny digits setting (seconds per run) for smoke tests of every figure."""
    base = loop.LoopConfig(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                           cycles=2, initial_size=20, query_size=4, subset_size=40,
                           train=train_lib.TrainConfig(epochs=2, batch_size=16),
                           max_train=300, max_test=100)
    return dataclasses.replace(base, **overrides)
