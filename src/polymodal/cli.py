"""The `polymodal` command line. Each command parses its options, makes one library
call, and prints the result; errors the user can fix are one line, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from polymodal import __version__
from polymodal.cli_fusion import ask, caption, explain
from polymodal.cli_index import PrecisionOpt, dedup, index_app, search, serve
from polymodal.errors import PolymodalError

if TYPE_CHECKING:
    from polymodal.eval.report import Evaluation

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Train, evaluate, index and serve image-text embedding models.")
models_app = typer.Typer(no_args_is_help=True, help="List, inspect and convert models.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Build the built-in datasets.")
data_build_app = typer.Typer(no_args_is_help=True, help="Build a built-in dataset into a folder.")
data_app.add_typer(data_build_app, name="build")
app.add_typer(data_app, name="data")
eval_app = typer.Typer(no_args_is_help=True, help=(
    "Evaluate a model: each run writes result.json, report.md and plots. MODEL is a model directory "
    "(or 'quickstart'); DATA is emoji[:split], a folder of class folders, a folder or file of captions, "
    "tar shards, or a .toml source table."))
app.add_typer(eval_app, name="eval")
app.add_typer(index_app, name="index")
app.command("search")(search)
app.command("dedup")(dedup)
app.command("serve")(serve)
app.command("caption")(caption)
app.command("ask")(ask)
app.command("explain")(explain)
console = Console()

ModelArg = Annotated[str, typer.Argument(help="A model directory (polymodal or transformers CLIP), or 'quickstart'.")]
DataArg = Annotated[str, typer.Argument(help="emoji[:split], class folders, captions folder/file, tar shards, "
                                             "or a .toml source table.")]
OutOpt = Annotated[Path | None, typer.Option(help="Report folder; default evals/<task>-<model>-<data>.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Images per batch.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Image-decoding processes.")]
AutocastOpt = Annotated[str, typer.Option("--precision", help="auto (bf16 on a GPU, else fp32), fp32 or bf16.")]
PlotsOpt = Annotated[bool, typer.Option(help="Draw the report's plots.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N; default: CUDA when available.")]


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


@data_build_app.command("shapes")
def data_build_shapes(
    out: Annotated[Path, typer.Argument(help=(
        "Folder to write (images/, scenes.jsonl, questions.jsonl, captions.jsonl, dataset.json)."))],
    scenes: Annotated[int, typer.Option(min=10, help="How many scenes to draw.")] = 5000,
    size: Annotated[int, typer.Option(min=32, max=512, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed draws the same dataset.")] = 0,
    held_out_share: Annotated[float, typer.Option(
        min=0.01, max=0.5, help="Share of scenes showing held-out colour-shape pairs (the test_heldout split).")
    ] = 0.1,
    overwrite: Annotated[bool, typer.Option(help="Rebuild OUT if it already holds a shapes dataset.")] = False,
) -> None:
    """Draw synthetic scenes of coloured shapes with balanced VQA questions and captions."""
    from rich.progress import track

    from polymodal.data.builtin.shapes import build_shapes_dataset

    info = build_shapes_dataset(out, scenes=scenes, size=size, seed=seed, held_out_share=held_out_share,
                                overwrite=overwrite,
                                progress=lambda it, n: track(it, total=n, description="drawing", console=console))
    splits = ", ".join(f"{k} {v}" for k, v in sorted(info["splits"].items()))
    questions = sum(sum(answers.values()) for answers in info["questions"].values())
    console.print(f"wrote {scenes} scenes and {questions} questions to {out} ({splits}); held-out pairs: "
                  + ", ".join(" ".join(p) for p in info["held_out_pairs"]), highlight=False)


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
    serve_page: Annotated[bool, typer.Option(
        "--serve/--no-serve", help="End by serving the emoji store's search page on 127.0.0.1.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the search page.")] = 8000,
) -> None:
    """Build the emoji dataset, train the default small model (cached), show what it finds,
    then serve a search page over all emoji (--no-serve to stop there)."""
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
    console.print(f"[bold]store[/bold] {result.store}: `polymodal search {result.store} \"a red heart\"`",
                  highlight=False)
    if serve_page:
        serve(result.store, port=port)


def _run_eval(task: str, model: str, data: str, out: Path | None, batch_size: int, workers: int, precision: str,
              plots: bool, device: str, **settings: object) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from polymodal.eval.runner import EvalOptions, run_eval
    from polymodal.inference import check_precision

    check_precision(precision)
    options = EvalOptions(batch_size=batch_size, num_workers=workers, precision=precision, device=device,
                          plots=plots)
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("embedding images", total=None)
        evaluation, report = run_eval(task, model, data, out, options,
                                      progress=lambda done, total: bar.update(job, completed=done, total=total),
                                      **settings)
    _print_evaluation(evaluation, report, data)


def _print_evaluation(evaluation: Evaluation, report: Path, data: str) -> None:
    """The metrics table (primary metric in bold), skipped items, and where the report is."""
    from polymodal.eval.report import format_value

    table = Table("metric", "value", title=f"{evaluation.task}: {evaluation.info.get('data', data)}")
    for name, value in evaluation.metrics.items():
        table.add_row(name, format_value(value), style="bold" if name == evaluation.primary_metric else "")
    console.print(table)
    if evaluation.skipped:
        console.print(f"[yellow]{len(evaluation.skipped)} items skipped (listed in the report)[/yellow]")
    console.print(f"report: {report}  (numbers: {report.with_name('result.json')})")


@eval_app.command("retrieval")
def eval_retrieval(model: ModelArg, data: DataArg, out: OutOpt = None, batch_size: BatchOpt = 128,
                   workers: WorkersOpt = 0, precision: PrecisionOpt = "auto", plots: PlotsOpt = True,
                   device: DeviceOpt = "") -> None:
    """Image<->text retrieval both ways: R@1/5/10, true recall, mAP, MRR, nDCG@10, ranks, threshold."""
    _run_eval("retrieval", model, data, out, batch_size, workers, precision, plots, device)


@eval_app.command("zeroshot")
def eval_zeroshot(
    model: ModelArg, data: DataArg, out: OutOpt = None,
    template: Annotated[list[str] | None, typer.Option(
        help="Prompt template with {} for the class name (repeatable), or 'default' / 'ensemble'.")] = None,
    synonyms: Annotated[bool, typer.Option(
        help="Also average over class-name synonyms where the data has them (the standard protocols use the "
             "name alone).")] = False,
    batch_size: BatchOpt = 128, workers: WorkersOpt = 0, precision: PrecisionOpt = "auto", plots: PlotsOpt = True,
    device: DeviceOpt = "",
) -> None:
    """Zero-shot classification of labelled images: top-1/5, balanced accuracy, confusion matrix."""
    _run_eval("zeroshot", model, data, out, batch_size, workers, precision, plots, device, templates=template or [],
              synonyms=synonyms)


@eval_app.command("linear-probe")
def eval_linear_probe(
    model: ModelArg, data: DataArg, out: OutOpt = None,
    test: Annotated[str, typer.Option(help="Test DATA; default: a fixed 20% of DATA.")] = "",
    shots: Annotated[str, typer.Option(help="Few-shot sizes, e.g. 1,5,10 (images per class).")] = "",
    repeats: Annotated[int, typer.Option(min=1, help="Random draws per few-shot size.")] = 3,
    batch_size: BatchOpt = 128, workers: WorkersOpt = 0, precision: PrecisionOpt = "auto", plots: PlotsOpt = True,
    device: DeviceOpt = "",
) -> None:
    """Logistic regression on frozen image embeddings, on all training images and few-shot."""
    try:
        sizes = tuple(int(k) for k in shots.split(",") if k.strip())
    except ValueError:
        raise PolymodalError(f"--shots must be comma-separated integers, got {shots!r}") from None
    if any(k < 1 for k in sizes):
        raise PolymodalError("--shots must be positive")
    _run_eval("linear-probe", model, data, out, batch_size, workers, precision, plots, device, test=test, shots=sizes,
              repeats=repeats)


@eval_app.command("weat")
def eval_weat(
    model: Annotated[str, typer.Argument(
        help="A model directory (polymodal or transformers CLIP), or 'quickstart'.")] = "",
    tests: Annotated[str, typer.Argument(help="'all', built-in test names (comma-separated), or a JSON file.")] = "all",
    out: OutOpt = None,
    sentences: Annotated[bool, typer.Option(help="SEAT: put words in bleached sentences ('This is a rose.').")] = False,
    partitions: Annotated[int, typer.Option(min=100, help="Most re-partitions for the permutation test.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of sampled re-partitions.")] = 0,
    list_tests: Annotated[bool, typer.Option("--list", help="List the built-in tests and exit.")] = False,
    precision: PrecisionOpt = "auto", plots: PlotsOpt = True, device: DeviceOpt = "",
) -> None:
    """Association tests (WEAT/SEAT on words, iEAT on emoji images): effect size and p-value."""
    if list_tests:
        from polymodal.eval.association import builtin_tests, describe_tests

        table = Table("test", "sets", "reference")
        for row in describe_tests(builtin_tests()):
            table.add_row(*row)
        console.print(table)
        return
    if not model:
        raise PolymodalError("eval weat needs a MODEL (or --list)")
    _run_eval("weat", model, "", out, 128, 0, precision, plots, device, tests=tests, sentences=sentences,
              max_partitions=partitions, seed=seed)


@eval_app.command("vqa")
def eval_vqa(
    model: Annotated[Path, typer.Argument(help="A VQA model directory (polymodal train with task = \"vqa\").")],
    questions: Annotated[Path, typer.Argument(help="A questions.jsonl (polymodal data build shapes writes one).")],
    split: Annotated[str, typer.Option(help="Only this split, e.g. test or test_heldout ('' = all).")] = "test",
    out: OutOpt = None,
    device: DeviceOpt = "",
) -> None:
    """VQA accuracy: overall, balanced over answers, and per question type (with chance)."""
    from polymodal.data.sources import QuestionsSource
    from polymodal.eval.report import write_report
    from polymodal.eval.runner import default_out
    from polymodal.eval.vqa import evaluate_vqa

    evaluation = evaluate_vqa(model, QuestionsSource(file=str(questions), split=split), device=device or "cpu")
    report = write_report(evaluation, out or default_out("vqa", model, split or questions.stem), plots=False)
    _print_evaluation(evaluation, report, str(questions))


@eval_app.command("caption")
def eval_caption(
    model: Annotated[Path, typer.Argument(help="A captioning model directory (task = \"caption\").")],
    data: DataArg,
    beam: Annotated[int, typer.Option(min=1, max=64, help="Beam width (1: greedy).")] = 1,
    length_penalty: Annotated[float, typer.Option(min=0.0, help="Beam search length penalty.")] = 0.6,
    out: OutOpt = None,
    device: DeviceOpt = "",
) -> None:
    """Caption every image of DATA and score the captions: BLEU-1..4 and CIDEr-D."""
    from polymodal.eval.captioning import evaluate_captioner
    from polymodal.eval.report import write_report
    from polymodal.eval.runner import default_out

    evaluation = evaluate_captioner(model, data, beam, length_penalty, device=device or "cpu")
    report = write_report(evaluation, out or default_out("caption", model, data), plots=False)
    _print_evaluation(evaluation, report, data)


@eval_app.command("rerank")
def eval_rerank(
    dual_encoder: Annotated[str, typer.Argument(help="The dual encoder finding the candidates (a model directory).")],
    reranker: Annotated[Path, typer.Argument(help="A fusion model directory with an ITM head (task = \"fusion\").")],
    data: DataArg,
    top: Annotated[int, typer.Option(min=1, help="Re-rank each query's top N images.")] = 20,
    out: OutOpt = None,
    precision: AutocastOpt = "auto",
    device: DeviceOpt = "",
) -> None:
    """Text->image R@1/5/10 of the dual encoder alone, re-ranked (the fusion model's ITM log-odds plus the dual
    encoder's logit) and by the ITM head alone; the gain, and the added cost per query."""
    from polymodal.eval.report import write_report
    from polymodal.eval.rerank import evaluate_rerank
    from polymodal.eval.runner import default_out
    from polymodal.inference import resolve_precision

    if precision not in ("auto", "fp32", "bf16"):  # the fusion model's layers are not quantised
        raise PolymodalError(f"--precision must be auto, fp32 or bf16 here, got {precision!r}")
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    device = device or "cpu"
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        job = bar.add_task("loading", total=None)
        evaluation = evaluate_rerank(dual_encoder, reranker, data, top, device=device,
                                     dtype=resolve_precision(precision, torch.device(device)),
                                     progress=lambda stage, done, total: bar.update(job, description=stage,
                                                                                    completed=done, total=total))
    report = write_report(evaluation, out or default_out("rerank", reranker, data), plots=False)
    _print_evaluation(evaluation, report, data)
    console.print(f"re-ranking the top {top} adds {evaluation.info['added_ms_per_query']} ms per query")


@eval_app.command("index")
def eval_index(
    store: Annotated[Path, typer.Argument(help="A store folder (NAME.pm).")],
    out: OutOpt = None,
    queries: Annotated[int, typer.Option(min=1, help="Query vectors per direction (sampled).")] = 1000,
    plots: PlotsOpt = True,
) -> None:
    """Every quantiser and backend on a store: bytes/vector, build time, queries/s, recall@10
    vs exact search for text->image, image->image and image->text, task P@K/R@K on captions."""
    from polymodal.eval.report import format_value, write_report
    from polymodal.index.evaluate import evaluate_index

    with console.status("measuring backends"):
        evaluation = evaluate_index(store, max_queries=queries)
    report = write_report(evaluation, out or Path("evals") / f"index-{store.name.removesuffix('.pm')}", plots=plots)
    rows = evaluation.tables["backends"]
    columns = [c for c in ("config", "bytes/vector", "build s", "qps", "t2i recall@10", "i2i recall@10",
                           "i2t recall@10", "t2i task R@10", "i2t task P@10", "pareto")
               if any(c in r for r in rows)]
    table = Table(*columns, title=f"index backends on {store}")
    for row in rows:
        table.add_row(*(format_value(row.get(c, row.get("error", "") if c == "bytes/vector" else "")) for c in columns))
    console.print(table)
    console.print(f"report: {report}", highlight=False)


@app.command()
def classify(
    model: ModelArg,
    folder: Annotated[Path, typer.Argument(help="A folder of images (searched recursively).")],
    labels: Annotated[list[str], typer.Option(
        help="Class names, comma-separated, or a .txt file with one per line (repeatable).")],
    out: Annotated[Path, typer.Option(help="Where to write the labels: a .csv or .json file.")] = Path("labels.csv"),
    threshold: Annotated[float | None, typer.Option(
        help="Label an image 'unknown' when its best cosine similarity is below this. `polymodal eval "
             "zeroshot` on labelled images of the same kind suggests one (it separates true-class from "
             "other-class similarities, so about 100 - TPR % of known images also fall below it).")] = None,
    template: Annotated[list[str] | None, typer.Option(help="Prompt template(s) with {}, or 'ensemble'.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Best classes listed per image.")] = 3,
    batch_size: BatchOpt = 128,
    device: DeviceOpt = "",
) -> None:
    """Label every image of FOLDER with the nearest class name (zero-shot), to CSV or JSON."""
    from polymodal.classify import UNKNOWN, classify_folder, parse_labels, write_rows
    from polymodal.eval.runner import EvalOptions, load_for_eval
    from polymodal.eval.zeroshot import DEFAULT_TEMPLATES, resolve_templates

    names = parse_labels(labels)
    templates = resolve_templates(template or DEFAULT_TEMPLATES)
    if out.suffix not in (".csv", ".json"):
        raise PolymodalError(f"--out {out}: must end in .csv or .json")
    loaded = load_for_eval(model, EvalOptions(device=device))
    rows = classify_folder(loaded.model, loaded.tokenizer, loaded.transform, folder, names, templates, threshold,
                           top_k, batch_size)
    write_rows(rows, out)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label or "unreadable"] = counts.get(row.label or "unreadable", 0) + 1
    summary = ", ".join(f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    console.print(f"labelled {len(rows)} images -> {out}: {summary}", highlight=False)
    if counts.get(UNKNOWN):
        console.print(f"{counts[UNKNOWN]} below the threshold {threshold} are '{UNKNOWN}'")


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
    if "t2i_r1" not in metrics:  # not a retrieval model (e.g. VQA: accuracies)
        table = Table("metric", "value", title=title)
        for name, value in metrics.items():
            table.add_row(name, f"{value:.1f}")
        console.print(table)
        return
    table = Table("direction", "R@1", "R@5", "R@10", "median rank", title=title)
    rows = (("t2i", "text -> image"), ("rerank_t2i", "text -> image, re-ranked"),
            ("itm_t2i", "text -> image, by ITM alone"), ("i2t", "image -> text"))
    for direction, label in rows:
        if f"{direction}_r1" in metrics:  # a fusion run ranks text -> image only, and re-ranks it
            table.add_row(label, *(f"{metrics[f'{direction}_r{k}']:.1f}" for k in (1, 5, 10)),
                          f"{metrics[f'{direction}_median_rank']:.0f}")
    console.print(table)


def main() -> None:
    from polymodal.runtime import tune_allocator

    tune_allocator()  # large tensors reuse freed memory instead of faulting fresh pages in
    try:
        app()
    except PolymodalError as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}", highlight=False)  # one line
        sys.exit(2)


if __name__ == "__main__":
    main()
