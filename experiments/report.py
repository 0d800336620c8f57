"""Builds ``docs/RESULTS.md`` and its plots from finished studies.

    python -m experiments.report --studies=results/studies --out=docs \
        --preamble=docs/results_preamble.md

Every study folder under ``--studies`` (one with a ``study.json``) becomes a section
with its command, machine, seeds, wall time, a table of mean ± 95% CI and a plot. Only
numbers read from the runs' records appear; nothing is typed in.
"""

import io
import json
import os
import sys
from typing import Optional

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

from experiments.claims import check_claims, verdict
from experiments.studies import Study, load_study, summarize
from lookahead_jax import records

FLAGS = flags.FLAGS


def plot_study(study: Study, path: str) -> str:
    """Accuracy per cycle with 95% bands; a second panel with differences from baselines
    (random's accuracy written under the zero line), as in the paper's Figs. 2–4."""
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
                 f"({meta['base_config']['dataset']}, "
                 f"{max((len(r) for r in study.runs.values()), default=0)} seeds)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    records.atomic_write_bytes(path, buf.getvalue())
    return path


def network(cfg: dict) -> str:
    """The network of a study's base config, as the results page names it."""
    kw = dict(cfg.get("model_kwargs") or {})
    name = cfg["model"]
    if name == "mlp":
        d_in = {"mnist": 784, "digits": 64, "svhn": 3072, "cifar10": 3072,
                "cifar100": 3072}.get(cfg["dataset"], "d")
        c = {"cifar100": 100}.get(cfg["dataset"], 10)
        return "MLP " + "-".join(str(w) for w in (d_in, *kw.get("widths", ()), c))
    if name == "wide_resnet":
        groups, k = kw.get("num_groups", 3), kw.get("widen_factor", 1)
        return (f"WideResNet, {groups} group{'s' if groups > 1 else ''}, widen factor {k} "
                f"(width {16 * 2 ** (groups - 1) * k})")
    return f"{name} {kw}" if kw else name


def arm_network(study: Study, label: Optional[str]) -> str:
    """The network of arm ``label`` (its overrides of ``model`` / ``model_kwargs`` applied
    to the base config; the base network when ``label`` is None or overrides neither)."""
    cfg = dict(study.meta["base_config"])
    arm = next((a for a in study.meta["arms"] if a["label"] == label), None)
    for key in ("model", "model_kwargs"):
        if arm is not None and key in arm["overrides"]:
            cfg[key] = json.loads(arm["overrides"][key])
    return network(cfg)


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
             f"- setting: {cfg['dataset']}, {network(cfg)}, initial "
             f"{cfg['initial_size']}, query {cfg['query_size']}, subset {cfg['subset_size']}, "
             f"{cfg['cycles']} cycles, {cfg['train']['epochs']} epochs per cycle, loss "
             f"{cfg['train']['loss']}"
             + (f"; the arms vary the width: {', '.join(map(str, meta['widths']))}"
                if meta.get("widths") else ""),
             "- finished seeds per arm: " + "; ".join(
                 f"{a} {', '.join(map(str, sorted(r))) or 'none'}"
                 for a, r in study.runs.items()) + (
                 " (begun, not finished, not counted: " + "; ".join(
                     f"{a} {', '.join(map(str, s))}" for a, s in study.unfinished.items())
                 + ")" if study.unfinished else ""),
             f"- wall time {total / 60:.1f} min; machine: "
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


def _pm(mean: float, ci: float, signed: bool = False) -> str:
    fmt = "{:+.2f}" if signed else "{:.2f}"
    s = fmt.format(100 * mean)
    return s + (f" ± {100 * ci:.2f}" if np.isfinite(ci) else "")


def build_report(studies_dir: str, out_dir: str, preamble: str = "") -> str:
    """Writes ``out_dir/RESULTS.md`` (and ``out_dir/figures/``) from every study folder
    under ``studies_dir`` (comma-separated folders are read in turn); returns the text."""
    roots = []
    for d in studies_dir.split(","):
        if not os.path.isdir(d):
            raise ValueError(f"no such folder: {d}")
        roots += sorted(os.path.join(d, s) for s in os.listdir(d)
                        if os.path.exists(os.path.join(d, s, "study.json")))
    if not roots:
        raise ValueError(f"no study (a folder with study.json) under {studies_dir}")
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    studies = {os.path.basename(r): load_study(r) for r in roots}
    parts = ["# Results", "",
             "Generated by `python -m experiments.report` from the runs' records; "
             "each section names the command that produced it.", "", preamble,
             claims_table(studies), ""]
    for name, s in studies.items():
        plot_study(s, os.path.join(fig_dir, f"{name}.png"))
        parts.append(study_markdown(s, f"figures/{name}.png", name))
    text = "\n".join(parts)
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as fh:
        fh.write(text)
    return text


def claims_table(studies: dict) -> str:
    """One row per checked claim of every study: the paper's claims at a glance."""
    rows = ["## The paper's claims, checked", "",
            "\"Beats\" means the 95% CI over seeds of the paired accuracy difference, "
            "averaged over the acquisition cycles, lies above zero.", "",
            "| study | network | claim | measured | verdict |", "|---|---|---|---|---|"]
    n = 0
    for name, s in studies.items():
        for c in check_claims(s):
            rows.append(f"| {name} | {arm_network(s, c.arm)} | {c.statement} | {c.measured} | "
                        f"{verdict(c.holds)} |")
            n += 1
    return "\n".join(rows) if n else ""


def main(argv):
    del argv
    preamble = open(FLAGS.preamble).read() if FLAGS.preamble else ""
    try:
        build_report(FLAGS.studies, FLAGS.out, preamble)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(os.path.join(FLAGS.out, "RESULTS.md"))


if __name__ == "__main__":
    flags.DEFINE_string("studies", "results/studies",
                        "folder(s) holding study folders, comma-separated")
    flags.DEFINE_string("out", "docs", "where RESULTS.md and figures/ go")
    flags.DEFINE_string("preamble", None, "optional markdown file placed before the sections")
    app.run(main)
