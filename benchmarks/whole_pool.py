"""Whole-pool MLMOC on MNIST, timed in full: every unlabeled training image scored.

The paper's MNIST setting at the scale of the whole pool (issue 15, part 3): a
784-1024-1024-10 MLP f_L trained on L = 100 random labels (squared loss, the library's
``train.fit``), then one MLMOC acquisition (Eq. 12-13) through the strategy API with
``streaming=True`` over **all** U = E = 59,900 unlabeled images: Θ(U, U) is never held,
row blocks Θ(U[s:s+k], U) are contracted from the pool's NTK features and scored on the
device. Nothing is extrapolated: the acquisition is timed from the trained network to the
chosen indices.

Recorded (JSON): the wall time of the acquisition and its phases (kernels: features and
diagonal; the streamed row-block scoring), peak RSS of the process, the FLOP count of the
kernel contraction (the engine's own count, :func:`lookahead_jax.ntk.kernel_cost`),
a float32 matmul peak measured in the same process just before and after, and the
achieved fraction of that peak; machine, load average before/after, sizes and seeds.

    python benchmarks/whole_pool.py [--manual_dir ../shared/data/mnist] [--taskset-note "core 1"]
    python benchmarks/whole_pool.py --quick        # U = 2,000, written under /tmp

Pin it with ``taskset -c N`` and keep other heavy work off that core; the JSON records the
load average so a reader can judge.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from lookahead_jax import data, models, ntk, rng, strategies, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MNIST = os.path.join(HERE, "..", "..", "shared", "data", "mnist")


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Median float32 GFLOP/s of one jitted ``(n, n) @ (n, n)`` (benchmarks/common.py)."""
    return common.matmul_peak(n, repeats)["gflops"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manual_dir", default=DEFAULT_MNIST)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--pool", type=int, default=None, help="default: every training image")
    ap.add_argument("--query", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=256, help="row block k of the streaming")
    ap.add_argument("--epochs", type=int, default=50)   # as configs/mnist_mlp.py
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="U = 2,000 smoke run, to /tmp")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="free text recorded (e.g. the pinning)")
    a = ap.parse_args(argv)
    if a.quick:
        a.pool = a.pool or 2000
    out = a.out or (os.path.join("/tmp", "whole_pool_quick.json") if a.quick else
                    os.path.join(HERE, "results", "whole_pool_cpu.json"))
    res = dict(machine=common.machine_info(), code=common.git_commit(), note=a.note,
               load_avg_start=common.load_avg(),
               seed=a.seed, quick=a.quick)
    t_all = time.perf_counter()

    ds = data.load_dataset("mnist", manual_dir=a.manual_dir, max_test=10)
    gen = np.random.default_rng(a.seed)
    perm = gen.permutation(ds.x_train.shape[0])
    lab = perm[:a.labeled]
    unl = np.sort(perm[a.labeled:] if a.pool is None else perm[a.labeled:a.labeled + a.pool])
    x_l, y_l, x_u = ds.x_train[lab], ds.y_train[lab], ds.x_train[unl]
    res["sizes"] = dict(L=int(len(lab)), U=int(len(unl)), E=int(len(unl)), C=10,
                        query=a.query, chunk=a.chunk)

    model = models.get_model("mlp", 10, widths=(1024, 1024))
    cfg = train.TrainConfig(epochs=a.epochs, batch_size=32, learning_rate=0.05)
    variables = model.init(rng.key(a.seed, "init"), x_l[:1])
    tstate = train.create_train_state(model, variables, cfg)
    t0 = time.perf_counter()
    tstate, loss = train.fit(tstate, x_l, y_l, cfg, key=rng.key(a.seed, "train"))
    res["train_s"] = time.perf_counter() - t0
    res["train_loss"] = loss
    res["network"] = "MLP 784-1024-1024-10, squared loss, the library's train.fit"

    res["peak_gflops_before"] = matmul_peak_gflops()
    cost = ntk.kernel_cost(
        (lambda p, x: model.apply(p, tstate.model_state, x)), tstate.params,
        x_u[:2], x_u[:2], output="first_logit")
    pair = cost["pair_flops"]
    U = len(unl)
    # the streamed scoring contracts every row block against the whole pool (U² pairs),
    # plus the diagonal blocks (U·k pairs) and Θ(U, L)
    res["kernel_flops"] = dict(pair_flops=pair, uu=pair * U * U, diag=pair * U * a.chunk,
                               ul=pair * U * a.labeled, implementation=cost["implementation"])
    total_flops = pair * (U * U + U * a.chunk + U * a.labeled)

    mlmoc = strategies.get("mlmoc")
    ctx = strategies.AcquisitionContext(
        model=model, params=tstate.params, state=tstate.model_state,
        x_labeled=x_l, y_labeled=y_l, x_candidates=x_u, num_classes=10,
        query_size=a.query, key=rng.key(a.seed, "acquire", 0), loss="mse",
        options=dict(streaming=True, chunk_size=a.chunk))
    t0 = time.perf_counter()
    sel = mlmoc(ctx)
    picks = np.asarray(sel.indices)
    res["acquisition_s"] = time.perf_counter() - t0
    info = {k: float(v) for k, v in dict(sel.info).items()}
    res["acquisition_info"] = info
    res["peak_gflops_after"] = matmul_peak_gflops()
    peak = max(res["peak_gflops_before"], res["peak_gflops_after"])
    res["achieved_gflops_whole_acquisition"] = total_flops / res["acquisition_s"] / 1e9
    res["fraction_of_peak_whole_acquisition"] = res["achieved_gflops_whole_acquisition"] / peak
    res["floor_s_at_peak"] = total_flops / (peak * 1e9)
    res["picks"] = [int(unl[i]) for i in picks]
    scores = np.asarray(sel.scores) if sel.scores is not None else None
    if scores is not None:
        res["scores_finite"] = bool(np.all(np.isfinite(scores)))
        res["top_scores"] = [float(s) for s in np.sort(scores)[::-1][:5]]
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    res["load_avg_end"] = common.load_avg()
    res["wall_s"] = time.perf_counter() - t_all
    res["targets"] = {"peak_rss<=8GiB": res["peak_rss_gib"] <= 8,
                      "fraction_of_peak>=0.6": res["fraction_of_peak_whole_acquisition"] >= 0.6}
    common.write_json(out, res, indent=1)
    print(json.dumps({k: res[k] for k in ("sizes", "acquisition_s", "floor_s_at_peak",
                                          "fraction_of_peak_whole_acquisition",
                                          "peak_rss_gib", "targets")}, indent=1))
    print("wrote", out)
    return res


if __name__ == "__main__":
    main()
