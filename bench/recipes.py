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
RECIPES = ("emoji-twitter", "flickr8k", "tinyimagenet-pretrain", "flickr8k-from-tinyimagenet", "flickr8k-scratch-text")


def main() -> None:
    walls = {}
    wall_file = ROOT / "runs" / "logs" / "wall.txt"
    if wall_file.is_file():
        for line in wall_file.read_text().splitlines():
            name, seconds, _ = line.split()
            walls[name] = int(seconds)
    results = {}
    for recipe in RECIPES:
        summary_file = ROOT / "runs" / _output(recipe) / "summary.json"
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
        print(f"| `{recipe}` | {r['steps']} | {wall} | {m['t2i_r1']:.1f} / {m['t2i_r5']:.1f} / {m['t2i_r10']:.1f} | "
              f"{m['i2t_r1']:.1f} / {m['i2t_r5']:.1f} / {m['i2t_r10']:.1f} | "
              f"{m['t2i_median_rank']:.0f} / {m['i2t_median_rank']:.0f} |")


def _output(recipe: str) -> str:
    """The run folder a recipe names (its `output`, relative to runs/)."""
    output = tomllib.loads((ROOT / "recipes" / f"{recipe}.toml").read_text())["output"]
    return str(Path(output).relative_to("runs"))


if __name__ == "__main__":
    main()
