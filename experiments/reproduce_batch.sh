#!/usr/bin/env bash
# The batch-aware look-ahead study (ours, not the paper's): greedy MLMOC (each pick absorbed
# with its pseudo-label by the rank-one update, the rest re-scored) against top-k MLMOC,
# BADGE and random, where batches are large: 100 and 250 queried per cycle on MNIST.
# Resumable: rerunning skips finished runs.
#
#   bash experiments/reproduce_batch.sh [path/to/mnist/archives]
#   NETS=mlp SEEDS=0,1,2 bash experiments/reproduce_batch.sh   # a part first, extend later
#
# Two commands may extend one study at once with different seeds (e.g. one per core:
# SEEDS=0,1,2 pinned to one, SEEDS=3,4 to the other); study.json keeps both's records.
#
# MLP: 784-1024-1024-10 (configs/mnist_mlp.py), 100 initial labels, a 4000-candidate
# subset, 5 cycles at 100 per query and 4 at 250. WRN (configs/mnist_wrn.py, width 64):
# the same queries from its 1000-candidate subset.
set -euo pipefail
# every run of a study compiles the same training and scoring programs: JAX's persistent
# compilation cache keeps them on disk across runs and processes (the default digits job,
# run twice: 35 s of CPU, then 26 s)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lookahead-jax/jax}
MNIST=${1:-../shared/data/mnist}
seeds=--seeds=${SEEDS:-0,1,2,3,4}
for net in ${NETS:-mlp wrn}; do
  common=(--config=experiments/configs/mnist_$net.py --manual_dir="$MNIST" --figure=batch)
  python -m experiments.figures "${common[@]}" $seeds --query_size=100 --cycles=5 \
      --root=results/studies/batch_q100_mnist_$net
  python -m experiments.figures "${common[@]}" $seeds --query_size=250 --cycles=4 \
      --root=results/studies/batch_q250_mnist_$net
done
python -m experiments.report --studies=results/studies --out=docs \
    --preamble=docs/results_preamble.md
