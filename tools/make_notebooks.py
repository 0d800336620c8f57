"""Writes notebooks/*.ipynb from the cell sources below (outputs empty).

    python tools/make_notebooks.py

Edit the cells here, rerun, commit both. Each notebook reads LOOKAHEAD_NOTEBOOK_SMOKE=1
(set by tests/test_notebooks.py) to run a tiny configuration.
"""

import importlib.util
import json
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "notebooks")
THEOREM31_JSON = os.path.join(ROOT, "benchmarks", "results", "theorem31_cpu.json")

INSTALL = '''\
# @title Install lookahead-jax (Colab only; elsewhere `pip install` the repository first)
# PACKAGE: where Colab gets the package. Either the project's git URL, as
# "git+https://<host>/<owner>/lookahead-jax", or a wheel you uploaded in the Files panel,
# as "/content/lookahead_jax-0.1.0-py3-none-any.whl" (build one with `pip wheel --no-deps .`).
PACKAGE = ""  # @param {type:"string"}
import sys
if "google.colab" in sys.modules:
    if PACKAGE:
        %pip install -q "{PACKAGE}"
    else:
        print("Set PACKAGE in this cell (a git URL of the repository or an uploaded wheel), "
              "then run it again.")
'''

ACCELERATOR = '''\
# @title Which accelerator, and the precision policy (lookahead_jax/precision.py)
import jax
from lookahead_jax import precision
_dev = jax.devices()[0]
print(f"JAX {jax.__version__} on {_dev.platform.upper()} ({_dev.device_kind}), "
      f"{jax.device_count()} device(s)")
if _dev.platform in ("tpu", "gpu"):
    # TPUs run float32 matmuls as one bfloat16 pass and recent GPUs as TF32 unless told
    # otherwise: the look-ahead algebra needs full float32 (README, "Precision").
    # "fast_kernel" lowers only the kernel's precision, measured not to move the picks.
    precision.set_policy("highest")
print("precision policy:", precision.policy())
'''

SMOKE = '''\
import os
SMOKE = os.environ.get("LOOKAHEAD_NOTEBOOK_SMOKE") == "1"  # tiny settings for CI
'''


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


