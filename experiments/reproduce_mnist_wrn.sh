#!/usr/bin/env bash
# The WideResNet studies behind docs/RESULTS.md: the paper's network family on MNIST, on
# one CPU core. Resumable: rerunning skips finished runs; identical runs are shared
# between studies (--reuse copies a finished run with the same config and seed).
#
#   bash experiments/reproduce_mnist_wrn.sh [path/to/mnist/archives]
#   SEEDS=0,1,2 bash experiments/reproduce_mnist_wrn.sh   # fewer seeds first, extend later
#
# Setting (experiments/configs/mnist_wrn.py): one-group WideResNet, widen factor 4
# (width 64), 100 initial labels, 20 per cycle from 1000 candidates, 8 cycles, training
# tuned on the random arm with seeds not used here. Fig. 3b varies the width (16, 32,
# 64): the paper's 640 and our 128/256 are beyond one CPU core (cost table in the
# results preamble).
set -euo pipefail
# every run of a study compiles the same training and scoring programs: JAX's persistent
# compilation cache keeps them on disk across runs and processes (the default digits job,
# run twice: 35 s of CPU, then 26 s)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lookahead-jax/jax}
MNIST=${1:-../shared/data/mnist}
common=(--config=experiments/configs/mnist_wrn.py --manual_dir="$MNIST")
five=--seeds=${SEEDS:-0,1,2,3,4}
run() { python -m experiments.figures "${common[@]}" "$@"; }

run --figure=fig2 $five --arms=random,mlmoc,entropy,margin,badge \
    --root=results/studies/fig2_mnist_wrn
run --figure=fig3a $five --root=results/studies/fig3a_mnist_wrn \
    --reuse=results/studies/fig2_mnist_wrn
run --figure=fig3b $five --widths=16,32,64 --root=results/studies/fig3b_mnist_wrn \
    --reuse=results/studies/fig2_mnist_wrn
python -m experiments.report --studies=results/studies --out=docs \
    --preamble=docs/results_preamble.md
