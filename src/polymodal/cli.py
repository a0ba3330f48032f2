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
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"polymodal {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool | None, typer.Option(  # noqa: UP007 (typer needs Optional)
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
    tokenizer: Annotated[Path | None, typer.Option(  # noqa: UP007
        help="Take the tokenizer from this directory instead of SRC.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert a transformers CLIP checkpoint into a polymodal model directory."""
    from polymodal.convert import convert_hf_clip

    model_id = convert_hf_clip(src, out, tokenizer_src=tokenizer, overwrite=overwrite)
    console.print(f"wrote {out} (model id {model_id})")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the cache).")] = None,  # noqa: UP007
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 120,
) -> None:
    """Train a tiny model on generated shapes, save, reload and evaluate it (about a minute)."""
    from polymodal.demo import run_demo
    from polymodal.paths import cache_dir

    result = run_demo(out or cache_dir() / "demo", steps=steps, log=console.print)
    console.print(f"model {result.model_id} saved in {result.model_dir}; zero-shot accuracy "
                  f"{result.accuracy_before:.1%} -> {result.accuracy_after:.1%} in {result.seconds:.0f} s")


def main() -> None:
    try:
        app()
    except PolymodalError as err:
        Console(stderr=True).print(f"[red]error:[/red] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
