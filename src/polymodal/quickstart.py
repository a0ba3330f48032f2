"""`polymodal quickstart`: the main job on a fresh machine.

Builds the emoji dataset from system packages, trains the default small model (a ViT
image tower from scratch against the frozen MiniLM text tower) with the recipe in
quickstart.toml, caches the trained model (a second run reuses it), and reports
validation retrieval and a few example text->image searches over all emoji. The emoji
are indexed into a store beside the model (emoji.pm, with their names as captions), so a
cached run answers from the store without embedding anything, and `polymodal quickstart`
ends by serving that store's search page.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from polymodal.data.builtin.emoji import default_emoji_root, ensure_emoji_dataset
from polymodal.paths import cache_dir
from polymodal.train.config import TrainConfig, load_train_config
from polymodal.train.loop import Trainer

EXAMPLE_QUERIES = ("a happy face", "a red fruit", "an animal that lives in the sea", "a flag with stars",
                   "something hot to drink")


@dataclass
class Match:
    name: str
    char: str
    score: float


@dataclass
class QuickstartResult:
    model_dir: Path
    model_id: str
    cached: bool  # the model came from an earlier run
    metrics: dict[str, float]  # validation retrieval
    train_seconds: float
    examples: dict[str, list[Match]]  # query -> top matches over all emoji
    store: Path  # every emoji, indexed with the model


def quickstart_config(emoji_root: Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The quickstart recipe; its output folder is named after a hash of the recipe, so a
    changed recipe trains anew and an unchanged one is reused."""
    base = tomllib.loads(resources.files("polymodal").joinpath("quickstart.toml").read_text())
    base["data"]["root"] = base["val"]["root"] = str(emoji_root or default_emoji_root())
    recipe = json.dumps({"recipe": base, "overrides": list(overrides)}, sort_keys=True)
    base["output"] = str(cache_dir() / "runs" / f"quickstart-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}")
    return load_train_config(None, list(overrides), base=base)  # an output= override still wins


def run_quickstart(retrain: bool = False, queries: Sequence[str] = EXAMPLE_QUERIES, top_k: int = 5,
                   emoji_root: Path | None = None, overrides: Sequence[str] = (),
                   console: Console | None = None, show_progress: bool = True) -> QuickstartResult:
    if console is not None and not (Path(emoji_root or default_emoji_root()) / "dataset.json").is_file():
        console.print("building the emoji dataset from the system's emoji font (once)")
    ensure_emoji_dataset(emoji_root)
    config = quickstart_config(emoji_root, overrides)
    run_dir = Path(config.output)
    summary = run_dir / "summary.json"
    cached = summary.is_file() and (run_dir / "model" / "config.json").is_file() and not retrain
    if retrain and run_dir.exists():
        for name in ("checkpoint.pt", "summary.json", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    if cached:
        info = json.loads(summary.read_text())
        model_dir, metrics, seconds = run_dir / "model", info["metrics"], info["seconds"]
    else:
        result = Trainer(config, console=console, show_progress=show_progress).run()
        model_dir, metrics, seconds = result.model_dir, result.metrics, result.seconds
    model_id = json.loads((model_dir / "config.json").read_text())["model_id"]
    root = Path(emoji_root or default_emoji_root())
    store = emoji_store(run_dir / "emoji.pm", root, model_dir, model_id)
    examples = example_searches(store, root, queries, top_k) if queries else {}
    return QuickstartResult(model_dir, model_id, cached, metrics, seconds, examples, store)


def emoji_store(path: Path, root: Path, model_dir: Path, model_id: str) -> Path:
    """Every emoji image (names as captions) indexed with the model; brought up to date,
    or rebuilt when the model changed (a retrained model has another id)."""
    from polymodal.index.api import index
    from polymodal.index.manifest import Manifest

    if (path / "manifest.json").exists() and Manifest.read(path).model_id != model_id:
        shutil.rmtree(path)
    index(str(root), store=path, model=str(model_dir))
    return path


def example_searches(store: Path, root: Path, queries: Sequence[str], top_k: int) -> dict[str, list[Match]]:
    """Top matches of each query among all emoji (every split), from the store."""
    from polymodal.index.search import Searcher

    chars = _emoji_chars(root)
    resolved = root.resolve()
    with Searcher(store) as searcher:
        return {query: [Match(*chars[str(Path(hit.uri).relative_to(resolved))], hit.score)
                        for hit in searcher.search(query, k=top_k)] for query in queries}


def _emoji_chars(root: Path) -> dict[str, tuple[str, str]]:
    """image path (the record key) -> (name, character), for display."""
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    return {row["image"]: (row["name"], row["char"]) for row in rows}
