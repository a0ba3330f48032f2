"""The FastAPI app over a `SearchService`. Routes only translate HTTP to service calls;
errors become JSON (`{"error": ...}`) with no stack traces.

    app = create_app(SearchService("photos.pm"))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi import Path as FastPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from polymodal import __version__
from polymodal.errors import PolymodalError, StoreBusy
from polymodal.index.jobs import JOB_ID
from polymodal.index.search import Filter, parse_filters
from polymodal.serve.metrics import Metrics
from polymodal.serve.schemas import (
    ClassifyOut,
    ErrorOut,
    ExplainOut,
    HealthOut,
    ItemOut,
    JobOut,
    Modality,
    SearchOut,
)
from polymodal.serve.service import NotFound, SearchService, TooLarge

log = logging.getLogger("polymodal.serve")


class Forbidden(PolymodalError):
    """A write without the configured API key."""

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'")
ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut}, 404: {"model": ErrorOut},
                                           413: {"model": ErrorOut}}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorOut}, 409: {"model": ErrorOut}}
K = Annotated[int, Query(ge=1, le=200, description="How many results.")]
WhereQ = Annotated[list[str] | None, Query(description="Metadata filter KEY=VALUE (repeatable).")]
PathQ = Annotated[str, Query(max_length=500, description="Only items whose path matches this glob.")]
ItemId = Annotated[int, FastPath(ge=0, le=2**63 - 1, description="An item id, as search results give it.")]
JobId = Annotated[str, FastPath(pattern=f"^{JOB_ID.pattern}$", description="A job id, as /api/jobs lists them.")]
STREAM_POLL_S = 0.25  # how often a job stream looks for new events
STREAM_HEARTBEAT_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
STREAM_MAX_S = 3600.0  # a stream ends after this long; EventSource reconnects with Last-Event-ID


def create_app(service: SearchService, api_key: str | None = None, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """`api_key`: when set, adding and removing items needs it in the X-API-Key header.
    `cors_origins`: browser origins allowed to call the API (none by default)."""
    app = FastAPI(title="polymodal", version=__version__, description=(
        "Search an image-text store by text, image or item; read items; classify an image zero-shot."))
    _errors(app)
    metrics = Metrics()
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["X-API-Key"])

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        # the page may load only what this server serves: no external requests, ever
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        route = request.scope.get("route")
        metrics.observe(getattr(route, "path", "unmatched"), request.method, response.status_code,
                        time.perf_counter() - start)
        return response

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key is not None and not (x_api_key and hmac.compare_digest(x_api_key, api_key)):
            raise Forbidden("this endpoint needs the server's API key in the X-API-Key header")

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def prometheus() -> str:
        health = service.health()
        return metrics.render({"polymodal_items": {"image": health.images, "text": health.texts}})

    @app.post("/api/items", response_model=ItemOut, responses=WRITE_ERRORS, tags=["items"],
              dependencies=[Depends(require_key)])
    def add_item(file: Annotated[UploadFile, File(description="An image file to add to the store.")]) -> ItemOut:
        return service.add_image(_read_upload(file, service))

    @app.delete("/api/items/{item_id}", responses=WRITE_ERRORS, tags=["items"],
                dependencies=[Depends(require_key)])
    def remove_item(item_id: ItemId) -> dict[str, int]:
        return {"removed": service.remove(item_id)}

    @app.get("/api/jobs", response_model=list[JobOut], tags=["jobs"])
    def jobs(limit: Annotated[int, Query(ge=1, le=100, description="How many, newest first.")] = 20) -> list[JobOut]:
        return service.jobs(limit)

    @app.post("/api/jobs/index", response_model=JobOut, status_code=202, tags=["jobs"],
              responses=WRITE_ERRORS, dependencies=[Depends(require_key)])
    def start_index_job() -> JobOut:
        """Re-index the store's folders in the background (new, changed and deleted files);
        follow it with /api/jobs/{job_id}/events."""
        return service.start_index_job()

    @app.get("/api/jobs/{job_id}", response_model=JobOut, responses=ERRORS, tags=["jobs"])
    def job(job_id: JobId) -> JobOut:
        return service.job(job_id)

    @app.get("/api/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
             tags=["jobs"])
    async def job_events(request: Request, job_id: JobId, last_event_id: Annotated[int | None, Header(
                             ge=-1, description="Resume after this event (browsers send it on reconnect).")] = None,
                         ) -> StreamingResponse:
        """Server-sent events: one `data:` line of JSON per progress event (the lines the CLI
        progress bar draws), until the job is done, failed or interrupted."""
        await run_in_threadpool(service.job, job_id)  # 404 before the stream starts
        start = -1 if last_event_id is None else last_event_id

        async def stream() -> AsyncIterator[str]:
            after, began, quiet_since = start, time.monotonic(), time.monotonic()
            while time.monotonic() - began < STREAM_MAX_S and not await request.is_disconnected():
                events, ended = await run_in_threadpool(service.job_events_since, job_id, after)
                for event in events:
                    yield f"id: {event.seq}\ndata: {event.to_json()}\n\n"
                    after, quiet_since = event.seq, time.monotonic()
                if ended:
                    return
                if time.monotonic() - quiet_since > STREAM_HEARTBEAT_S:
                    yield ": still running\n\n"
                    quiet_since = time.monotonic()
                await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", response_model=HealthOut, tags=["service"])
    def health() -> HealthOut:
        return service.health()

    @app.get("/api/search", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search(q: Annotated[str, Query(min_length=1, max_length=1000, description=(
                   "Text, or arithmetic of texts: 'beach + 2:dog - people'."))],
               k: K = 10, modality: Modality = "image", where: WhereQ = None, path: PathQ = "",
               rerank: Annotated[bool, Query(description=(
                   "Re-score the top candidates with the server's fusion model (serve --reranker); "
                   "plain text, images only."))] = False) -> SearchOut:
        return service.search_text(_text_only(q), k, modality, _filter(where, path), rerank=rerank)

    @app.get("/api/items/{item_id}/explain", response_model=ExplainOut, responses=ERRORS, tags=["search"])
    def explain(item_id: ItemId, text: Annotated[str, Query(min_length=1, max_length=1000, description=(
                    "The text whose words' attention over the image to show."))]) -> ExplainOut:
        """Where the server's fusion model looks in the image for each word of the text (404 without one)."""
        return service.explain(item_id, text)

    @app.post("/api/search/image", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def search_image(file: Annotated[UploadFile, File(description="An image file.")], k: Annotated[int, Form(
                         ge=1, le=200)] = 10, modality: Annotated[Modality, Form()] = "image") -> SearchOut:
        return service.search_image(_read_upload(file, service), k, modality)

    @app.get("/api/items/{item_id}/similar", response_model=SearchOut, responses=ERRORS, tags=["search"])
    def similar(item_id: ItemId, k: K = 10, modality: Modality = "image", where: WhereQ = None,
                path: PathQ = "") -> SearchOut:
        return service.similar(item_id, k, modality, _filter(where, path))

    @app.get("/api/items/{item_id}", response_model=ItemOut, responses=ERRORS, tags=["items"])
    def item(item_id: ItemId) -> ItemOut:
        return service.item(item_id)

    @app.get("/api/items/{item_id}/thumbnail", responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
             tags=["items"])
    def thumbnail(item_id: ItemId) -> Response:
        return Response(service.thumbnail(item_id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/items/{item_id}/original", responses={200: {"content": {"image/*": {}}}, **ERRORS},
             tags=["items"])
    def original(item_id: ItemId) -> Response:
        data, media_type = service.original(item_id)
        return Response(data, media_type=media_type, headers={"Content-Disposition": "inline"})

    @app.post("/api/classify", response_model=ClassifyOut, responses=ERRORS, tags=["classify"])
    def classify(file: Annotated[UploadFile, File(description="An image file.")],
                 labels: Annotated[str, Form(max_length=10_000, description="Comma-separated labels.")],
                 template: Annotated[str, Form(max_length=200)] = "a photo of a {}.") -> ClassifyOut:
        return service.classify(_read_upload(file, service), labels.split(","), template)

    return app


def _json_error(status: int) -> Any:
    def handler(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=status)

    return handler


def _text_only(query: str) -> str:
    """Over HTTP a query is text: a term that looks like a server path is not opened."""
    from polymodal.data.sources import IMAGE_EXTENSIONS

    for term in query.replace("+", " ").replace(" - ", " ").split():
        if any(term.lower().endswith(ext) for ext in IMAGE_EXTENSIONS):
            raise PolymodalError(f"image terms are not accepted over HTTP ({term!r}); upload the image instead")
    return query


def _filter(where: list[str] | None, path: str) -> Filter:
    return Filter(parse_filters(where or []), path)


def _read_upload(file: UploadFile, service: SearchService) -> bytes:
    if file.content_type and not file.content_type.startswith(("image/", "application/octet-stream")):
        raise PolymodalError(f"expected an image upload, got content type {file.content_type!r}")
    data = file.file.read(service.limits.max_upload_bytes + 1)
    if len(data) > service.limits.max_upload_bytes:
        raise TooLarge(f"the upload is larger than {service.limits.max_upload_bytes} bytes")
    return data


# Most specific first: Starlette picks the handler of the nearest class in the MRO anyway.
STATUS_OF: tuple[tuple[type[PolymodalError], int], ...] = ((Forbidden, 403), (NotFound, 404), (StoreBusy, 409),
                                                           (TooLarge, 413), (PolymodalError, 400))


def _errors(app: FastAPI) -> None:
    for kind, status in STATUS_OF:
        app.add_exception_handler(kind, _json_error(status))

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """Unknown routes and wrong methods: the same JSON shape as every other error."""
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    def internal(request: Request, err: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(err).__name__)
        return JSONResponse({"error": "internal error"}, status_code=500)
