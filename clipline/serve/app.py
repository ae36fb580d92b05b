"""The web app: server-rendered pages (search, review queue, run history) and the JSON API under /api/.

Pages are Jinja templates with a little JavaScript for the queue's keys (`static/`); there is no
front-end build. The API is documented by the OpenAPI page at /docs (Swagger UI served from the
package by fastapi-offline: no CDN, the page works on an air-gapped network). Everything goes
through one `Service` (the table and its model, loaded once at start) and, for access, the
`Access` rules (see access.py).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at
# run time, and they name dependencies defined in this module.
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as FormFile  # what `request.form()` holds (fastapi's subclasses it)
from starlette.middleware.trustedhost import TrustedHostMiddleware

from clipline.moderation.queue import QueueOrder
from clipline.serve.access import SAFE_METHODS, SESSION_COOKIE, TOKEN_COOKIE, Access, Identity, Refused
from clipline.serve.filters import FilterError, ScoreRange, SearchFilters
from clipline.serve.service import MAX_K, SearchQuery, Service
from clipline.serve.settings import ServeSettings, is_loopback
from clipline.table.embedding import MAX_QUERY_IMAGE_BYTES

HERE = Path(__file__).resolve().parent
PUBLIC_PATHS = {"/login", "/healthz"}
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")
# Posts without a CSRF token: searches change nothing, logging in or out needs no prior page.
# Their `Origin` is still checked, like every post's.
CSRF_EXEMPT = {"/search/image", "/api/search/image", "/login", "/logout"}
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
DecisionValue = Literal["allow", "review", "block", "clear", "skip"]


# --------------------------------------------------------------------------- API models


class Reason(BaseModel):
    category: str
    action: str
    score: float
    threshold: float
    margin: float


class ResultRow(BaseModel):
    """A table row as the page shows it; `score` is the cosine to the query (null when browsing)."""

    id: str
    score: float | None = None
    decision: str | None = None
    labels: list[str] | None = None
    reasons: list[Reason] | None = None
    status: str
    source: str | None = None
    text: str | None = None
    image_uri: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    override_decision: str | None = None
    override_by: str | None = None
    override_at: datetime | None = None
    dup_of: str | None = None
    run_id: str | None = None
    thumbnail_url: str


class SearchResponse(BaseModel):
    results: list[ResultRow]


class QueueResponse(BaseModel):
    reviewer: str
    rows: list[ResultRow]


class DecisionItem(BaseModel):
    id: str
    decision: DecisionValue = Field(description="allow / review / block; clear removes an override; skip sets aside")
    note: str | None = None


class DecideRequest(BaseModel):
    decisions: list[DecisionItem] = Field(min_length=1, max_length=1000)


class DecideResponse(BaseModel):
    batch: str | None = Field(description="the audit-log batch id (pass it to /api/undo); null when only skips")
    applied: int
    skipped: int
    table_version: int | None = None
    left_alone: list[str] = Field(default_factory=list, description="rows a concurrent run replaced: not decided")


class UndoRequest(BaseModel):
    batch: str


class UndoResponse(BaseModel):
    undone: int
    batch: str
    undoes: str
    table_version: int


class SessionResponse(BaseModel):
    reviewer: str
    csrf: str = Field(description="send as X-CSRF-Token with every POST that carries the session cookie")


# --------------------------------------------------------------------------- request parsing


def optional_float(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise FilterError(f"{text!r} is not a number") from None


def search_params(
    q: Annotated[str | None, Query(description="text query (text → image)")] = None,
    like: Annotated[str | None, Query(description="a row id: rows whose images are like its image")] = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 24,
    decision: Annotated[list[str], Query(description="allow / review / block (any of)")] = [],  # noqa: B006
    label: Annotated[list[str], Query(description="rows with any of these labels")] = [],  # noqa: B006
    status: Annotated[str | None, Query(description="ok / failed")] = None,
    run_id: Annotated[str | None, Query()] = None,
    reviewed: Annotated[str | None, Query(description="yes / no: with or without a reviewer decision")] = None,
    score_category: Annotated[list[str], Query(description="with score_min/score_max, one per range")] = [],  # noqa: B006
    score_min: Annotated[list[str], Query()] = [],  # noqa: B006
    score_max: Annotated[list[str], Query()] = [],  # noqa: B006
    where: Annotated[str | None, Query(description="extra SQL filter, combined with AND")] = None,
) -> SearchQuery:
    """The search form's fields (also the query string of GET /api/search) as one query."""
    ranges = [
        ScoreRange(category, optional_float(low), optional_float(high))
        for category, low, high in zip(score_category, score_min, score_max, strict=False)
        if category
    ]
    filters = SearchFilters(
        decisions=tuple(value for value in decision if value),
        labels=tuple(value for value in label if value),
        status=status or None,
        run_id=run_id or None,
        reviewed={"yes": True, "no": False}.get(reviewed or ""),
        scores=tuple(ranges),
        where=where or None,
    )
    return SearchQuery(text=q or None, like=like or None, filters=filters, k=k)


