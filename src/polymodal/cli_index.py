"""`polymodal index`, `search` and `dedup`: the store commands of the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

if TYPE_CHECKING:
    from polymodal.index.jobs import ProgressEvent

console = Console()


class _DefaultToUpdate(TyperGroup):
    """`polymodal index SOURCE` is `polymodal index update SOURCE`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["update", *args]
        return super().parse_args(ctx, args)


index_app = typer.Typer(cls=_DefaultToUpdate, no_args_is_help=True, help=(
    "Index images (and their captions) into a store, incrementally. `polymodal index SOURCE` embeds "
    "what is new or changed in SOURCE (a folder, captions table, tar shards or .toml source) into "
    "SOURCE.pm, removes what is gone, and rebuilds the search index."))

StoreArg = Annotated[Path, typer.Argument(help="A store folder (NAME.pm).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOpt = Annotated[str | None, typer.Option(
    help="Model directory (or 'quickstart'); default: the model that built the store.")]
ReembedOpt = Annotated[bool, typer.Option(help="Re-embed the whole store when --model differs from its model.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N; default: CUDA when available.")]
WorkersOpt = Annotated[int | None, typer.Option(min=0, help=(
    "Image-decoding processes (0: in this process). Default: 2 with a GPU or more than 2 CPU cores; 0 with "
    "2 cores or fewer, where workers would take the cores the model needs."), show_default=False)]
_INT8_HELP = ("int8: Linear layers quantised, on the CPU (1.3-2.4x fp32's speed at batch 64, embeddings within "
              "cosine 0.996 of fp32's; check the evaluation: small models lose some recall).")
_BF16_HELP = ("bf16 (autocast: on CPUs with fast bf16 units, e.g. AMD Zen 4, 1.7-2.2x fp32's speed within cosine "
              "0.99996; slower on others)")
PrecisionOpt = Annotated[str, typer.Option(
    help=f"auto (bf16 on a GPU, else fp32), fp32, {_BF16_HELP}, or {_INT8_HELP}")]
BackendOpt = Annotated[str | None, typer.Option(
    help="Search index: exact, hnsw, ivfpq, lsh, binary or kdtree; default: the store's (exact).")]
ParamOpt = Annotated[list[str] | None, typer.Option(
    help="Backend parameter KEY=VALUE (repeatable), e.g. quantizer=int8, m=32, ef_search=128, nprobe=16.")]
RerankOpt = Annotated[int | None, typer.Option(
    min=0, help="Re-score the top RERANK x k candidates with the stored float32 vectors (0: off).")]
BudgetOpt = Annotated[str | None, typer.Option(
    help="Choose the index that fits this memory, e.g. 2GB (as autofaiss does).")]


class _Speed(ProgressColumn):
    """Items per second of the running stage."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} items/s" if speed else "", style="cyan")


def _progress_bar() -> Progress:
    return Progress("{task.description}", BarColumn(), MofNCompleteColumn(), _Speed(), TimeRemainingColumn(),
                    console=console, transient=True)


class EventBar:
    """Draws a job's progress events (jobs.py) as one bar per stage: the same events the
    job log holds and the HTTP API streams, whether they come from this process or a file."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage in ("start", "end"):
            return
        if event.stage not in self.tasks:
            self.tasks[event.stage] = self.bar.add_task(event.stage, total=event.total)
        self.bar.update(self.tasks[event.stage], completed=event.done, total=event.total)


