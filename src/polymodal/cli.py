"""The `polymodal` command line. Each command parses its options, makes one library
call, and prints the result; errors the user can fix are one line, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from polymodal import __version__
from polymodal.errors import PolymodalError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Train, evaluate, index and serve image-text embedding models.")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect and convert models.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Build the built-in datasets.")
data_build_app = typer.Typer(no_args_is_help=True, help="Build a built-in dataset into a folder.")
data_app.add_typer(data_build_app, name="build")
app.add_typer(data_app, name="data")
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"polymodal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None) -> None:
    """polymodal: image-text embeddings from training to search."""


@models_app.command("list")
def models_list() -> None:
    """List the built-in model presets."""
    from polymodal.describe import describe_preset
    from polymodal.registry import list_presets

    table = Table("image tower", "text tower", "dim", "pixels")
    table.columns.insert(0, Column("preset", no_wrap=True))
    for name in list_presets():
        row = describe_preset(name)
        table.add_row(name, row["vision"], row["text"], str(row["embed_dim"]), str(row["image_size"]))
    console.print(table)


@models_app.command("info")
def models_info(source: Annotated[str, typer.Argument(help="Preset name or model directory.")]) -> None:
    """Show a model's architecture, parameter counts, id, training data and metrics."""
    from polymodal.describe import describe_model

    for key, value in describe_model(source).items():
        console.print(f"[bold]{key}[/bold]: {value}")


@models_app.command("convert")
def models_convert(
    src: Annotated[Path, typer.Argument(help="A Hugging Face CLIPModel directory.")],
    out: Annotated[Path, typer.Argument(help="The polymodal model directory to write.")],
    tokenizer: Annotated[Path | None, typer.Option(
        help="Take the tokenizer from this directory instead of SRC.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert a transformers CLIP checkpoint into a polymodal model directory."""
    from polymodal.convert import convert_hf_clip

    model_id = convert_hf_clip(src, out, tokenizer_src=tokenizer, overwrite=overwrite)
    console.print(f"wrote {out} (model id {model_id})")


@data_build_app.command("emoji")
def data_build_emoji(
    out: Annotated[Path, typer.Argument(help="Folder to write (images/, captions.jsonl, dataset.json).")],
    size: Annotated[int, typer.Option(min=16, max=512, help="Image side in pixels.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Rebuild OUT if it already holds an emoji dataset.")] = False,
) -> None:
    """Render every fully-qualified emoji with the system's Noto Color Emoji font."""
    from rich.progress import track

    from polymodal.data.builtin.emoji import build_emoji_dataset

    info = build_emoji_dataset(out, size=size, overwrite=overwrite,
                               progress=lambda it, n: track(it, total=n, description="rendering", console=console))
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    console.print(f"wrote {info['emoji']} emoji to {out} ({splits}); {len(info['skipped'])} not in the font")


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="A TOML recipe (see recipes/).")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a setting, e.g. --set train.batch_size=64 (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train (or resume) a model as CONFIG describes; the model lands in OUTPUT/model."""
    from polymodal.train.config import load_train_config
    from polymodal.train.loop import train as run_training

    cfg = load_train_config(config, set_ or [])
    try:
        result = run_training(cfg, console=console, show_progress=not quiet)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; the last step is saved: run the same command to resume")
        raise typer.Exit(130) from None
    _print_training(result.steps, result.total_steps, result.seconds, result.metrics, result.model_dir,
                    result.model_id, result.skipped)


@app.command()
def quickstart(
    retrain: Annotated[bool, typer.Option(help="Train again even if a cached model exists.")] = False,
    query: Annotated[list[str] | None, typer.Option(
        help="Example text query (repeatable); default: five built-in ones.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a setting of the quickstart recipe.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="An emoji dataset folder (from `polymodal data build emoji`); default: built in the cache.")] = None,
) -> None:
    """Build the emoji dataset, train the default small model (cached), show what it finds."""
    from polymodal.quickstart import EXAMPLE_QUERIES, run_quickstart

    result = run_quickstart(retrain=retrain, queries=query or EXAMPLE_QUERIES, overrides=set_ or [],
                            emoji_root=data, console=console)
    origin = "cached model" if result.cached else "trained"
    console.print(f"[bold]model[/bold] {result.model_id} ({origin}, {result.train_seconds:.0f} s of training) "
                  f"in {result.model_dir}")
    _print_metrics(result.metrics, "validation retrieval on held-out emoji")
    for text, matches in result.examples.items():
        shown = "   ".join(f"{m.char} {m.name} ({m.score:.2f})" for m in matches)
        console.print(f"[bold]{text!r}[/bold] -> {shown}", highlight=False)


def _print_training(steps: int, total: int, seconds: float, metrics: dict[str, float], model_dir: Path,
                    model_id: str, skipped: dict[str, str]) -> None:
    console.print(f"trained {steps}/{total} steps in {seconds:.0f} s; model {model_id} in {model_dir}")
    if metrics:
        _print_metrics(metrics, "validation")
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable images were skipped:[/yellow]")
        for name, reason in list(skipped.items())[:20]:
            console.print(f"  {name}: {reason}", highlight=False)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    if not metrics:
        return
    table = Table("direction", "R@1", "R@5", "R@10", "median rank", title=title)
    for direction, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        table.add_row(label, *(f"{metrics[f'{direction}_r{k}']:.1f}" for k in (1, 5, 10)),
                      f"{metrics[f'{direction}_median_rank']:.0f}")
    console.print(table)


def main() -> None:
    try:
        app()
    except PolymodalError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