def quickstart():
    return [
        md("""
# Quickstart: active learning with the NTK look-ahead

We label digits one batch at a time. Every cycle, a small MLP is trained on the labeled
set and the next points to label are chosen by one of two strategies: **random**, or
**MLMOC**. MLMOC is the paper's look-ahead: for each candidate x′ it asks how much the
network's outputs on the pool would change if it were retrained with x′ and its
pseudo-label. Retraining is predicted with the empirical neural tangent kernel (Eq. 11–13)
instead of being run. The whole run uses the same library call as
`python -m experiments.main`.
"""),
        code(INSTALL),
        code(ACCELERATOR),
        code(SMOKE + '''
import tempfile
import matplotlib.pyplot as plt
import numpy as np
from lookahead_jax import data, loop, train
'''),
        md("""
The embedded `digits` dataset (scikit-learn's 8×8 images, 1,437 training / 360 test) needs
no download. The configuration is an immutable `LoopConfig`.
"""),
        code('''
ds = data.load_dataset("digits")
config = loop.LoopConfig(
    dataset="digits", model="mlp", model_kwargs=(("widths", (256, 256)),),
    cycles=3 if SMOKE else 8, initial_size=30, query_size=10 if SMOKE else 20,
    subset_size=200 if SMOKE else 600, seed=0,
    train=train.TrainConfig(epochs=5 if SMOKE else 30, batch_size=32, learning_rate=0.05))
records_dir = tempfile.TemporaryDirectory(prefix="quickstart_")  # removed when done
workdir = records_dir.name
results = loop.run_strategies(config, ["random", "mlmoc"], workdir, dataset=ds)
for name, r in results.items():
    print(f"{name:>7}:", " ".join(f"{100 * m['test_accuracy']:.1f}%" for m in r.metrics))
'''),
        md("Test accuracy against the number of labels, read from each run's `metrics.jsonl`:"),
        code('''
fig, ax = plt.subplots(figsize=(6, 4))
for name, r in results.items():
    ax.plot([m["num_labeled"] for m in r.metrics],
            [100 * m["test_accuracy"] for m in r.metrics], marker="o", label=name)
ax.set_xlabel("labeled examples"); ax.set_ylabel("test accuracy (%)"); ax.grid(alpha=.3)
ax.legend(); plt.show()
'''),
        md("""
What did MLMOC ask for? The first query, with the labels the oracle revealed. The time
spent scoring each cycle is in the metrics too.
"""),
        code('''
q = results["mlmoc"].queries[0]
fig, axes = plt.subplots(1, min(10, len(q["indices"])), figsize=(12, 1.6))
for ax, i, y in zip(axes, q["indices"], q["labels"]):
    ax.imshow(ds.x_train[i, :, :, 0], cmap="gray"); ax.set_title(str(y)); ax.axis("off")
plt.show()
print("seconds scoring per cycle:",
      [round(m["seconds_score"], 2) for m in results["mlmoc"].metrics])
'''),
        md("""
**Why is that query mostly one digit?** With seed 0 the 30 random initial labels hold no
2 at all (and one 0, one 1, one 8), so f_L never predicts a 2. The items whose labels
would move the network most are then the 2s it gets wrong, and the paper's batch mode
takes the top 20 scores, each scored on its own (no diversity term): similar items score
alike, so one class fills the query. Measured at the first query with
`benchmarks/quickstart_first_query.py` (results in
`benchmarks/results/quickstart_first_query.json`; 600 candidates, per seed; how many
of the 20 asked are of the most-asked class):

| seed | its initial labels | top 20: first_logit / sum_logits / full | greedy |
|---|---|---|---|
| 0 | 0 (digit 2) | 13 / 11 / 9 | 3 |
| 1 | 2 (digit 3) | 13 / 7 / 11 | 8 |
| 2 | 1 (digit 1) | 17 / 15 / 13 | 5 |

So it is not the kernel choice and not a defect: it is the pseudo-label imbalance of a
30-label f_L (the class it under-predicts is asked for) together with top-k selection.
Seed 0 also makes MLMOC trail random at 50–70 labels (73.3% / 80.0% against 80.0% /
83.3%); with seeds 1 and 2 it leads (81.9% / 89.2% against 71.1% / 80.0%, and 81.9% /
88.3% against 75.6% / 81.9%). The batch-aware greedy mode, `strategy_options=(("batch_mode",
"greedy"),)`, picks one candidate at a time and absorbs it with its pseudo-label before
scoring the rest; it spread these queries and, over the three seeds, reached 82.0% /
86.9% at 50 / 70 labels (top-k 79.0% / 85.8%, random 75.6% / 81.7%). The cell below
counts the classes of this run's initial set and first query.
"""),
        code('''
r = results["mlmoc"]
asked = np.concatenate([q["indices"] for q in r.queries])
initial = np.setdiff1d(np.flatnonzero(np.asarray(r.state.labeled)), asked)
print("initial labels per class:", np.bincount(ds.y_train[initial], minlength=10))
print("first query per class:   ", np.bincount(r.queries[0]["labels"], minlength=10))
'''),
        md("""
One seed on a small dataset is noisy. `python -m experiments.figures --figure=fig2` runs
the multi-seed comparison with confidence intervals.

The runs' records (`metrics.jsonl`, `queries.jsonl`, checkpoints, the plot) were written
to a temporary folder; this removes it (skip the cell to look at them first, in `workdir`).
"""),
        code('''
records_dir.cleanup()
'''),
    ]


