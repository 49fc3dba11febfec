"""The routes of SPEC 9 over the store's own functions (``grsai-pipeline api serve``).

Every route but ``/healthz`` wants ``Authorization: Bearer <token>`` (``store/tokens.py``),
checked against the database on each request, so a revoked token is refused at once;
``GET /v1/videos/{task_id}`` opens with a signed link instead (``domain/links.py``), so that a
link in the Dagster UI opens in a browser. Handlers are plain functions (FastAPI runs them on its
thread pool) that call what the commands call: ``create_batch``, ``cancel_batch``,
``grant_credits``, the ledger, the archive. Errors become problem details through one table
(``problems.py``); the access log shows method, path (a link's signature hidden) and status.
"""

# No "from __future__ import annotations": FastAPI reads these hints (some name local
# dependencies) when the routes are made.

import copy
import logging
import re
import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Final

import uvicorn
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, StreamingResponse
from uvicorn.config import LOGGING_CONFIG

from grsai_pipeline.api import problems
from grsai_pipeline.api.cursors import (
    batch_cursor,
    ledger_cursor,
    read_batch_cursor,
    read_ledger_cursor,
)
from grsai_pipeline.api.limits import MAX_BODY_BYTES, BodyLimit
from grsai_pipeline.api.models import (
    MAX_USER_ID_CHARS,
    BatchOut,
    BatchPage,
    BatchSummary,
    CancelOut,
    CreateBatch,
    CreditsOut,
    Grant,
    LedgerEntryOut,
    LedgerPage,
    Problem,
)
from grsai_pipeline.domain.links import LinkCheck, check_link
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import BatchStatus
from grsai_pipeline.errors import (
    DatabaseNotReady,
    GrsaiPipelineError,
    LinkExpired,
    LinkForged,
    NoArchivedVideo,
)
from grsai_pipeline.store.accounts import account_ledger, get_account, grant_credits
from grsai_pipeline.store.archives import archived_copy
from grsai_pipeline.store.batches import create_batch, get_batch, list_batches
from grsai_pipeline.store.cancels import cancel_batch
from grsai_pipeline.store.idempotency import MAX_KEY_LENGTH
from grsai_pipeline.store.migrate import HEAD_REVISION, current_revision, require_head
from grsai_pipeline.store.tokens import token_name
from grsai_pipeline.videos.objects import open_archived

REPLAYED: Final = "Idempotent-Replayed"
MAX_PAGE: Final = 200
log = logging.getLogger(__name__)


class NotAuthenticated(Exception):
    """No token, an unknown one, or a revoked one."""


