#!/usr/bin/env bash
# The standard protocols of ../shared/data/README.md on the recipe models (run
# scripts/run_recipes.sh first). Reports land in evals/<task>-<run>-<data>/; then
# `python bench/evals.py` collects them into bench/results/evals.json and the table
# of BENCHMARKS.md. Usage: scripts/run_evals.sh [RUN ...]   (default: every run with a model)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  for dir in runs/*/model; do runs+=("$(basename "$(dirname "$dir")")"); done
fi
pm=.venv/bin/polymodal
for run in "${runs[@]}"; do
  model="runs/$run/model"
  if [[ "$run" == emoji-twitter ]]; then  # trained on Twitter drawings: tested on Google ones
    $pm eval retrieval "$model" recipes/eval/emoji-google-base.toml --out "evals/retrieval-$run-emoji-google"
    continue
  fi
  if [[ "$run" == emoji-google ]]; then  # the reverse
    $pm eval retrieval "$model" recipes/eval/emoji-twitter-base.toml --out "evals/retrieval-$run-emoji-twitter"
    continue
  fi
  if [[ "$run" == loss-* || "$run" == exp-* ]]; then  # comparisons are made on dev, in training
    continue
  fi
  $pm eval retrieval "$model" recipes/eval/flickr8k-test.toml --out "evals/retrieval-$run-flickr8k-test"
  $pm eval zeroshot "$model" recipes/eval/cifar10-test.toml --out "evals/zeroshot-$run-cifar10"
  $pm eval zeroshot "$model" recipes/eval/cifar10-test.toml --template ensemble \
    --out "evals/zeroshot-$run-cifar10-ensemble"
  $pm eval zeroshot "$model" recipes/eval/tinyimagenet-val.toml --no-synonyms --out "evals/zeroshot-$run-tinyimagenet"
  $pm eval weat "$model" all --out "evals/weat-$run"
done
