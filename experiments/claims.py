"""The paper's claims, checked against a study's records.

"Beats"/"outperforms" means the 95% CI (Student t over seeds) of the paired accuracy
difference, averaged over the acquisition cycles, lies above zero; "equal to or better"
means it does not lie below zero; "not significant" means it covers zero. One check
function per figure (:data:`CHECKS`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from experiments.studies import Study, metric_matrix, mean_ci, summarize


class Claim(NamedTuple):
    """One of the paper's claims, checked against a study's records.

    Attributes:
      statement: the claim, in numbers.
      measured: what the runs show (mean ± 95% CI over seeds).
      holds: True / False, or None where the runs cannot decide (arm not run, one seed).
      arm: the arm whose network the claim is about (None: the study's base network);
        Fig. 3b's arms change the width.
    """

    statement: str
    measured: str
    holds: Optional[bool]
    arm: Optional[str] = None


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
    x, y = metric_matrix(a, "test_accuracy", seeds), metric_matrix(b, "test_accuracy", seeds)
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
        return Claim(statement, f"not run ({arm} or {ref} missing)", None, arm)
    text = (f"{arm} − {ref}, averaged over acquisition cycles: {_pts(mean, ci)} "
            f"({n} seed{'s' if n > 1 else ''})")
    if not np.isfinite(ci):
        return Claim(statement, text, None, arm)
    lo, hi = mean - ci, mean + ci
    holds = {"better": lo > 0, "not_better": not lo > 0, "not_worse": hi >= 0,
             "same": lo <= 0 <= hi}[want]
    return Claim(statement, text, bool(holds), arm)


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


def _check_batch(study):
    q = study.meta["base_config"]["query_size"]
    return [_compare(study, "mlmoc_greedy", "mlmoc_topk",
                     f"greedy MLMOC beats top-k MLMOC at {q} per query", "better"),
            _compare(study, "mlmoc_greedy", "badge",
                     f"greedy MLMOC is equal to or better than BADGE at {q} per query",
                     "not_worse"),
            _compare(study, "mlmoc_topk", "random",
                     f"top-k MLMOC beats random at {q} per query", "better")]


CHECKS = {"fig1a": _check_fig1a, "fig1b": _check_fig1b, "fig2": _check_fig2,
          "fig3a": _check_fig3a, "fig3b": _check_fig3b, "fig5b": _check_fig5b,
          "batch": _check_batch}


def check_claims(study: Study) -> list:
    """The paper's claims for ``study``'s figure as :class:`Claim` verdicts.

    "Beats"/"outperforms" means the 95% CI (Student t over seeds) of the paired
    difference, averaged over acquisition cycles, lies above zero; "equal to or better"
    means it does not lie below zero; "not significant" means it covers zero.
    """
    check = CHECKS.get(study.meta["figure"])
    return check(study) if check is not None else []


def verdict(holds: Optional[bool]) -> str:
    """The mark a results page shows for a :class:`Claim`."""
    return {True: "**holds**", False: "**does not hold**", None: "**undecided**"}[holds]