def theorem31_table() -> str:
    """benchmarks/theorem31.py's Markdown table of the committed JSON (never typed by hand)."""
    spec = importlib.util.spec_from_file_location(
        "theorem31", os.path.join(ROOT, "benchmarks", "theorem31.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(THEOREM31_JSON) as f:
        return mod.markdown_table(json.load(f))


def inside_lookahead():
    return [
        md("""
# Inside the look-ahead: Eq. 11 against real retraining

For a candidate x′ with pseudo-label y′, the look-ahead needs f_{L+}, the network
retrained on L ∪ {(x′, y′)}. The paper predicts it with the empirical NTK Θ of the
trained network f_L (Eq. 11):

f_{L+}(x) ≈ f_L(x) + Θ(x, X⁺) Θ(X⁺, X⁺)⁻¹ (Y⁺ − f_L(X⁺)).

Here we compute Θ with our engine (`lookahead_jax.ntk`), make that prediction, and then
*actually* retrain the network, warm-started from f_L, with full-batch gradient descent
on squared loss. We do this for a narrow and a wide one-hidden-layer MLP. Theorem 3.1 and
Lee et al. (2019) say the two should agree better as the width grows.
"""),
        code(INSTALL),
        code(ACCELERATOR),
        code(SMOKE + """
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from lookahead_jax import data, lookahead, models, ntk

jax.config.update("jax_enable_x64", True)   # float64: we compare small differences
ds = data.load_dataset("digits")
rng = np.random.default_rng(0)
idx = rng.permutation(len(ds.x_train))
n_l, n_c = (20, 4) if SMOKE else (40, 8)
x_l, y_l = ds.x_train[idx[:n_l]], ds.y_train[idx[:n_l]]         # labeled set L
x_c = ds.x_train[idx[n_l:n_l + n_c]]                              # candidates x'
x_e = ds.x_test[:100 if SMOKE else 300]                           # where outputs are compared
WIDTHS = (64, 512) if SMOKE else (128, 4096)
STEPS = 300 if SMOKE else 3000
"""),
        md("""
Full-batch gradient descent on ½‖onehot(y) − f(x)‖², averaged over the batch. The step
size is set from the NTK itself: η = n / λ_max(Θ(X, X)) is stable for the linearised
dynamics.
"""),
        code("""
def gd(f, params, x, y, lr, steps):
    t = jax.nn.one_hot(y, 10, dtype=jnp.float64)
    loss = lambda p: 0.5 * jnp.mean(jnp.sum((f(p, x) - t) ** 2, -1))
    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)))
    for _ in range(steps):
        params = step(params)
    return params, float(loss(params))
"""),
        code("""
results = {}
for width in WIDTHS:
    model = models.get_model("mlp", 10, widths=(width,))
    v = model.init(jax.random.key(0), ds.x_train[:1])
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v.params)
    f = model.bind(v.state)                                  # f(params, x), evaluation mode
    kernel = ntk.empirical_ntk_fn(f, output="full")            # (n1, n2, C, C)
    lr = n_l / float(jnp.linalg.eigvalsh(
        kernel(params, x_l).transpose(0, 2, 1, 3).reshape(n_l * 10, -1))[-1])
    params_l, loss_l = gd(f, params, x_l, y_l, lr, STEPS)     # f_L
    f_l_e = f(params_l, x_e)
    pred, real = [], []
    for j in range(n_c):
        xp = x_c[j:j + 1]
        yp = int(jnp.argmax(f(params_l, xp)))                  # pseudo-label y'
        x_plus, y_plus = np.concatenate([x_l, xp]), np.append(y_l, yp)
        # Eq. 11 with the full empirical NTK of f_L, solved directly
        k_pp = kernel(params_l, x_plus).transpose(0, 2, 1, 3).reshape(len(x_plus) * 10, -1)
        k_ep = kernel(params_l, x_e, x_plus).transpose(0, 2, 1, 3).reshape(len(x_e) * 10, -1)
        resid = (jax.nn.one_hot(y_plus, 10) - f(params_l, x_plus)).reshape(-1)
        pred.append((k_ep @ jnp.linalg.solve(k_pp, resid)).reshape(len(x_e), 10))
        # real retraining, warm-started from f_L
        params_plus, _ = gd(f, params_l, x_plus, y_plus, lr, STEPS)
        real.append(f(params_plus, x_e) - f_l_e)
    pred, real = np.stack(pred), np.stack(real)
    rel = np.linalg.norm(pred - real) / np.linalg.norm(real)
    results[width] = (pred, real, rel)
    print(f"width {width:5d}: train loss of f_L {loss_l:.2e}, "
          f"relative error of Eq. 11 vs retraining {rel:.3f}")
"""),
        md("Each dot is one output of one evaluation point for one candidate: predicted change "
           "against real change."),
        code("""
fig, axes = plt.subplots(1, len(WIDTHS), figsize=(5 * len(WIDTHS), 4.2))
for ax, (width, (pred, real, rel)) in zip(axes, results.items()):
    ax.scatter(real.ravel(), pred.ravel(), s=2, alpha=0.3)
    lim = np.abs(real).max() * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set_title(f"width {width}: relative error {rel:.3f}")
    ax.set_xlabel("real change f_L+ − f_L (retrained)")
    ax.set_ylabel("predicted change (Eq. 11)")
plt.tight_layout(); plt.show()
"""),
        md("""
## Over seeds: `benchmarks/theorem31.py`

The run above is one seed, one labeled set and one network per width, so its two numbers
say little about how the error behaves in general. `benchmarks/theorem31.py` repeats the
comparison over seeds (each seed: a new initialisation, labeled set, candidates and
evaluation points) at widths 256, 1024 and 4096, for the single-logit kernel the
strategies use by default and for the full C × C kernel. The network there is a
one-hidden-layer tanh MLP in the NTK parameterisation (the setting of the paper's proof),
trained with full-batch gradient descent until every training residual is below 1e-8,
then retrained warm from f_L on L⁺ to the same tolerance. The toy problem is 3-d inputs,
2 classes, 8 labeled points and 1 candidate per seed; digits is 30 labeled points, 3
candidates and 200 test points per seed. The relative error
‖f_{L+} − f^lin_{L+}‖ / ‖f_{L+} − f_L‖ on the evaluation points, median [min, max] over
seeds:

""" + theorem31_table() + """

Made by `taskset -c 0 python benchmarks/theorem31.py` on one CPU core (49 min; every
per-seed number, the residual of every training, the machine and the load average are in
`benchmarks/results/theorem31_cpu.json`; `python benchmarks/theorem31.py --table
benchmarks/results/theorem31_cpu.json` prints this table). Every seed's error fell from
width 256 to 1024 to 4096, on both problems and with both kernels. The full kernel's
error falls about like 1/width (median ÷14 to ÷15 from 256 to 4096), as the kernel's
drift during retraining does: that is the linearisation error Theorem 3.1 says vanishes.
The single-logit kernel's error falls only about like 1/√width (÷3.5 to ÷4.1), and at width
4096 it is 15 to 26 times the full kernel's on digits. Θ¹ ⊗ I_C leaves out the differences
between the output units' kernels (and the kernel between different outputs), a
finite-width fluctuation that shrinks more slowly than the drift. The spread over seeds
is wide (toy, full kernel, width 256: median 0.034, worst seed 0.39), so compare widths
over seeds, not from one run like the one above.
"""),
        md("""
MLMOC scores are sums of these changes (Eq. 13). Do the predicted scores rank the
candidates the way real retraining does?
"""),
        code("""
for width, (pred, real, _) in results.items():
    s_pred = np.linalg.norm(pred, axis=-1).sum(-1)
    s_real = np.linalg.norm(real, axis=-1).sum(-1)
    rank = lambda a: np.argsort(np.argsort(a))
    rho = np.corrcoef(rank(s_pred), rank(s_real))[0, 1]
    print(f"width {width}: Spearman correlation of MLMOC scores, NTK vs retraining: {rho:.2f}")
"""),
        md("""
The library does the same algebra for every candidate at once, through the
Schur-complement block form (Eq. 12) and without an explicit inverse. Here we check it
against the direct solves above for the widest network, using the single-logit kernel ⊗ I
that the paper uses and the full kernel.
"""),
        code("""
width = WIDTHS[-1]
model = models.get_model("mlp", 10, widths=(width,))
v = model.init(jax.random.key(0), ds.x_train[:1])
f = model.bind(v.state)
params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v.params)
params_l, _ = gd(f, params, x_l, y_l, lr, STEPS)
k = ntk.kernel_set(f, params_l, x_l, x_c, output="full")
k_el = ntk.empirical_ntk_fn(f, output="full")(params_l, x_e, x_l)
k_eu = ntk.empirical_ntk_fn(f, output="full")(params_l, x_e, x_c)
state, spec, info = lookahead.build_system(
    k.ll, k.ul, y_l, f(params_l, x_l), f(params_l, x_c), num_classes=10, k_uu=k.uu,
    k_el=k_el, k_eu=k_eu, f_e=f(params_l, x_e), jitter=0.0)
block_form = np.asarray(lookahead.lookahead_outputs(spec, state)) - np.asarray(f(params_l, x_e))
print("max |Eq. 12 block form − direct solve|:", float(np.abs(block_form - results[width][0]).max()))
"""),
    ]


def sequential_labeling():
    return [
        md("""
# Sequential labeling: the kernel system learns between SGD runs

Suppose annotation is fast but training is slow. In the paper's sequential mode, the
linearised network f^lin takes each true label the moment it arrives. The label joins
the NTK system as one more row of the Cholesky factor and a rank-one update of every
candidate's look-ahead, and no new kernel entries are computed. SGD retraining happens
only at the end.

A simulated annotator answers at once. We track the test accuracy of the linearised
model after every label, for MLMOC picks and for random picks.
"""),
        code(INSTALL),
        code(ACCELERATOR),
        code(SMOKE + """
import time
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from lookahead_jax import data, lookahead, models, ntk, train

ds = data.load_dataset("digits")
rng = np.random.default_rng(0)
perm = rng.permutation(len(ds.x_train))
n_l, n_u, steps = (20, 120, 10) if SMOKE else (30, 600, 60)
lab, cand = perm[:n_l], perm[n_l:n_l + n_u]
x_e, y_e = ds.x_test, ds.y_test
"""),
        md("Train f_L with SGD on the first labels, then compute every kernel this cycle needs, once."),
        code("""
model = models.get_model("mlp", 10, widths=(512, 512))
v = model.init(jax.random.key(0), ds.x_train[:1])
cfg = train.TrainConfig(epochs=10 if SMOKE else 50, batch_size=16, learning_rate=0.05)
state_l, _ = train.fit(train.create_train_state(model, v, cfg), ds.x_train[lab],
                       ds.y_train[lab], cfg, key=jax.random.key(0))
f, params = model.bind(state_l.model_state), state_l.params
print("network test accuracy with", n_l, "labels:",
      train.accuracy(model, state_l.variables, x_e, y_e))

t0 = time.perf_counter()
x_l, x_u = ds.x_train[lab], ds.x_train[cand]
k = ntk.kernel_set(f, params, x_l, x_u)                  # single-logit kernel (the paper's)
theta = ntk.empirical_ntk_fn(f)
k_el, k_eu = theta(params, x_e, x_l), theta(params, x_e, x_u)
print(f"kernels: {time.perf_counter() - t0:.1f} s")
"""),
        code("""
def system():
    return lookahead.build_system(
        k.ll, k.ul, ds.y_train[lab], f(params, x_l), f(params, x_u), num_classes=10,
        k_uu=k.uu, k_el=k_el, k_eu=k_eu, f_e=f(params, x_e), capacity=n_l + steps,
        sequential=True)

def accuracy(st):
    return float(np.mean(np.argmax(np.asarray(st.lin_e)[:len(y_e)], -1) == y_e))

curves, times = {}, []
for mode in ("mlmoc", "random"):
    st, spec, _ = system()
    acc = [accuracy(st)]
    order = rng.permutation(n_u)
    for t in range(steps):
        if mode == "mlmoc":
            scores, _ = lookahead.score_candidates("mlmoc", spec, st, ref_is_lin=t > 0)
            j = int(np.argmax(np.asarray(scores)))
        else:
            j = int(order[t])
        y = int(ds.y_train[cand[j]])                 # the annotator answers
        t0 = time.perf_counter()
        st = lookahead.add_labeled(spec, st, np.int32(j), np.int32(y))
        jax.block_until_ready(st.lin_e)
        times.append(time.perf_counter() - t0)
        acc.append(accuracy(st))
    curves[mode] = acc
print(f"median time to absorb one label: {1000 * np.median(times):.1f} ms")
"""),
        code("""
fig, ax = plt.subplots(figsize=(6, 4))
for mode, acc in curves.items():
    ax.plot(n_l + np.arange(len(acc)), 100 * np.asarray(acc), label=f"linearised model, {mode} picks")
ax.set_xlabel("labels"); ax.set_ylabel("test accuracy (%)"); ax.grid(alpha=.3); ax.legend()
plt.show()
"""),
        md("At the end of the cycle, SGD retraining on all the labels catches the network up:"),
        code("""
st, spec, _ = system()
picked = []
for t in range(steps):
    scores, _ = lookahead.score_candidates("mlmoc", spec, st, ref_is_lin=t > 0)
    j = int(np.argmax(np.asarray(scores)))
    picked.append(j)
    st = lookahead.add_labeled(spec, st, np.int32(j), np.int32(ds.y_train[cand[j]]))
idx = np.concatenate([lab, cand[picked]])
state_new, _ = train.fit(train.create_train_state(model, state_l.variables, cfg),
                         ds.x_train[idx], ds.y_train[idx], cfg, key=jax.random.key(1))
print("linearised model after sequential labels:", accuracy(st))
print("network retrained with SGD on the same labels:",
      train.accuracy(model, state_new.variables, x_e, y_e))
"""),
    ]


def label_your_data():
    return [
        md("""
# Label your own data: a person answers, the look-ahead learns at once

Your pool has a few labels and many unknown ones. Here a small network is trained on the
known labels, and then *you* label: each click is absorbed by the NTK look-ahead's
rank-one update (the paper's sequential mode), so the next most informative item appears
immediately, without retraining. Every answer is written to disk before the next item is
shown, and a restarted notebook resumes after the last answer.

We use scikit-learn's digits as a stand-in for your data: 40 labels known, the rest
unknown. With your own data, build the pool with `data.from_arrays(x, y)` (−1 for
unknown labels), `data.load_dataset("npz:my_pool.npz")` or
`data.load_dataset("folder:my_images")`.
"""),
        code(INSTALL),
        code(ACCELERATOR),
        code(SMOKE + """
import os
import jax
import numpy as np
from lookahead_jax import data, labeler, models, train

digits = data.load_dataset("digits")
rng = np.random.default_rng(0)
known = rng.choice(len(digits.x_train), 40, replace=False)
y = np.full(len(digits.x_train), -1)
y[known] = digits.y_train[known]
pool = data.from_arrays(digits.x_train, y, x_test=digits.x_test, y_test=digits.y_test,
                        class_names=[str(c) for c in range(10)], name="my_digits")
print(int(pool.given.sum()), "labels known of", len(pool.x_train))
"""),
        md("Train the network f_L on the known labels (any `models.Model` works here):"),
        code("""
model = models.get_model("mlp", pool.num_classes, widths=(256,))
cfg = train.TrainConfig(epochs=10 if SMOKE else 40, batch_size=16)
labeled = np.flatnonzero(pool.given)
state, _ = train.fit(train.create_train_state(model, model.init(jax.random.key(0),
                                                                pool.x_train[:1]), cfg),
                     pool.x_train[labeled], pool.y_train[labeled], cfg, key=jax.random.key(1))
print("test accuracy with", labeled.size, "labels:",
      train.accuracy(model, state.variables, pool.x_test, pool.y_test))
"""),
        md("""
Label. Click the class of the item shown; **Skip** withdraws an item, **Undo** takes the
last answer back. The answers are kept in `my_labels/answers.jsonl`.
"""),
        code("""
session = labeler.LabelingSession(pool, model, state.variables, folder="my_labels",
                                  labeled=labeled, max_labels=10 if SMOKE else 40,
                                  max_candidates=300 if SMOKE else 1000)
ui = labeler.Labeler(session)
ui.widget
"""),
        md("""
In CI nobody clicks: this cell plays the person, clicking the true class (which only the
simulation knows) until the session is done. Skip it when you label yourself.
"""),
        code("""
if SMOKE or os.environ.get("LOOKAHEAD_SIMULATED_CLICKER") == "1":
    while not session.done:
        ui.buttons[int(digits.y_train[session.current])].click()
print(session.num_answered, "answers on disk:", session.path)
"""),
        md("What was asked, in order, with the answers:"),
        code("""
import matplotlib.pyplot as plt
asked = [(i, y) for i, y in session.answers if y >= 0][:10]
fig, axes = plt.subplots(1, len(asked), figsize=(1.3 * len(asked), 1.6), squeeze=False)
for ax, (i, y) in zip(axes[0], asked):
    ax.imshow(pool.x_train[i, :, :, 0], cmap="gray"); ax.set_title(str(y)); ax.axis("off")
plt.show()
"""),
        md("When you are done, retrain with SGD on everything labeled so far:"),
        code("""
answers = session.labels()
idx = np.concatenate([labeled, np.fromiter(answers, int)])
ys = np.concatenate([pool.y_train[labeled], np.fromiter(answers.values(), int)])
state2, _ = train.fit(train.create_train_state(model, state.variables, cfg), pool.x_train[idx],
                      ys, cfg, key=jax.random.key(2))
print("test accuracy with", idx.size, "labels:",
      train.accuracy(model, state2.variables, pool.x_test, pool.y_test))
"""),
        md("""
The same work without a notebook, with any labeling tool: run the loop with the files
oracle, label the CSV it writes, and run the same command again.

```bash
python -m experiments.main --dataset=npz:my_pool.npz --oracle=files --strategy=mlmoc
# → writes runs/.../mlmoc/to_label/cycle_0.csv; you write .../labels/cycle_0.csv
#   (header index,label) and run the same command again
```
"""),
    ]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []}})
    os.makedirs(OUT, exist_ok=True)
    nbformat.write(nb, os.path.join(OUT, name))


if __name__ == "__main__":
    write("01_quickstart.ipynb", quickstart())
    write("02_inside_the_lookahead.ipynb", inside_lookahead())
    write("03_sequential_labeling.ipynb", sequential_labeling())
    write("04_label_your_data.ipynb", label_your_data())
