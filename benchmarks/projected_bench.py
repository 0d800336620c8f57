"""Issue 21: the look-ahead at the cost of a myopic strategy, measured.

One trained MLP 784-1024-1024-10 (MNIST from ``--manual_dir`` through
``data.load_dataset``, L = 100 random labels, squared loss, the library's ``train.fit``),
U = 4000 random candidates, query 20, per seed. Every strategy is called through the
strategy API in ONE process, interleaved (round r calls every strategy once, in order),
after one untimed warm-up call each (compilation); the table gives medians over the rounds
and the seeds.

* **cost**: exact MLMOC (``features="exact"``, E = U), projected MLMOC at three k,
  MLMOC on an evaluation subset m = 500, their combination, and entropy, margin,
  core-set, BADGE, random;
* **accuracy** of every approximation against exact MLMOC on the same network and
  candidates: top-20 shared, Spearman of the scores, and the score ratio (the exact MLMOC
  scores of the approximation's 20 picks, summed, over those of the exact top 20);
  for a grid of k and m, one call each (untimed), with the kernel relative error
  ‖ΦΦᵀ − Θ‖_F / ‖Θ‖_F on 400 candidates (float32 exact engine, ``first_logit``);
* ``--scale``: the whole MNIST pool in one projected acquisition; a 1,000,000-candidate
  128-d pool with an MLP head; L = 20,000 with 100 sequential steps (projected; m = 500).

    nice -n 5 taskset -c 1 python benchmarks/projected_bench.py --seeds 0 1 2
    nice -n 5 taskset -c 1 python benchmarks/projected_bench.py --scale
    python benchmarks/projected_bench.py --table benchmarks/results/projected_cost_cpu.json
    python benchmarks/projected_bench.py --grid-table benchmarks/results/projected_cost_cpu.json
    nice -n 10 python benchmarks/projected_bench.py --accuracy-only --sketch khatri_rao \
        --seeds 0 1          # the accuracy grid only, one sketch (untimed calls)
    python benchmarks/projected_bench.py --grid-table \
        benchmarks/results/projected_accuracy_khatri_rao_cpu.json

The cost JSON (projected_cost_cpu.json) was measured with the Kronecker sketch (then the
only one; its grid has no ``sketch`` key); ``--accuracy-only`` records ``sketch``.

JSON: machine, commit, load averages before/after, sizes, seeds, every call's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402
from scipy.stats import spearmanr

from lookahead_jax import data, models, ntk, rng, strategies, train
from lookahead_jax.ntk import projected
from lookahead_jax.strategies import ntk_lookahead as nl

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MNIST = os.path.join(HERE, "..", "..", "shared", "data", "mnist")
RESULTS = os.path.join(HERE, "results")

COST = [  # (row name, strategy, options)
    ("MLMOC exact", "mlmoc", {}),
    ("MLMOC projected k=256", "mlmoc", dict(features="projected", projection_dim=256)),
    ("MLMOC projected k=1024", "mlmoc", dict(features="projected", projection_dim=1024)),
    ("MLMOC projected k=4096", "mlmoc", dict(features="projected", projection_dim=4096)),
    ("MLMOC exact, eval_subset m=500", "mlmoc", dict(eval_subset=500)),
    ("MLMOC projected k=1024 + m=500", "mlmoc",
     dict(features="projected", projection_dim=1024, eval_subset=500)),
    ("entropy", "entropy", None), ("margin", "margin", None), ("core-set", "coreset", None),
    ("BADGE", "badge", None), ("random", "random", None),
]
GRID_K = (256, 1024, 4096)     # the cost table's k (their picks are reused)
GRID_M = (250, 1000)           # m = 500 is the cost table's


def machine() -> dict:
    return dict(platform=common.machine_info()["platform"], python=platform.python_version(),
                jax=jax.__version__, devices=[str(d) for d in jax.devices()],
                cpu_count=os.cpu_count(),
                affinity=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else None, nice=os.nice(0))


def code_version() -> dict:
    run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    return dict(commit=run("rev-parse", "HEAD"),
                dirty=bool(run("status", "--porcelain", "--untracked-files=no")))


def trained_mlp(ds, seed, labeled, pool, epochs):
    gen = np.random.default_rng(seed)
    perm = gen.permutation(ds.x_train.shape[0])
    lab = perm[:labeled]
    unl = np.sort(perm[labeled:labeled + pool])
    x_l, y_l, x_u = ds.x_train[lab], ds.y_train[lab], ds.x_train[unl]
    model = models.get_model("mlp", 10, widths=(1024, 1024))
    cfg = train.TrainConfig(epochs=epochs, batch_size=32, learning_rate=0.05)
    st = train.create_train_state(model, model.init(rng.key(seed, "init"), x_l[:1]), cfg)
    st, loss = train.fit(st, x_l, y_l, cfg, key=rng.key(seed, "train"))
    return model, st, x_l, y_l, x_u, float(loss)


def context(model, st, x_l, y_l, x_u, seed, options, query=20, label_fn=None):
    return strategies.AcquisitionContext(
        model=model, params=st.params, state=st.model_state, x_labeled=jnp.asarray(x_l),
        y_labeled=jnp.asarray(y_l), x_candidates=jnp.asarray(x_u), num_classes=10,
        query_size=query, key=rng.key(seed, "acquire", 0), loss="mse", label_fn=label_fn,
        options=options)


def timed(fn):
    t0 = time.perf_counter()
    sel = fn()
    jax.block_until_ready(sel.scores)
    return time.perf_counter() - t0, sel


def agreement(exact_scores, exact_idx, sel) -> dict:
    ex = np.asarray(exact_scores, np.float64)
    idx = np.asarray(sel.indices)
    out = dict(top20_shared=int(len(set(idx.tolist()) & set(np.asarray(exact_idx).tolist()))),
               score_ratio=float(ex[idx].sum() / ex[np.asarray(exact_idx)].sum()))
    if sel.scores is not None:
        out["spearman"] = float(spearmanr(np.asarray(sel.scores), ex).statistic)
    return out


def cost_seed(ds, seed, a, write_partial) -> dict:
    model, st, x_l, y_l, x_u, loss = trained_mlp(ds, seed, a.labeled, a.pool, a.epochs)
    rec = dict(seed=seed, train_loss=loss, calls={name: [] for name, _, _ in COST})
    sels = {}
    for name, strat, opts in COST:                       # warm-up (compile), untimed
        t, sels[name] = timed(lambda: strategies.get(strat)(
            context(model, st, x_l, y_l, x_u, seed, opts)))
        rec.setdefault("first_call_s", {})[name] = t
    for _ in range(a.calls):
        for name, strat, opts in COST:
            t, _ = timed(lambda: strategies.get(strat)(
                context(model, st, x_l, y_l, x_u, seed, opts)))
            rec["calls"][name].append(t)
        print(f"seed {seed} round done; load {tuple(common.load_avg())}", flush=True)
    ex = sels["MLMOC exact"]
    rec["agreement"] = {name: agreement(ex.scores, ex.indices, s) for name, s in sels.items()
                        if name != "MLMOC exact"}
    write_partial(rec)
    # accuracy grid: the cost table's approximations plus two more m (one call each)
    grid = {f"k={k}": dict(rec["agreement"][f"MLMOC projected k={k}"]) for k in GRID_K}
    grid["m=500"] = dict(rec["agreement"]["MLMOC exact, eval_subset m=500"])
    try:
        for m in GRID_M:
            s = strategies.get("mlmoc")(context(model, st, x_l, y_l, x_u, seed,
                                                dict(eval_subset=m)))
            grid[f"m={m}"] = agreement(ex.scores, ex.indices, s)
        # kernel relative error on 400 candidates
        f = model.bind(st.model_state)
        xs = jnp.asarray(x_u[:400])
        exact_k = np.asarray(ntk.empirical_ntk_fn(f)(st.params, xs), np.float64)
        for k in GRID_K:
            phi = projected.projected_features(
                f, st.params, xs, key=jax.random.fold_in(rng.key(seed, "acquire", 0),
                                                         nl.PROJECTION_KEY), projection_dim=k)
            approx = np.asarray(projected.projected_kernel(phi, phi), np.float64)
            grid[f"k={k}"]["kernel_rel_err"] = float(np.linalg.norm(approx - exact_k)
                                                     / np.linalg.norm(exact_k))
            grid[f"k={k}"]["actual_k"] = int(phi.shape[1])
    except Exception as e:  # noqa: BLE001  (recorded, not hidden: the timing is kept)
        rec["grid_error"] = repr(e)
    rec["grid"] = grid
    return rec


ACC_GRID = ((1024, None), (4096, None), (1024, 500), (1024, 1000), (4096, 500))


def accuracy_seed(ds, seed, a) -> dict:
    """The accuracy grid of one sketch against exact MLMOC (every call untimed)."""
    model, st, x_l, y_l, x_u, loss = trained_mlp(ds, seed, a.labeled, a.pool, a.epochs)
    ex = strategies.get("mlmoc")(context(model, st, x_l, y_l, x_u, seed, {}))
    grid = {}
    f = model.bind(st.model_state)
    xs = jnp.asarray(x_u[:400])
    exact_k = np.asarray(ntk.empirical_ntk_fn(f)(st.params, xs), np.float64)
    for k, m in ACC_GRID:
        opts = dict(features="projected", projection_dim=k, sketch=a.sketch)
        if m is not None:
            opts["eval_subset"] = m
        s = strategies.get("mlmoc")(context(model, st, x_l, y_l, x_u, seed, opts))
        name = f"k={k}" + ("" if m is None else f" + m={m}")
        grid[name] = agreement(ex.scores, ex.indices, s)
        if m is None:
            phi = projected.projected_features(
                f, st.params, xs, key=jax.random.fold_in(rng.key(seed, "acquire", 0),
                                                         nl.PROJECTION_KEY),
                projection_dim=k, sketch=a.sketch)
            approx = np.asarray(projected.projected_kernel(phi, phi), np.float64)
            grid[name]["kernel_rel_err"] = float(np.linalg.norm(approx - exact_k)
                                                 / np.linalg.norm(exact_k))
            grid[name]["actual_k"] = int(phi.shape[1])
        print(f"seed {seed} {name}: {grid[name]}; load {tuple(common.load_avg())}", flush=True)
    return dict(seed=seed, train_loss=loss, grid=grid)


def run_accuracy(a) -> dict:
    res = dict(machine=machine(), code=code_version(), note=a.note, sketch=a.sketch,
               load_avg_start=common.load_avg(),
               sizes=dict(L=a.labeled, U=a.pool, query=20, C=10, epochs=a.epochs),
               network="MLP 784-1024-1024-10, squared loss, train.fit", seeds=[])
    ds = data.load_dataset("mnist", manual_dir=a.manual_dir, max_test=10)
    for seed in a.seeds:
        res["seeds"].append(accuracy_seed(ds, seed, a))
        res["load_avg_end"] = common.load_avg()
        write(res, a.out)
    return res


def run_cost(a) -> dict:
    res = dict(machine=machine(), code=code_version(), note=a.note,
               load_avg_start=common.load_avg(),
               sizes=dict(L=a.labeled, U=a.pool, query=20, C=10, epochs=a.epochs),
               network="MLP 784-1024-1024-10, squared loss, train.fit", seeds=[])
    ds = data.load_dataset("mnist", manual_dir=a.manual_dir, max_test=10)
    for seed in a.seeds:
        def partial(rec):
            write(dict(res, seeds=res["seeds"] + [rec], load_avg_end=common.load_avg()),
                  a.out)

        res["seeds"].append(cost_seed(ds, seed, a, partial))
        res["load_avg_end"] = common.load_avg()
        write(res, a.out)
    return res


def run_scale(a) -> dict:
    out = a.out
    res = dict(machine=machine(), code=code_version(), note=a.note,
               load_avg_start=common.load_avg(), cases={})
    ds = data.load_dataset("mnist", manual_dir=a.manual_dir, max_test=10)
    seed = a.seeds[0]
    opts = dict(features="projected", projection_dim=1024, eval_subset=500)
    # 1. the whole MNIST pool
    model, st, x_l, y_l, x_u, _ = trained_mlp(ds, seed, 100, 59_900, a.epochs)
    t, sel = timed(lambda: strategies.get("mlmoc")(context(model, st, x_l, y_l, x_u, seed,
                                                           opts)))
    res["cases"]["whole_pool"] = dict(U=int(len(x_u)), E_subset=500, k=1024, seconds=t,
                                      info={k: float(v) for k, v in sel.info.items()},
                                      rss_gib=_rss())
    write(res, out)
    try:
        _scale_large_l(ds, seed, opts, res, out)
    except Exception as e:  # noqa: BLE001  (a miss is recorded as a miss)
        res["cases"]["L20000"] = dict(error=repr(e))
    try:
        _scale_million(seed, res, out)
    except Exception as e:  # noqa: BLE001
        res["cases"]["million"] = dict(error=repr(e))
    res["load_avg_end"] = common.load_avg()
    write(res, out)
    return res


def _scale_large_l(ds, seed, opts, res, out):
    """L = 20,000 (one acquisition, then 100 sequential steps), projected, m = 500."""
    model, st, x_l, y_l, x_u, _ = trained_mlp(ds, seed, 20_000, 4000, 3)
    truth = ds.y_train  # labels looked up by candidate position below
    perm = np.random.default_rng(seed).permutation(ds.x_train.shape[0])
    y_u = truth[np.sort(perm[20_000:24_000])]
    t, sel = timed(lambda: strategies.get("mlmoc")(context(model, st, x_l, y_l, x_u, seed,
                                                           opts)))
    t2, sel2 = timed(lambda: strategies.get("mlmoc")(context(
        model, st, x_l, y_l, x_u, seed, opts, query=100, label_fn=lambda j: int(y_u[j]))))
    res["cases"]["L20000"] = dict(L=20_000, U=4000, E_subset=500, k=1024,
                                  acquisition_s=t, sequential_100_steps_s=t2,
                                  rss_gib=_rss())
    write(res, out)


def _scale_million(seed, res, out):
    """1,000,000 candidates, 128-d embeddings, an MLP head 128-256-10, k = 256, m = 500."""
    head = models.get_model("mlp", 10, widths=(256,))
    gen = np.random.default_rng(seed)
    emb = gen.normal(size=(1_000_000, 128)).astype(np.float32)
    lab = gen.normal(size=(100, 128)).astype(np.float32)
    y = gen.integers(0, 10, 100).astype(np.int32)
    cfg = train.TrainConfig(epochs=20, batch_size=32, learning_rate=0.01)  # 0.05 diverged
    hs = train.create_train_state(head, head.init(rng.key(seed, "init"), lab[:1]), cfg)
    hs, _ = train.fit(hs, lab, y, cfg, key=rng.key(seed, "train"))
    t, sel = timed(lambda: strategies.get("mlmoc")(context(
        head, hs, lab, y, emb, seed, dict(features="projected", projection_dim=256,
                                          eval_subset=500, chunk_size=4096))))
    res["cases"]["million"] = dict(U=1_000_000, d=128, head="MLP 128-256-10", k=256,
                                   E_subset=500, seconds=t, rss_gib=_rss())
    write(res, out)


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def write(res, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    common.write_json(out, res)


def table(path, grid: bool = False) -> str:
    """The README table of a cost JSON (``grid``: its accuracy grid) or a scale JSON."""
    res = json.load(open(path))
    lines = []
    if "cases" in res:
        c = res["cases"]
        lines += ["| case | seconds | peak RSS |", "|---|---|---|"]
        if "whole_pool" in c:
            w = c["whole_pool"]
            lines.append(f"| whole MNIST pool U = {w['U']:,}, k = 1024, m = 500 | "
                         f"{w['seconds']:.1f} | {w['rss_gib']:.1f} GiB |")
        if "L20000" in c and "error" not in c["L20000"]:
            w = c["L20000"]
            lines.append(f"| L = 20,000, U = 4000: one acquisition | {w['acquisition_s']:.1f} "
                         f"| {w['rss_gib']:.1f} GiB |")
            lines.append(f"| L = 20,000: 100 sequential steps (kernels included) | "
                         f"{w['sequential_100_steps_s']:.1f} | |")
        if "million" in c and "error" not in c["million"]:
            w = c["million"]
            lines.append(f"| U = 1,000,000 (128-d, MLP head), k = 256, m = 500 | "
                         f"{w['seconds']:.1f} | {w['rss_gib']:.1f} GiB |")
        lines.append(f"\nload average {res['load_avg_start'][0]:.1f} → "
                     f"{res.get('load_avg_end', [float('nan')])[0]:.1f}")
        return "\n".join(lines)
    seeds = res["seeds"]
    if "calls" not in seeds[0]:                       # an --accuracy-only JSON
        grid, names = True, None
    else:
        names = list(seeds[0]["calls"])
    med = {} if names is None else {n: float(np.median([t for s in seeds for t in s["calls"][n]])) for n in names}
    lines += [f"| strategy | seconds (median) | × BADGE | top-20 shared | Spearman | "
              f"score ratio |", "|---|---|---|---|---|---|"]
    for n in names or ():
        ag = [s["agreement"][n] for s in seeds if n in s["agreement"]]
        rng_ = lambda key, fmt: ("–".join(fmt.format(v) for v in  # noqa: E731
                                          sorted({min(x[key] for x in ag),
                                                  max(x[key] for x in ag)}))
                                 if ag and key in ag[0] else "")
        lines.append(f"| {n} | {med[n]:.3g} | {med[n] / med['BADGE']:.2f} | "
                     f"{rng_('top20_shared', '{}')} | {rng_('spearman', '{:.3f}')} | "
                     f"{rng_('score_ratio', '{:.4f}')} |")
    if grid:
        lines = []
    lines += ["| approximation | kernel rel. error | top-20 shared | Spearman | "
              "score ratio |", "|---|---|---|---|---|"] if grid else []
    for g in (seeds[0].get("grid", {}) if grid else ()):
        ag = [s["grid"][g] for s in seeds if "grid" in s]
        cell = lambda key, fmt: ("" if key not in ag[0] else "–".join(  # noqa: E731
            fmt.format(v) for v in sorted({min(x[key] for x in ag), max(x[key] for x in ag)})))
        label = g if "actual_k" not in ag[0] else f"{g} (k used {ag[0]['actual_k']})"
        lines.append(f"| {label} | {cell('kernel_rel_err', '{:.3f}')} | "
                     f"{cell('top20_shared', '{}')} | {cell('spearman', '{:.3f}')} | "
                     f"{cell('score_ratio', '{:.4f}')} |")
    load = (f"load average {res['load_avg_start'][0]:.1f} → "
            f"{res.get('load_avg_end', [float('nan')])[0]:.1f}")
    if names is None:
        lines.append(f"\nsketch {res['sketch']}, seeds {[s['seed'] for s in seeds]}, one "
                     f"untimed call each; {load}")
    else:
        lines.append(f"\nseeds {[s['seed'] for s in seeds]}, "
                     f"{len(seeds[0]['calls'][names[0]])} interleaved rounds each; {load}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manual_dir", default=DEFAULT_MNIST)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--pool", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--million-only", action="store_true",
                    help="with --scale: rerun only the 10⁶-candidate case into the JSON")
    ap.add_argument("--accuracy-only", action="store_true",
                    help="only the accuracy grid (ACC_GRID) of --sketch, into its own JSON")
    ap.add_argument("--sketch", default="khatri_rao", choices=projected.SKETCHES)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="")
    ap.add_argument("--table", default=None, help="print the README table of this JSON")
    ap.add_argument("--grid-table", default=None, help="print the accuracy grid of this JSON")
    a = ap.parse_args(argv)
    if a.table or a.grid_table:
        print(table(a.table) if a.table else table(a.grid_table, grid=True))
        return
    if a.accuracy_only:
        a.out = a.out or os.path.join(RESULTS, f"projected_accuracy_{a.sketch}_cpu.json")
        run_accuracy(a)
        print(table(a.out, grid=True))
        return
    a.out = a.out or os.path.join(RESULTS, "projected_scale_cpu.json" if a.scale
                                  else "projected_cost_cpu.json")
    if a.scale and a.million_only:
        res = json.load(open(a.out))
        try:
            _scale_million(a.seeds[0], res, a.out)
        except Exception as e:  # noqa: BLE001
            res["cases"]["million"] = dict(error=repr(e))
        res["load_avg_end"] = common.load_avg()
        write(res, a.out)
    else:
        (run_scale if a.scale else run_cost)(a)
    print(table(a.out))


if __name__ == "__main__":
    main()
