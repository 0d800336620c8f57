"""Why notebook 01's first MLMOC query looks the way it does (issue 24, item 8).

Notebook 01 (digits, MLP 256-256, 30 initial labels, queries of 20 from 600 candidates)
showed a first MLMOC query of 16 of 20 digits of one class and MLMOC behind random at
50-70 labels. This measures, per seed, at the first query (f_L trained on 30 labels):

  * the pseudo-label balance of f_L over the unlabeled pool and the candidates,
  * MLMOC's scores per pseudo-label class (mean, and the class of the top 20),
  * the first query's class counts for the paper's top-k batch, the batch-aware greedy
    batch (``batch_mode="greedy"``) and the other kernels (``kernel=sum_logits/full``),

and (``--curves``) the notebook's learning curves (``--cycles`` of them) for random, MLMOC (top-k) and MLMOC
(greedy) on the same seeds. Writes benchmarks/results/quickstart_first_query.json.

    python benchmarks/quickstart_first_query.py --seeds=0,1,2 --curves --cycles=5
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))    # benchmarks/common.py
import common  # noqa: E402

from lookahead_jax import data, loop, models, strategies, train
from lookahead_jax.workdir import Workdir

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "quickstart_first_query.json")
C = 10


def notebook_config(seed, cycles, **options):
    """Notebook 01's configuration (tools/make_notebooks.py, quickstart())."""
    return loop.LoopConfig(
        dataset="digits", model="mlp", model_kwargs=(("widths", (256, 256)),),
        cycles=cycles, initial_size=30, query_size=20, subset_size=600, seed=seed,
        strategy="mlmoc", strategy_options=tuple(sorted(options.items())),
        train=train.TrainConfig(epochs=30, batch_size=32, learning_rate=0.05))


def counts(labels):
    return np.bincount(np.asarray(labels, int), minlength=C).tolist()


def first_query(seed, ds):
    """Trains f_L on the seed's 30 initial labels (the loop's own cycle 0), then scores
    600 random unlabeled candidates with each MLMOC variant."""
    with tempfile.TemporaryDirectory(prefix="quickstart_measure_") as tmp:
        res = loop.run(notebook_config(seed, 1), tmp, dataset=ds, log=lambda m: None)
        model = models.get_model("mlp", C, widths=(256, 256))
        fresh = model.init(jax.random.key(0), ds.x_train[:1])
        with Workdir(tmp) as wd:
            params, state = wd.load_variables(0, fresh)
    labeled = np.asarray(res.state.labeled)
    unl = np.flatnonzero(~labeled)
    logits = np.asarray(train.predict(model, models.Variables(params, state),
                                      ds.x_train[unl], 1000))
    cand = np.random.default_rng(seed).choice(unl, 600, replace=False)
    pseudo_c = np.argmax(np.asarray(train.predict(model, models.Variables(params, state),
                                                  ds.x_train[cand], 1000)), -1)
    out = {"seed": seed, "labeled_counts": counts(ds.y_train[labeled]),
           "test_accuracy_fL": res.metrics[0]["test_accuracy"],
           "pseudo_label_counts_pool": counts(np.argmax(logits, -1)),
           "pseudo_label_counts_candidates": counts(pseudo_c),
           "variants": {}}
    for name, opts in (("topk_first_logit", {}), ("greedy_first_logit",
                                                  {"batch_mode": "greedy"}),
                       ("topk_sum_logits", {"kernel": "sum_logits"}),
                       ("topk_full", {"kernel": "full"})):
        ctx = strategies.AcquisitionContext(
            model=model, params=params, state=state, x_labeled=ds.x_train[labeled],
            y_labeled=ds.y_train[labeled], x_candidates=ds.x_train[cand], num_classes=C,
            query_size=20, key=jax.random.key(seed), options=opts)
        sel = strategies.get("mlmoc")(ctx)
        scores = np.asarray(sel.scores, np.float64)
        per_class = [float(scores[pseudo_c == c].mean()) if np.any(pseudo_c == c) else None
                     for c in range(C)]
        out["variants"][name] = {
            "query_true_label_counts": counts(ds.y_train[cand[sel.indices]]),
            "query_pseudo_label_counts": counts(pseudo_c[sel.indices]),
            "mean_score_per_pseudo_class": per_class,
            "top20_pseudo_label_counts": counts(pseudo_c[np.argsort(-scores)[:20]]),
        }
    return out


def curves(seed, ds, cycles):
    rows = {}
    for name, strategy, opts in (("random", "random", {}), ("mlmoc_topk", "mlmoc", {}),
                                 ("mlmoc_greedy", "mlmoc", {"batch_mode": "greedy"})):
        cfg = notebook_config(seed, cycles, **opts)
        cfg = loop.LoopConfig.from_dict({**cfg.to_dict(), "strategy": strategy})
        res = loop.run(cfg, None, dataset=ds, log=lambda m: None)
        rows[name] = [[m["num_labeled"], m["test_accuracy"]] for m in res.metrics]
    return {"seed": seed, "curves": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--curves", action="store_true")
    p.add_argument("--cycles", type=int, default=5, help="of the curves (30 + 20 per cycle)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ds = data.load_dataset("digits")
    load_before = tuple(common.load_avg())
    t0 = time.time()
    result = {"first_query": [first_query(s, ds) for s in seeds]}
    if args.curves:
        result["curves"] = [curves(s, ds, args.cycles) for s in seeds]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    result.update(machine=common.machine_info()["platform"], cpus=os.cpu_count(),
                  devices=[str(d) for d in jax.devices()], seeds=seeds,
                  sizes={"initial": 30, "query": 20, "candidates": 600, "pool": 1437},
                  load_average_before=load_before, load_average_after=tuple(common.load_avg()),
                  seconds=round(time.time() - t0, 1), commit=commit)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    common.write_json(OUT, result)
    print(json.dumps(result["first_query"], indent=1)[:6000])


if __name__ == "__main__":
    main()
