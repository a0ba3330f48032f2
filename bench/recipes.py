"""Collect the results of the training recipes (scripts/run_recipes.sh) into
bench/results/recipes.json and print the Markdown table of BENCHMARKS.md.

    bash scripts/run_recipes.sh && python bench/recipes.py
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("emoji-twitter", "flickr8k", "tinyimagenet-pretrain", "flickr8k-from-tinyimagenet", "flickr8k-scratch-text",
           "flickr8k-p16")
# Runs made with --set from a recipe (run folder -> how), e.g. the objectives comparison.
VARIANTS = {f"loss-{kind}": f"flickr8k-p16, 10 epochs, loss.kind={kind}"
            for kind in ("clip", "siglip", "triplet", "vsepp")} | {
    "exp-flickr-resnet": "flickr8k, model.preset=resnet-small-64-minilm, train.max_minutes=16",
    "exp-flickr-tin-30ep": "flickr8k-from-tinyimagenet, train.epochs=30",
    "emoji-google": "emoji-twitter, data.image_column=files.google, val.image_column=files.twitter"}


def main() -> None:
    walls = {}
    wall_file = ROOT / "runs" / "logs" / "wall.txt"
    if wall_file.is_file():
        for line in wall_file.read_text().splitlines():
            name, seconds, _ = line.split()
            walls[name] = int(seconds)
    results = {}
    for recipe in (*RECIPES, *VARIANTS):
        summary_file = ROOT / "runs" / (recipe if recipe in VARIANTS else _output(recipe)) / "summary.json"
        if not summary_file.is_file():
            continue
        summary = json.loads(summary_file.read_text())
        results[recipe] = {"wall_seconds": walls.get(recipe), "train_seconds": summary["seconds"],
                           "steps": summary["steps"], "model_step": summary["model_step"],
                           "metrics": summary["metrics"], "skipped_images": len(summary["skipped_images"])}
    write_result("recipes", results)
    print("| recipe | steps | wall | text→image R@1 / R@5 / R@10 | image→text R@1 / R@5 / R@10 "
          "| median rank t→i / i→t |")
    print("|---|---|---|---|---|---|")
    for recipe, r in results.items():
        m = r["metrics"]
        wall = f"{r['wall_seconds'] / 60:.1f} min" if r["wall_seconds"] else "-"
        name = f"`{recipe}`" + (f" ({VARIANTS[recipe]})" if recipe in VARIANTS else "")
        print(f"| {name} | {r['steps']} | {wall} | {m['t2i_r1']:.1f} / {m['t2i_r5']:.1f} / {m['t2i_r10']:.1f} | "
              f"{m['i2t_r1']:.1f} / {m['i2t_r5']:.1f} / {m['i2t_r10']:.1f} | "
              f"{m['t2i_median_rank']:.0f} / {m['i2t_median_rank']:.0f} |")


def _output(recipe: str) -> str:
    """The run folder a recipe names (its `output`, relative to runs/)."""
    output = tomllib.loads((ROOT / "recipes" / f"{recipe}.toml").read_text())["output"]
    return str(Path(output).relative_to("runs"))


if __name__ == "__main__":
    main()