@index_app.command("update")
def index_update(
    source: Annotated[str, typer.Argument(help="A folder of images, a captions table, tar shards or a .toml source.")],
    store: Annotated[Path | None, typer.Option(help="The store to write; default SOURCE.pm beside SOURCE.")] = None,
    model: ModelOpt = None,
    reembed: ReembedOpt = False,
    backend: BackendOpt = None,
    param: ParamOpt = None,
    rerank: RerankOpt = None,
    memory_budget: BudgetOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
    workers: WorkersOpt = None,
    max_pixels: Annotated[int, typer.Option(
        min=1, help="Skip images with more pixels than this (decompression-bomb guard).")] = 178_956_970,
    flush_every: Annotated[int, typer.Option(min=1, help="Vectors per commit: what a killed run redoes.")] = 1024,
    device: DeviceOpt = "",
    precision: Annotated[str, typer.Option(help=(
        f"fp32 (the default: queries are embedded in fp32 too), {_BF16_HELP}, or {_INT8_HELP}"))] = "fp32",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or update a store from SOURCE (only new or changed files are embedded)."""
    from polymodal.index.api import index
    from polymodal.index.pipeline import IndexOptions
    from polymodal.inference import check_precision

    options = IndexOptions(batch_size=batch_size, num_workers=workers, flush_every=flush_every,
                           max_pixels=max_pixels, precision=check_precision(precision))
    spec = _index_spec(backend, param, rerank, memory_budget)
    if quiet or as_json:
        result = index(source, store, model, reembed=reembed, options=options, device=device, spec=spec)
    else:
        with _progress_bar() as bar:
            result = index(source, store, model, reembed=reembed, options=options, device=device, spec=spec,
                           on_event=EventBar(bar))
    if as_json:
        print(json.dumps({"store": str(result.store), "index": result.index, "compacted": result.compacted,
                          "sources": [vars(r) for r in result.reports]}, indent=2, default=str))
        return
    for report in result.reports:
        console.print(f"{report.source}: {report.embedded} embedded, {report.reused} reused (renamed/copied), "
                      f"{report.unchanged} unchanged, {report.removed} removed, {report.captions_added} captions "
                      f"added, {len(report.skipped)} unreadable ({report.seconds:.1f} s)", highlight=False)
        for uri, reason in report.skipped[:20]:
            console.print(f"  [yellow]skipped[/yellow] {reason}" if uri in reason else
                          f"  [yellow]skipped[/yellow] {uri}: {reason}", highlight=False)
        if len(report.skipped) > 20:
            console.print(f"  ... and {len(report.skipped) - 20} more (`polymodal index info --json`)")
        if report.dropped:
            example = next(iter(report.dropped.items()))
            console.print(f"  [yellow]{len(report.dropped)} source entries had no usable image[/yellow], e.g. "
                          f"{example[0]}: {example[1]}", highlight=False)
    counts = result.index.get("counts", {})
    console.print(f"store {result.store}: {counts.get('image', 0)} images, {counts.get('text', 0)} texts; "
                  f"index {result.index.get('backend')}", highlight=False)


@index_app.command("add")
def index_add(store: StoreArg,
              source: Annotated[str, typer.Argument(help="Images to add: folder, captions table, shards, .toml.")],
              workers: WorkersOpt = None,
              device: DeviceOpt = "") -> None:
    """Add (or update) SOURCE in an existing STORE, with the store's model."""
    from polymodal.errors import StoreError

    if not (store / "manifest.json").exists():
        raise StoreError(f"{store}: no store here; `polymodal index SOURCE --store {store} --model MODEL` creates one")
    index_update(source, store=store, model=None, workers=workers, device=device)


@index_app.command("remove")
def index_remove(store: StoreArg, ids: Annotated[list[int], typer.Argument(help="Item ids to remove.")]) -> None:
    """Remove items by id (as `search --json` prints them) and rebuild the index."""
    from polymodal.index.api import remove_items

    removed = remove_items(store, ids)
    console.print(f"removed {removed} of {len(ids)} items from {store}")


@index_app.command("info")
def index_info_cmd(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Show a store's model, counts, sources and search index."""
    from polymodal.index.api import info

    data = info(store)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        console.print(f"[bold]{key}[/bold]: {value}", highlight=False)


@index_app.command("jobs")
def index_jobs(store: StoreArg, limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
               as_json: JsonOpt = False) -> None:
    """List STORE's index jobs (from this and other processes): state, stage and progress."""
    from polymodal.index.jobs import list_jobs

    jobs = list_jobs(store, limit)
    if as_json:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
        return
    table = Table("job", "state", "stage", "progress", "source", "message")
    for job in jobs:
        table.add_row(job.id, job.state, job.stage, f"{job.done}/{job.total}", job.source, job.message)
    console.print(table)


@index_app.command("watch")
def index_watch(store: StoreArg, job: Annotated[str | None, typer.Argument(
        help="A job id from `index jobs`; default: the newest job.")] = None) -> None:
    """Show a running index job's progress bar (e.g. one started in another terminal or by the server)."""
    from polymodal.errors import StoreError
    from polymodal.index.jobs import follow, list_jobs

    if job is None:
        newest = list_jobs(store, 1)
        if not newest:
            raise StoreError(f"{store} has no index jobs")
        job = newest[0].id
    last = None
    with _progress_bar() as bar:
        draw = EventBar(bar)
        for event in follow(store, job):
            draw(event)
            last = event
    if last is not None:
        console.print(f"job {job}: {last.state}{': ' + last.message if last.message else ''}", highlight=False)
        if last.state != "done":
            raise typer.Exit(1)


@index_app.command("build")
def index_build(store: StoreArg, backend: BackendOpt = None, param: ParamOpt = None, rerank: RerankOpt = None,
                memory_budget: BudgetOpt = None) -> None:
    """Rebuild STORE's search index, e.g. with another backend or under a memory budget."""
    from polymodal.index.build import build_spec
    from polymodal.index.store import Store

    with Store(store, writable=True) as opened:
        built = build_spec(opened, _index_spec(backend, param, rerank, memory_budget))
    console.print(f"built {built['backend']} {built['params']} index of {store}: {built['counts']} items, "
                  f"{built['bytes']} bytes{'; ' + built['reason'] if built['reason'] else ''}", highlight=False)


def _index_spec(backend: str | None, param: list[str] | None, rerank: int | None, budget: str | None) -> Any:
    from polymodal.index.auto import parse_bytes
    from polymodal.index.build import IndexSpec, parse_params

    if budget and (backend or param):
        from polymodal.errors import StoreError

        raise StoreError("--memory-budget chooses the backend and its parameters; drop --backend/--param")
    return IndexSpec(backend, parse_params(param) if param else None, rerank,
                     parse_bytes(budget) if budget else None)


def search(
    store: StoreArg,
    query: Annotated[str | None, typer.Argument(help=(
        "Text, an image path, or arithmetic: \"beach + 2:dog - people\", \"cat.jpg + snow\"."))] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many results.")] = 10,
    modality: Annotated[str, typer.Option(help="What to find: image or text (captions).")] = "image",
    like: Annotated[list[int] | None, typer.Option(help="More like these item ids (repeatable).")] = None,
    where: Annotated[list[str] | None, typer.Option(help="Metadata filter KEY=VALUE (repeatable).")] = None,
    path: Annotated[str, typer.Option(help="Only items whose path matches this glob, e.g. '*/beach/*'.")] = "",
    model: ModelOpt = None,
    reembed: ReembedOpt = False,
    rerank: Annotated[int | None, typer.Option(
        min=1, help="Re-order the top RERANK images by the --reranker model's image-text matching log-odds "
                    "plus this model's logit; shows P(match).")] = None,
    reranker: Annotated[Path | None, typer.Option(help="A fusion model directory (ITM head) for --rerank.")
                        ] = None,
    device: DeviceOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Search STORE by text, image or arithmetic of both; or find items like given ones."""
    from polymodal.errors import DataError
    from polymodal.index.api import reembed_store
    from polymodal.index.search import Filter, Searcher, parse_filters

    if (query is None) == (not like):
        raise DataError("give a QUERY or --like ITEM_ID, not both and not neither")
    if reembed and model:
        reembed_store(store, model, device=device)
        model = None
    if (rerank is None) != (reranker is None):
        raise DataError("--rerank N and --reranker MODEL go together")
    if rerank is not None and like:
        raise DataError("--rerank re-scores a text query's results; it does not apply to --like")
    where_filter = Filter(parse_filters(where or []), path)
    itm = None
    if reranker is not None:
        from polymodal.index.rerank import ITMReranker

        itm = ITMReranker(reranker, device=device or "cpu")
    with Searcher(store, model=model, device=device) as searcher:
        hits = (searcher.more_like(list(like or []), k, modality, where_filter) if like
                else searcher.search(str(query), k, modality, where_filter, reranker=itm, rerank_top=rerank or k))
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    matched = reranker is not None  # re-ranked: ordered by both models, P(match) shown beside the cosine
    table = Table("rank", "id", "score", *(["P(match)"] if matched else []),
                  "image" if modality == "image" else "caption", title=query or f"like {like}")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), str(hit.id), f"{hit.score:.3f}", *([f"{hit.match or 0.0:.3f}"] if matched else []),
                      hit.text if hit.modality == "text" else hit.uri)
    console.print(table)


def dedup(
    store: StoreArg,
    threshold: Annotated[float, typer.Option(help="Cosine similarity from which two images count as duplicates.")
                         ] = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """List groups of duplicate and near-duplicate images in STORE, from their embeddings."""
    from dataclasses import asdict

    from polymodal.index.dedup import find_duplicates

    groups = find_duplicates(store, threshold)
    if as_json:
        print(json.dumps([asdict(g) for g in groups], indent=2))
        return
    for number, group in enumerate(groups, 1):
        console.print(f"[bold]group {number}[/bold] ({len(group.ids)} images, similarity >= "
                      f"{group.min_similarity:.3f})", highlight=False)
        for item_id, uri in zip(group.ids, group.uris, strict=True):
            console.print(f"  {item_id}  {uri}", highlight=False)
    console.print(f"{len(groups)} groups, {sum(len(g.ids) for g in groups)} images")


def serve(
    store: StoreArg,
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 keeps it to this machine.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    model: ModelOpt = None,
    device: DeviceOpt = "",
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest accepted upload, in MB.")] = 20.0,
    api_key: Annotated[str | None, typer.Option(
        envvar="POLYMODAL_API_KEY", help="Require this key (X-API-Key header) to add or remove items.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="A browser origin allowed to call the API (repeatable); none by default.")] = None,
    reranker: Annotated[Path | None, typer.Option(
        help="A fusion model (polymodal train, task = \"fusion\"): the page can re-rank text searches with it "
             "and show where it looks for each word.")] = None,
    rerank_top: Annotated[int, typer.Option(min=1, max=200, help="Candidates the reranker re-scores.")] = 20,
) -> None:
    """Serve STORE over HTTP: search, items, thumbnails, zero-shot classification (API docs at /docs)."""
    import uvicorn

    from polymodal.serve.app import create_app
    from polymodal.serve.service import Limits, SearchService

    limits = Limits(max_upload_bytes=int(max_upload_mb * 2**20))
    service = SearchService(store, model=model, device=device, limits=limits, reranker=reranker,
                            rerank_top=rerank_top)
    with console.status("loading the model and the index"):
        service.warm()
    console.print(f"serving {store} on http://{host}:{port} (API docs: http://{host}:{port}/docs); Ctrl-C stops",
                  highlight=False)
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print("[yellow]warning:[/yellow] anyone who can reach this address can add and remove items; "
                      "set --api-key (or POLYMODAL_API_KEY)")
    app = create_app(service, api_key=api_key, cors_origins=tuple(cors_origin or ()))
    uvicorn.run(app, host=host, port=port, log_level="warning")
