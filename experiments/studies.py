"""Multi-seed studies: the paper's figures as sets of runs, aggregated with 95% CIs.

A *study* runs several *arms* (a strategy plus config overrides) for several seeds on
one base :class:`~lookahead_jax.loop.LoopConfig`. Every run is an ordinary resumable
loop run in ``root/<arm>/seed<k>/``; ``root/study.json`` records the figure, the exact
command, the machine, the seeds and the wall time. :func:`summarize` turns the runs'
``metrics.jsonl`` into per-cycle means with 95% confidence intervals (Student t over
seeds) and, where an arm names a baseline, the per-seed paired difference from it —
the paper's presentation in Figs. 2–4 ("difference from random, whose accuracy is shown
in text"). The claims are checked in :mod:`experiments.claims`, the results page and its
plots are made in :mod:`experiments.report`, from those files, never typed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import functools
import json
import os
import platform
import shutil
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from scipy import stats

from lookahead_jax import loop, records
from lookahead_jax.config import validate_config
from lookahead_jax.run_setup import load_config_dataset
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
    """A figure of the paper as arms over a base config (its claims: :mod:`experiments.claims`)."""

    name: str
    title: str
    claim: str
    arms: Callable[..., list]   # arms(base, widths=None)


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


def _fig1a(base, widths=None):
    # differences are taken against the proposed method: w/o block must be ~0 (same
    # algebra, Eq. 12 vs. direct solves), naive is the paper's accuracy comparison
    return [Arm("ntk_block", {"strategy": "mlmoc"}),
            Arm("ntk_without_block", {"strategy": "mlmoc",
                                      "strategy_options": {"block": False}}, "ntk_block"),
            Arm("naive", {"strategy": "naive_lookahead",
                          "strategy_options": {"epochs": 15}}, "ntk_block")]


def _fig1b(base, widths=None):
    return [Arm("random", {"strategy": "random"}),
            Arm("empirical_ntk", {"strategy": "mlmoc"}, "random"),
            Arm("infinite_ntk", {"strategy": "infinite_ntk_lookahead"}, "random"),
            Arm("one_step", {"strategy": "onestep_lookahead"}, "random"),
            Arm("gp", {"strategy": "gp_lookahead"}, "random")]


def _fig2(base, widths=None):
    arms = [Arm("random", {"strategy": "random"})]
    for s in ("mlmoc", "entropy", "margin", "badge", "ll4al", "coreset"):
        arms.append(Arm(s, {"strategy": s}, "random"))
    # BALD needs a network trained with dropout (MC dropout, Gal et al. 2017)
    dropout = {**dict(base.model_kwargs), "dropout_rate": 0.5}
    arms.append(Arm("bald", {"strategy": "bald", "model_kwargs": dropout,
                             "strategy_options": {"strict": True}}, "random"))
    return arms


def _fig3a(base, widths=None):
    return [Arm("random", {"strategy": "random"}),
            Arm("batch_ntk", {"strategy": "mlmoc"}, "random"),
            Arm("sequential_ntk", {"strategy": "mlmoc", "sequential": True}, "random")]


FIG3B_WIDTHS = (128, 256, 512, 1024)


def _fig3b(base, widths=None):
    arms = []
    for w in widths or FIG3B_WIDTHS:
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


def _fig5b(base, widths=None):
    return [Arm("random_mse", {"strategy": "random", "train.loss": "mse"}),
            Arm("ntk_mse", {"strategy": "mlmoc", "train.loss": "mse"}, "random_mse"),
            Arm("random_ce", {"strategy": "random", "train.loss": "ce"}),
            Arm("ntk_ce", {"strategy": "mlmoc", "train.loss": "ce"}, "random_ce")]


def _batch(base, widths=None):
    # ours, not the paper's: large batches, where picking the top-k scores without any
    # diversity (the paper) may pick near-duplicates; greedy absorbs each pick with its
    # pseudo-label (rank-one update) and re-scores the rest before the next pick
    return [Arm("random", {"strategy": "random"}),
            Arm("mlmoc_topk", {"strategy": "mlmoc"}, "random"),
            Arm("mlmoc_greedy", {"strategy": "mlmoc",
                                 "strategy_options": {"batch_mode": "greedy"}}, "mlmoc_topk"),
            Arm("badge", {"strategy": "badge"}, "random")]


FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure("fig1a", "MLMOC with NTK (block), NTK without block, naive retraining",
           "The NTK look-ahead is more than 100x faster than naive retraining and yields "
           "significantly more accurate models.", _fig1a),
    Figure("fig1b", "Look-ahead variants next to random",
           "The empirical-NTK look-ahead beats the infinite-NTK, one-step and GP "
           "look-aheads, which do not beat random.", _fig1b),
    Figure("fig2", "MLMOC vs. the state of the art (difference from random)",
           "MLMOC is equal to or better than entropy, margin, BADGE and LL4AL.", _fig2),
    Figure("fig3a", "Sequential vs. batch NTK querying",
           "Sequential NTK reaches more than 94% after one cycle and 96% at cycle 3 on "
           "MNIST, where batch NTK plateaus.", _fig3a),
    Figure("fig3b", "Improvement over random for several widths",
           "The NTK method outperforms random for every width.", _fig3b),
    Figure("fig5b", "Squared loss vs. cross-entropy",
           "The difference between L2 and cross-entropy is not significant.", _fig5b),
    Figure("batch", "Batch-aware look-ahead (ours): greedy vs. top-k MLMOC and BADGE",
           "Not the paper's: with large batches, absorbing each pick with its pseudo-label "
           "before the next (greedy) beats picking the top-k MLMOC scores.", _batch),
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
              arms: Optional[Sequence[str]] = None, widths: Optional[Sequence[int]] = None,
              reuse: Sequence[str] = ()) -> dict:
    """Runs every arm of ``figure`` for every seed under ``root`` (resumable).

    Args:
      figure: a name from :data:`FIGURES`.
      base: the shared settings (dataset, model, sizes, training).
      seeds: the seeds; every arm runs each.
      root: output folder; ``root/study.json`` is rewritten after every run.
      command: the command line that produced the study (recorded).
      dataset: a preloaded dataset (else loaded from ``base``).
      arms: run only these arm labels.
      widths: the widths of ``fig3b`` (default :data:`FIG3B_WIDTHS`).
      reuse: other study folders: a finished run there whose config equals an arm's (same
        seed) is copied instead of run again (runs are deterministic, so it is the run
        this study would make); ``study.json`` says which runs were copied, from where.

    Returns:
      the study record (also in ``root/study.json``).
    """
    fig = get_figure(figure)
    all_arms = fig.arms(base, widths=tuple(widths) if widths else None)
    chosen = [a for a in all_arms if arms is None or a.label in arms]
    if not chosen:
        raise ValueError(f"no arm of {figure} matches {arms}; arms: "
                         f"{', '.join(a.label for a in all_arms)}")
    for a in chosen:
        if a.baseline and a.baseline not in {b.label for b in chosen}:
            chosen.insert(0, next(b for b in all_arms if b.label == a.baseline))
    configs = {a.label: apply_overrides(base, a.overrides) for a in chosen}
    for cfg in configs.values():
        validate_config(cfg)
    if dataset is None:
        dataset = load_config_dataset(base)
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
        "reused": previous.get("reused", {}),
    }
    if widths:
        meta["widths"] = list(widths)
    own: set[str] = set()   # the runs this command ran or copied ("arm/seedN")
    for seed in seeds:
        for a in chosen:
            cfg = dataclasses.replace(configs[a.label], seed=seed)
            key = f"{a.label}/seed{seed}"
            target = os.path.join(root, a.label, f"seed{seed}")
            source = None if _finished(target) else _find_finished(cfg, seed, reuse)
            if source is not None:
                shutil.copytree(source, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".lock"))
                meta["reused"][key] = source
                meta["run_seconds"][key] = _source_seconds(source)
                log(f"{key}: copied the identical finished run {source}")
            else:
                t0 = time.perf_counter()
                loop.run(cfg, target, dataset=dataset, log=log)
                meta["run_seconds"][key] = meta["run_seconds"].get(key, 0.0) + \
                    time.perf_counter() - t0
            meta["finished"] = _now()
            own.add(key)
            meta = _write_study(path, meta, own)
    return meta


def _write_study(path: str, meta: dict, own: set) -> dict:
    """Writes ``meta`` to ``path`` merged with what is there now, under a lock.

    Two commands may extend one study at once with different seeds (one per core): each
    holds its own ``meta`` in memory, so a plain rewrite would drop the other's run times,
    reused runs, seeds and command. Per run (``"arm/seedN"``) the record on disk wins,
    except for ``own``, the runs this command ran or copied. Returns the merged record.
    """
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            disk = records.read_json(path) if os.path.exists(path) else {}
            merged = dict(meta)
            for key in ("run_seconds", "reused"):
                mine = {k: v for k, v in meta.get(key, {}).items() if k in own}
                merged[key] = {**meta.get(key, {}), **disk.get(key, {}), **mine}
            merged["seeds"] = sorted(set(disk.get("seeds", [])) | set(meta.get("seeds", [])))
            merged["commands"] = functools.reduce(_append_unique, meta.get("commands", []),
                                                  list(disk.get("commands", [])))
            merged["started"] = min(filter(None, (disk.get("started"), meta.get("started"))))
            labels = [a["label"] for a in merged["arms"]]
            merged["arms"] = merged["arms"] + [a for a in disk.get("arms", [])
                                               if a["label"] not in labels]
            records.atomic_write_json(path, merged)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return merged


def _finished(run_dir: str) -> bool:
    """Whether ``run_dir`` holds a run that finished all its cycles (or stopped)."""
    state, config = (os.path.join(run_dir, f) for f in ("state.json", "config.json"))
    if not (os.path.exists(state) and os.path.exists(config)):
        return False
    st, cfg = records.read_json(state), records.read_json(config)
    return st.get("stopped") is not None or st.get("cycle_done") == cfg.get("cycles", 0) - 1


def _find_finished(cfg: loop.LoopConfig, seed: int, roots: Sequence[str]) -> Optional[str]:
    """A finished run with exactly this config under one of the study folders ``roots``."""
    want = json.loads(records.dumps(cfg.to_dict()))
    for root in roots:
        if not os.path.isdir(root):
            raise ValueError(f"--reuse folder {root} does not exist")
        for arm in sorted(os.listdir(root)):
            run_dir = os.path.join(root, arm, f"seed{seed}")
            config = os.path.join(run_dir, "config.json")
            if os.path.exists(config) and records.read_json(config) == want \
                    and _finished(run_dir):
                return run_dir
    return None


def _source_seconds(run_dir: str) -> float:
    """The wall time the source study recorded for ``run_dir`` (0 if unknown)."""
    root, arm, seed = os.path.dirname(os.path.dirname(run_dir)), *run_dir.split(os.sep)[-2:]
    path = os.path.join(root, "study.json")
    if not os.path.exists(path):
        return 0.0
    return float(records.read_json(path).get("run_seconds", {}).get(f"{arm}/{seed}", 0.0))


def _append_unique(items: list, item: str) -> list:
    return list(items) + ([item] if item and item not in items else [])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- aggregation


class Study(NamedTuple):
    meta: dict
    runs: dict  # {arm: {seed: [metric rows]}}, finished runs only
    unfinished: dict = {}  # {arm: [seeds]}: runs begun but not finished (not counted)


def load_study(root: str) -> Study:
    """Reads ``study.json`` and the metric rows of every *finished* run of every arm (any
    ``seed<k>`` folder, whichever command started it); runs still going or cut off are
    listed in ``unfinished`` and left out of every number."""
    meta = records.read_json(os.path.join(root, "study.json"))
    runs, unfinished = {}, {}
    for arm in meta["arms"]:
        label = arm["label"]
        runs[label] = {}
        folder = os.path.join(root, label)
        names = os.listdir(folder) if os.path.isdir(folder) else []
        seeds = sorted(int(n[4:]) for n in names if n.startswith("seed") and n[4:].isdigit())
        for seed in seeds:
            run_dir = os.path.join(folder, f"seed{seed}")
            if _finished(run_dir):
                runs[label][seed] = records.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            elif os.path.exists(os.path.join(run_dir, "config.json")):
                unfinished.setdefault(label, []).append(seed)
    return Study(meta, runs, unfinished)


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% CI half-width (Student t, n − 1 dof) along ``axis``; n = 1 gives NaN."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = values.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean, stats.t.ppf(0.975, n - 1) * sem


def metric_matrix(runs: Mapping[int, list], key: str, seeds: Sequence[int]) -> np.ndarray:
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
        acc = metric_matrix(runs, "test_accuracy", seeds)
        entry = {"seeds": seeds,
                 "num_labeled": [r["num_labeled"] for r in runs[seeds[0]][:acc.shape[1]]]}
        entry["accuracy_mean"], entry["accuracy_ci"] = mean_ci(acc)
        score = metric_matrix(runs, "seconds_score", seeds)[:, :-1]
        entry["seconds_score_mean"] = float(score.mean()) if score.size else float("nan")
        if base:
            ref = metric_matrix(study.runs[base], "test_accuracy", seeds)
            m = min(acc.shape[1], ref.shape[1])
            entry["diff_mean"], entry["diff_ci"] = mean_ci(acc[:, :m] - ref[:, :m])
            entry["baseline_mean"] = ref[:, :m].mean(axis=0)
        out[label] = entry
    return out


def smoke_config(**overrides) -> loop.LoopConfig:
    """A tiny digits setting (seconds per run) for smoke tests of every figure."""
    base = loop.LoopConfig(dataset="digits", model="mlp", model_kwargs=(("widths", (32,)),),
                           cycles=2, initial_size=20, query_size=4, subset_size=40,
                           train=train_lib.TrainConfig(epochs=2, batch_size=16),
                           max_train=300, max_test=100)
    return dataclasses.replace(base, **overrides)