class VideoResponse(StreamingResponse):
    media_type = "video/mp4"


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problems a route may answer: its own, and those of every route behind the token."""
    statuses = (401, 422, 503, *statuses)
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }


REPLAY_HEADER: Final = {
    REPLAYED: {
        "description": "true when an Idempotency-Key replayed the first answer",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Makes a retry safe: the same key and body replay the first answer.",
    ),
]
BatchId = Annotated[str, Path(max_length=36)]
UserId = Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_CHARS)]
Cursor = Annotated[str | None, Query(description="next_cursor of the page before.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def create_app(
    engine: Engine, prices: PriceTable, *, lease_s: float, link_secret: str | None = None
) -> FastAPI:
    """The API as an ASGI app over ``engine``, pricing with ``prices``; videos open by signed
    links too when ``link_secret`` (GRSAI_LINK_SECRET) is set."""
    bearer = HTTPBearer(
        auto_error=False, description="A token made by `grsai-pipeline api token create NAME`."
    )

    def authenticated(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        name = token_name(engine, credentials.credentials) if credentials else None
        if name is None:
            raise NotAuthenticated
        return name

    app = FastAPI(
        title="grsai-pipeline",
        version="1",
        summary="Batches of AI videos paid for in credits (SPEC 9).",
        openapi_url=None,  # served below, behind the token like every route but /healthz
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    _handle_errors(app)
    auth = [Depends(authenticated)]

    @app.get("/healthz", tags=["health"], response_model=dict[str, str])
    def healthz() -> dict[str, str]:
        """The process answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], dependencies=auth, responses=_problem_responses())
    def readyz() -> dict[str, str]:
        """The application database answers, at the schema this version needs."""
        try:
            revision = current_revision(engine)
        except SQLAlchemyError:
            raise DatabaseNotReady("the application database does not answer") from None
        require_head(revision)
        return {"status": "ready", "schema_revision": HEAD_REVISION}

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.post(
        "/v1/batches",
        tags=["batches"],
        dependencies=auth,
        status_code=201,
        response_model=BatchOut,
        responses={
            201: {"description": "Created", "headers": {}},
            200: {"model": BatchOut, "description": "Replayed", "headers": REPLAY_HEADER},
            **_problem_responses(402, 409, 413),
        },
    )
    def post_batch(body: CreateBatch, response: Response, key: IdempotencyKey = None) -> BatchOut:
        """Create a batch and reserve its credits (as `batch create`)."""
        new = create_batch(engine, body.user_id, body.tasks, prices, idempotency_key=key)
        if new.replayed:
            response.status_code = 200
            response.headers[REPLAYED] = "true"
        return BatchOut.of(get_batch(engine, new.batch_id))

    @app.get(
        "/v1/batches",
        tags=["batches"],
        dependencies=auth,
        response_model=BatchPage,
        responses=_problem_responses(),
    )
    def get_batches(
        user_id: Annotated[str | None, Query(max_length=MAX_USER_ID_CHARS)] = None,
        status: BatchStatus | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> BatchPage:
        """Batches, newest first, a page at a time (as `batch list`)."""
        before = read_batch_cursor(cursor) if cursor is not None else None
        views = list_batches(engine, status=status, user_id=user_id, limit=limit + 1, before=before)
        page, more = views[:limit], len(views) > limit
        last = page[-1] if more else None
        return BatchPage(
            batches=[BatchSummary.of(view) for view in page],
            next_cursor=batch_cursor(last.created_at, last.batch_id) if last else None,
        )

    @app.get(
        "/v1/batches/{batch_id}",
        tags=["batches"],
        dependencies=auth,
        response_model=BatchOut,
        responses=_problem_responses(404),
    )
    def get_one_batch(batch_id: BatchId) -> BatchOut:
        """A batch with its tasks (as `batch status --json`)."""
        return BatchOut.of(get_batch(engine, batch_id))

    @app.post(
        "/v1/batches/{batch_id}/cancel",
        tags=["batches"],
        dependencies=auth,
        response_model=CancelOut,
        responses=_problem_responses(404),
    )
    def post_cancel(batch_id: BatchId) -> CancelOut:
        """Cancel a batch (as `batch cancel`): unsent tasks fail and are refunded now."""
        return CancelOut.of(cancel_batch(engine, batch_id, lease_s=lease_s))

    @app.get(
        "/v1/users/{user_id}/credits",
        tags=["credits"],
        dependencies=auth,
        response_model=CreditsOut,
        responses=_problem_responses(404),
    )
    def get_credits(user_id: UserId) -> CreditsOut:
        """A user's spendable and held credits (as `credits show`)."""
        return CreditsOut.of(get_account(engine, user_id))

    @app.get(
        "/v1/users/{user_id}/ledger",
        tags=["credits"],
        dependencies=auth,
        response_model=LedgerPage,
        responses=_problem_responses(404),
    )
    def get_ledger(
        user_id: UserId,
        batch_id: Annotated[str | None, Query(max_length=36)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Cursor = None,
    ) -> LedgerPage:
        """A user's ledger, oldest first, each entry with the balance after it (as `credits
        ledger`)."""
        after = read_ledger_cursor(cursor) if cursor is not None else -1
        lines = [
            line for line in account_ledger(engine, user_id, batch_id) if line.entry.id > after
        ]
        page, more = lines[:limit], len(lines) > limit
        return LedgerPage(
            user_id=user_id,
            entries=[LedgerEntryOut.of(line) for line in page],
            next_cursor=ledger_cursor(page[-1].entry.id) if more else None,
        )

    @app.post(
        "/v1/users/{user_id}/grants",
        tags=["credits"],
        dependencies=auth,
        status_code=201,
        response_model=CreditsOut,
        responses={
            200: {"model": CreditsOut, "description": "Replayed", "headers": REPLAY_HEADER},
            **_problem_responses(409, 413),
        },
    )
    def post_grant(
        user_id: UserId, body: Grant, response: Response, key: IdempotencyKey = None
    ) -> CreditsOut:
        """Add spendable credits to a user's account (as `credits grant`)."""
        account = grant_credits(engine, user_id, body.amount, idempotency_key=key)
        if account.replayed:
            response.status_code = 200
            response.headers[REPLAYED] = "true"
        return CreditsOut.of(account)

    @app.get(
        "/v1/videos/{task_id}",
        tags=["videos"],
        response_class=VideoResponse,
        responses={
            200: {
                "description": "The archived video, streamed from the archive",
                "content": {
                    VideoResponse.media_type: {"schema": {"type": "string", "format": "binary"}}
                },
                "headers": {"Content-Length": {"schema": {"type": "integer"}}},
            },
            **_problem_responses(403, 404),
        },
    )
    def get_video(
        task_id: Annotated[str, Path(max_length=36)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        expires: Annotated[int | None, Query(ge=0, description="A signed link's end.")] = None,
        signature: Annotated[
            str | None, Query(max_length=128, description="A signed link's HMAC.")
        ] = None,
    ) -> VideoResponse:
        """A succeeded task's archived video, with the bearer token or as a signed link
        (`expires`, `signature`: the links the Dagster UI shows) without one."""
        if not (credentials and token_name(engine, credentials.credentials)):
            _open_link(link_secret, task_id, expires, signature)
        stored = archived_copy(engine, task_id)
        try:
            size, chunks = open_archived(stored.url)
        except FileNotFoundError:
            log.error("the archived video of task %s is missing from the archive", task_id)
            raise NoArchivedVideo(task_id, "its copy is missing from the archive") from None
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": f'inline; filename="{task_id}.mp4"',
        }
        return VideoResponse(chunks, headers=headers)

    app.openapi = _problem_media_type(app)  # type: ignore[method-assign]
    return app


def _open_link(
    secret: str | None, task_id: str, expires: int | None, signature: str | None
) -> None:
    """A request without a live token opens a video only with a signed link that is valid now."""
    if expires is None and signature is None:
        raise NotAuthenticated
    if secret is None:
        raise LinkForged("signed links are off on this server (GRSAI_LINK_SECRET is not set)")
    if expires is None or signature is None:
        raise LinkForged("a signed link carries both expires and signature")
    found = check_link(secret, task_id, expires, signature, time.time())
    if found is LinkCheck.FORGED:
        raise LinkForged("the signature does not match this task and expiry")
    if found is LinkCheck.EXPIRED:
        ended = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
        raise LinkExpired(f"the link expired at {ended}; a new run's metadata has a new one")


def _handle_errors(app: FastAPI) -> None:
    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(_request: Request, _exc: Exception) -> Response:
        found = problems.problem(
            401,
            "not-authenticated",
            "Not authenticated",
            "Authorization must be `Bearer <token>` with a live token (grsai-pipeline api token "
            "create NAME)",
            "Authorization",
        )
        return problems.respond(found, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(GrsaiPipelineError)
    async def product_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GrsaiPipelineError)
        found = problems.problem_of(exc)
        if found is None:
            log.error("request failed: %s", exc)
            found = problems.internal()
        return problems.respond(found)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problems.respond(_validation_problem(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI's own: a body it could not decode
            found = problems.problem(
                422, "invalid-input", "Invalid input", "body: is not valid UTF-8 JSON", "body"
            )
            return problems.respond(found)
        phrase = HTTPStatus(exc.status_code).phrase
        slug = phrase.lower().replace(" ", "-")
        return problems.respond(problems.problem(exc.status_code, slug, phrase, str(exc.detail)))

    @app.exception_handler(OperationalError)
    async def database_down(_request: Request, exc: Exception) -> Response:
        log.error("the application database failed a request: %s", type(exc).__name__)
        found = problems.problem(
            503, "database-unavailable", "Database unavailable", "the database did not answer"
        )
        return problems.respond(found)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("request failed unexpectedly: %s", type(exc).__name__, exc_info=exc)
        return problems.respond(problems.internal())


def _validation_problem(exc: RequestValidationError) -> Problem:
    """422 naming the first field refused: ``tasks[3]``, ``limit``, ``Idempotency-Key``."""
    first = exc.errors()[0]
    where, *path = first.get("loc", ("body",))
    if first.get("type") == "json_invalid":
        field, rule = "body", "is not valid JSON"
    elif not path and where == "body" and first.get("type") != "missing":
        field, rule = "body", "must be a JSON object sent as Content-Type: application/json"
    else:
        field = _field_name(str(where), path)
        rule = str(first.get("msg", "is invalid")).lower()
    return problems.problem(422, "invalid-input", "Invalid input", f"{field}: {rule}", field)


def _field_name(where: str, path: list[Any]) -> str:
    if not path:
        return where
    if where == "header":
        return "-".join(part.capitalize() for part in str(path[0]).split("-"))
    name = str(path[0])
    for part in path[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _problem_media_type(app: FastAPI) -> Any:
    """``app.openapi`` with every error response as ``application/problem+json``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, answer in operation.get("responses", {}).items():
                    content = answer.get("content", {})
                    if str(status)[0] in "45" and content:
                        # FastAPI gave it the route's media type (JSON; a video's on videos).
                        answer["content"] = {problems.MEDIA_TYPE: next(iter(content.values()))}
        return schema

    return openapi


class _HideSignatures(logging.Filter):
    """A signed link's signature is a credential until it expires: not for the access log."""

    SIGNATURE = re.compile(r"(signature=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.SIGNATURE.sub(r"\1[hidden]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def serve(
    engine: Engine,
    prices: PriceTable,
    lease_s: float,
    host: str,
    port: int,
    link_secret: str | None = None,
) -> None:
    """Serve in the foreground. The access log shows method, path and status: no header (the
    token, the idempotency key), no body, and no link's signature."""
    app = create_app(engine, prices, lease_s=lease_s, link_secret=link_secret)
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["filters"] = {"hide_signatures": {"()": _HideSignatures}}
    log_config["handlers"]["access"]["filters"] = ["hide_signatures"]
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True, log_config=log_config)