LIST_FIELDS = {"decision", "label", "score_category", "score_min", "score_max"}
SCALAR_FIELDS = {"q", "like", "status", "run_id", "reviewed", "where"}


def form_search_params(form: FormData, image: bytes) -> SearchQuery:
    """The same fields posted with an image (the page's "search by image" button)."""
    fields: dict[str, Any] = {name: form.getlist(name) for name in LIST_FIELDS}
    fields.update({name: form.get(name) or None for name in SCALAR_FIELDS if name != "q"})
    query = search_params(k=int(form.get("k") or 24), **fields)
    return SearchQuery(image=image, filters=query.filters, k=query.k)


async def read_upload(upload: FormFile) -> bytes:
    data = await upload.read(MAX_QUERY_IMAGE_BYTES + 1)
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise FilterError(f"query image over the limit of {MAX_QUERY_IMAGE_BYTES} bytes")
    if not data:
        raise FilterError("no query image was uploaded")
    return data


# --------------------------------------------------------------------------- the app


def service(request: Request) -> Service:
    """The process's one `Service`, opened in the app's lifespan."""
    return request.app.state.service


def identity(request: Request) -> Identity:
    """Who is asking, as the access middleware found out."""
    return request.state.identity


def create_app(settings: ServeSettings) -> FastAPI:
    """The ASGI app; the table and the model are opened in its lifespan (once per server process)."""
    settings.check()
    access = Access(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = Service(settings.db, settings.table, settings.storage, settings.lease_s)
        yield

    app = FastAPIOffline(
        title="clipline",
        summary=f"Search and review table {settings.table!r}",
        description="Search, the leased review queue and reviewer decisions over one clipline table. "
        "With `--auth token`, send `Authorization: Bearer <token>`.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(HTTPBearer(auto_error=False))] if settings.auth == "token" else [],
    )
    if is_loopback(settings.host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"])
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        """A server-rendered page with the reviewer, the CSRF token and a strict CSP."""
        context.update(
            reviewer=request.state.identity.reviewer,
            csrf=access.csrf_token(request.state.session),
            table=settings.table,
            auth=settings.auth,
            path=request.url.path,
        )
        response = templates.TemplateResponse(request, name, context)
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    @app.middleware("http")
    async def check_access(request: Request, call_next: Callable) -> Response:
        """Identify every request, refuse forged posts, give every browser a session for its CSRF token."""
        session = request.cookies.get(SESSION_COOKIE) or secrets.token_urlsafe(24)
        request.state.session = session
        path = request.url.path
        try:
            if request.method not in SAFE_METHODS:
                access.check_origin(request)
            if not (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
                request.state.identity = access.identify(request)
                if path not in CSRF_EXEMPT:
                    access.check_csrf(request, request.state.identity, request.cookies.get(SESSION_COOKIE, ""))
        except Refused as refused:
            if refused.status == 401 and not path.startswith("/api/") and request.method == "GET":
                response: Response = RedirectResponse(f"/login?next={quote(str(request.url.path))}", status_code=303)
            else:
                response = JSONResponse({"detail": refused.message}, status_code=refused.status)
                if refused.status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
            return response
        response = await call_next(request)
        if SESSION_COOKIE not in request.cookies:
            secure = request.url.scheme == "https"
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", secure=secure)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(ValueError)
    async def user_error(request: Request, exc: ValueError) -> Response:
        """A filter, a row id, an upload or a decision that cannot be used (FilterError, ReviewError, ...)."""
        return JSONResponse({"detail": str(exc)}, status_code=400)

    # ------------------------------------------------------------------ pages

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        response = templates.TemplateResponse(request, "login.html", {"next": safe_next(next), "error": None})
        response.headers["Content-Security-Policy"] = PAGE_CSP
        return response

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/") -> Response:
        try:
            access.login(token)
        except Refused as refused:
            context = {"next": safe_next(next), "error": refused.message}
            return templates.TemplateResponse(request, "login.html", context, status_code=401)
        response = RedirectResponse(safe_next(next), status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=secure)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(TOKEN_COOKIE)
        return response

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def search_page(
        request: Request,
        query: Annotated[SearchQuery, Depends(search_params)],
        svc: Annotated[Service, Depends(service)],
    ) -> HTMLResponse:
        return render_search(request, svc, query, None)

    @app.post("/search/image", include_in_schema=False, response_class=HTMLResponse)
    async def image_search_page(request: Request, svc: Annotated[Service, Depends(service)]) -> HTMLResponse:
        form = await request.form()
        upload = form.get("image")
        if not (isinstance(upload, FormFile) and upload.filename):
            return render_search(request, svc, form_search_params(form, b""), None, "choose an image to search with")
        try:
            image = await read_upload(upload)
        except FilterError as exc:
            return render_search(request, svc, form_search_params(form, b""), upload.filename, str(exc))
        return render_search(request, svc, form_search_params(form, image), upload.filename)

    def render_search(
        request: Request, svc: Service, query: SearchQuery, upload: str | None, error: str | None = None
    ) -> HTMLResponse:
        rows = []
        if error is None:
            try:
                rows = svc.with_thumbnails(svc.search(query))
            except ValueError as exc:  # a bad filter, an unknown row id, an undecodable upload: said on the page
                error = str(exc)
        filters = query.filters
        return page(
            request,
            "search.html",
            query=query,
            filters=filters,
            upload=upload,
            rows=rows,
            error=error,
            shape=svc.shape,
            runs=[run["run_id"] for run in svc.runs(limit=20)],
            like_link=lambda row_id: "/?" + urlencode({**like_params(request), "like": row_id}, doseq=True),
        )

    @app.get("/queue", include_in_schema=False, response_class=HTMLResponse)
    def queue_page(
        request: Request,
        svc: Annotated[Service, Depends(service)],
        who: Annotated[Identity, Depends(identity)],
        order: QueueOrder = QueueOrder.SCORE,
        include_block: bool = False,
        size: Annotated[int | None, Query(ge=1, le=200)] = None,
    ) -> HTMLResponse:
        size = size or settings.page_size
        rows = svc.with_thumbnails(svc.queue(who.reviewer, order, include_block, size))
        return page(request, "queue.html", rows=rows, order=order, include_block=include_block, size=size)

    @app.get("/runs", include_in_schema=False, response_class=HTMLResponse)
    def runs_page(request: Request, svc: Annotated[Service, Depends(service)]) -> HTMLResponse:
        return page(request, "runs.html", runs=svc.runs())

    @app.get("/runs/{run_id}/report", include_in_schema=False)
    def run_report(run_id: str, svc: Annotated[Service, Depends(service)]) -> Response:
        report = svc.run_report(run_id)
        if report is None:
            raise HTTPException(404, f"no report for run {run_id!r}")
        return Response(report, media_type="text/html", headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/runs/{run_id}/manifest.json", include_in_schema=False)
    def run_manifest(run_id: str, svc: Annotated[Service, Depends(service)]) -> Response:
        manifest = svc.manifests.read(run_id)
        if manifest is None:
            raise HTTPException(404, f"no manifest for run {run_id!r}")
        return JSONResponse(manifest)

    # ------------------------------------------------------------------ API

    @app.get("/api/search", response_model=SearchResponse, tags=["search"])
    def api_search(
        query: Annotated[SearchQuery, Depends(search_params)], svc: Annotated[Service, Depends(service)]
    ) -> SearchResponse:
        """Text → image search, more like a row (`like`), or a filtered browse (neither)."""
        return SearchResponse(results=[api_row(row) for row in svc.search(query)])

    @app.post("/api/search/image", response_model=SearchResponse, tags=["search"])
    async def api_image_search(
        request: Request, image: Annotated[UploadFile, File()], svc: Annotated[Service, Depends(service)]
    ) -> SearchResponse:
        """Reverse image search: upload an image (64 MiB at most); the filter fields as form fields."""
        query = form_search_params(await request.form(), await read_upload(image))
        return SearchResponse(results=[api_row(row) for row in svc.search(query)])

    @app.get("/api/thumbnail/{row_id}", tags=["search"], responses={200: {"content": {"image/webp": {}}}})
    def api_thumbnail(row_id: str, svc: Annotated[Service, Depends(service)]) -> Response:
        """A row's stored thumbnail (WebP, 160 px)."""
        data = svc.thumbnail(row_id)
        if data is None:
            raise HTTPException(404, f"no thumbnail for row {row_id!r}")
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/queue", response_model=QueueResponse, tags=["review"])
    def api_queue(
        svc: Annotated[Service, Depends(service)],
        who: Annotated[Identity, Depends(identity)],
        order: QueueOrder = QueueOrder.SCORE,
        include_block: bool = False,
        size: Annotated[int, Query(ge=1, le=200)] = 24,
    ) -> QueueResponse:
        """The caller's page of the review queue, leased to them (renewed by asking again)."""
        rows = svc.queue(who.reviewer, order, include_block, size)
        return QueueResponse(reviewer=who.reviewer, rows=[api_row(row) for row in rows])

    @app.post("/api/decide", response_model=DecideResponse, tags=["review"])
    def api_decide(
        body: DecideRequest, svc: Annotated[Service, Depends(service)], who: Annotated[Identity, Depends(identity)]
    ) -> DecideResponse:
        """Reviewer decisions as one batch: one table commit, one audit record (as `clipline review apply`)."""
        items = [(item.id, item.decision, item.note) for item in body.decisions]
        summary = svc.decide(who.reviewer, items, source="web")
        return DecideResponse(
            **{key: summary.get(key) for key in ("batch", "applied", "skipped", "table_version")},
            left_alone=summary.get("left_alone", []),
        )

    @app.post("/api/undo", response_model=UndoResponse, tags=["review"])
    def api_undo(
        body: UndoRequest, svc: Annotated[Service, Depends(service)], who: Annotated[Identity, Depends(identity)]
    ) -> UndoResponse:
        """Restore the rows of one of the caller's batches to their state before it (one commit)."""
        return UndoResponse(**svc.undo(who.reviewer, body.batch))

    @app.get("/api/session", response_model=SessionResponse, tags=["review"])
    def api_session(request: Request, who: Annotated[Identity, Depends(identity)]) -> SessionResponse:
        """Who the server thinks you are, and the CSRF token for posts that carry the session cookie."""
        return SessionResponse(reviewer=who.reviewer, csrf=access.csrf_token(request.state.session))

    @app.get("/api/runs", tags=["runs"])
    def api_runs(
        svc: Annotated[Service, Depends(service)], limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> list[dict]:
        """The recorded run manifests, newest first."""
        return svc.runs(limit)

    return app


def safe_next(target: str) -> str:
    """Only paths on this server (no `//host` or scheme): the login form is no open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def like_params(request: Request) -> dict[str, list[str]]:
    """The current filters, to carry into "more like this" links."""
    keep = LIST_FIELDS | (SCALAR_FIELDS - {"q", "like"}) | {"k"}
    return {name: request.query_params.getlist(name) for name in keep if request.query_params.getlist(name)}


def api_row(row: dict) -> ResultRow:
    fields = {name: value for name, value in row.items() if name in ResultRow.model_fields}
    return ResultRow(**fields, thumbnail_url=f"/api/thumbnail/{quote(row['id'], safe='')}")
