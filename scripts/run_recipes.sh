#!/usr/bin/env bash
# Run every training recipe in order (needs ../shared/data), logging to runs/logs/.
# Used to produce the recipe table of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs
for recipe in emoji-twitter flickr8k tinyimagenet-pretrain flickr8k-from-tinyimagenet flickr8k-scratch-text \
    flickr8k-p16; do
  start=$(date +%s)
  .venv/bin/polymodal train "recipes/$recipe.toml" --quiet > "runs/logs/$recipe.log" 2>&1
  echo "$recipe $(( $(date +%s) - start )) s" | tee -a runs/logs/wall.txt
done
