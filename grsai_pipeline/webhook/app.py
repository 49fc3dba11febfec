"""The callback receiver of SPEC 5 (``grsai-pipeline webhook serve``).

``POST /api/video/callback?task_id=...&token=...`` with the body Grsai posts to a ``webHook``:
the poll answer ``{"code", "msg", "data"}``, or its ``data`` alone. Answers:

- 200 ``applied``: the task moved (progress, a final state, or pending for a new attempt);
- 200 ``unchanged``: nothing new (a repeated callback, or the task is already final), so a
  sender that retries stops;
- 400 missing ``task_id``/``token``, a body that is not JSON, or no ``data.id``;
- 403 a token that does not verify for that task (HMAC with ``GRSAI_WEBHOOK_SECRET``);
- 404 no such task; 409 ``data.id`` is not the task's current remote task (an earlier attempt);
- 413 a body over 64 KiB; 422 a body that is not shaped like a poll answer.

Every 4xx changes nothing. Polling goes on beside callbacks, so a callback that is lost or
refused (say, it arrives before the submit's answer was recorded) only delays its task.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final

import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from grsai_pipeline.domain.callbacks import CALLBACK_PATH, token_is_valid
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.engine.callbacks import CallbackVerdict, apply_callback
from grsai_pipeline.errors import CallbackRefused
from grsai_pipeline.grsai.wire import PollResponse, parse_callback
from grsai_pipeline.store.outages import is_outage, ride_out

MAX_BODY_BYTES: Final = 64 * 1024
# How long a callback waits out a failover of the application database before its 503.
OUTAGE_TOLERANCE_S: Final = 10.0
STATUS_OF: Final = {
    CallbackVerdict.APPLIED: 200,
    CallbackVerdict.UNCHANGED: 200,
    CallbackVerdict.UNKNOWN_TASK: 404,
    CallbackVerdict.OTHER_ATTEMPT: 409,
}

log = logging.getLogger(__name__)


def create_app(engine: Engine, secret: str, policy: RetryPolicy) -> Starlette:
    """The receiver as an ASGI app, writing to ``engine``."""

    async def callback(request: Request) -> JSONResponse:
        task_id = request.query_params.get("task_id", "")
        try:
            if not task_id or not request.query_params.get("token"):
                raise CallbackRefused(400, "task_id and token are required query parameters")
            if not token_is_valid(secret, task_id, request.query_params["token"]):
                raise CallbackRefused(403, "token does not verify for this task")
            answer = _parse(await _read_body(request))
        except CallbackRefused as refused:
            log.warning("callback refused (%s): %s", refused.status, refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        try:
            outcome = await asyncio.to_thread(
                ride_out, "webhook", lambda: apply_callback(engine, policy, task_id, answer),
                OUTAGE_TOLERANCE_S,
            )  # fmt: skip
        except SQLAlchemyError as error:
            if not is_outage(error):
                raise
            # Longer than a sender waits: it may send again, and the backstop poll tells too.
            return JSONResponse(
                {"error": "the application database is unreachable; try again later"},
                status_code=503,
                headers={"Retry-After": "10"},
            )
        log.info("callback for task %s: %s (%s)", task_id, outcome.verdict, outcome.status)
        return JSONResponse(
            {"task_id": task_id, "result": outcome.verdict.value, "status": outcome.status},
            status_code=STATUS_OF[outcome.verdict],
        )

    return Starlette(routes=[Route(CALLBACK_PATH, callback, methods=["POST"])])


async def _read_body(request: Request) -> bytes:
    # Checked while reading, since a chunked body announces no length.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise CallbackRefused(413, f"body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _parse(body: bytes) -> PollResponse:
    try:
        document = json.loads(body)
    except ValueError:
        raise CallbackRefused(400, "body is not JSON") from None
    try:
        answer = parse_callback(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise CallbackRefused(422, f"{where}: {first['msg']}") from None
    if answer.data is None or not answer.data.id:
        raise CallbackRefused(400, "data.id is required: it names the remote task")
    return answer


def serve(engine: Engine, secret: str, policy: RetryPolicy, host: str, port: int) -> None:
    """Run the receiver in the foreground; the access log is off because URLs carry tokens."""
    app = create_app(engine, secret, policy)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, lifespan="off")
