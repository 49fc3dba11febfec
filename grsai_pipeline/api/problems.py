"""Errors as RFC 9457 problem details: the one table from the error root to HTTP statuses.

Each product error becomes ``application/problem+json`` with ``type``, ``title``, ``status``
and ``detail`` (the command line's one-line message), and ``field`` when a field is to blame.
The first row whose class matches wins, so subclasses come before their parents. Anything not
in the table is a 500 whose detail says nothing of the inside (it is logged instead).
"""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

from grsai_pipeline.api.models import Problem
from grsai_pipeline.errors import (
    DatabaseNotReady,
    GrsaiPipelineError,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    LinkExpired,
    LinkForged,
    NoArchivedVideo,
    UnknownAccount,
    UnknownBatch,
)

MEDIA_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "urn:grsai-pipeline:problem:"

# (error class, HTTP status, type slug, title)
PROBLEMS: Final[tuple[tuple[type[GrsaiPipelineError], int, str, str], ...]] = (
    (IdempotencyConflict, 409, "idempotency-conflict", "Idempotency key used for another request"),
    (InvalidInput, 422, "invalid-input", "Invalid input"),
    (InsufficientCredits, 402, "insufficient-credits", "Not enough credits"),
    (UnknownBatch, 404, "unknown-batch", "No such batch"),
    (UnknownAccount, 404, "unknown-account", "No such credit account"),
    (NoArchivedVideo, 404, "no-archived-video", "No archived video"),
    (LinkExpired, 403, "link-expired", "Link expired"),
    (LinkForged, 403, "bad-link-signature", "Bad link signature"),
    (DatabaseNotReady, 503, "database-not-ready", "Database not ready"),
)

# The store names fields as the command line does; the API's own names for them.
API_FIELD: Final = {
    "--idempotency-key": "Idempotency-Key",
    "user": "user_id",
    "USER": "user_id",
    "AMOUNT": "amount",
    "--batch": "batch_id",
}


def problem(status: int, slug: str, title: str, detail: str, field: str | None = None) -> Problem:
    return Problem(type=TYPE_BASE + slug, title=title, status=status, detail=detail, field=field)


def problem_of(error: GrsaiPipelineError) -> Problem | None:
    """The problem an error of the product is, or None when the table has no row for it."""
    for kind, status, slug, title in PROBLEMS:
        if isinstance(error, kind):
            if isinstance(error, InvalidInput):
                field = API_FIELD.get(error.field, error.field)
                return problem(status, slug, title, f"{field} {error.rule}", field)
            return problem(status, slug, title, str(error))
    return None


def internal() -> Problem:
    return problem(500, "internal", "Internal error", "the server failed; the error is logged")


def respond(found: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        found.model_dump(exclude_none=True),
        status_code=found.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )
