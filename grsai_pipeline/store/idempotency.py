"""Idempotency keys (Stripe's ``Idempotency-Key``): a request retried with the same key replays
the first answer and writes nothing.

:func:`once` runs a request's work and keeps its answer under (user, key) in the same
transaction. A second request with the key finds that row and gets the answer back; one with
the key but another request is refused. Of two requests racing with one key, the first to
insert the key does the work; the other's insert of the key waits for it (PostgreSQL's unique
index; SQLite runs one write transaction at a time) and then breaks ``pk_idempotency_keys``:
its transaction rolls back whole, and it replays the winner's answer. When the winner fails
(short of credits, say), its key goes with its rollback and the other goes ahead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from grsai_pipeline.errors import IdempotencyConflict, InvalidInput
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.schema import idempotency_keys

# Long enough for any client's scheme (a UUID, a request hash), short enough to index.
MAX_KEY_LENGTH = 255

Answer = dict[str, Any]


@dataclass(frozen=True)
class Keyed:
    """An idempotency key for one kind of request (``batch_create``, ``credits_grant``)."""

    user_id: str
    key: str
    request: str
    request_sha256: str

    @classmethod
    def of(cls, user_id: str, key: str, request: str, body: object) -> Keyed:
        check_key(key)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return cls(user_id, key, request, hashlib.sha256(canonical.encode()).hexdigest())


def check_key(key: str) -> None:
    """InvalidInput naming ``--idempotency-key`` when the key cannot be one."""
    if not key.strip():
        raise InvalidInput("--idempotency-key", "must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput("--idempotency-key", f"must be at most {MAX_KEY_LENGTH} characters")


def once(
    engine: Engine, keyed: Keyed | None, work: Callable[[Connection], Answer]
) -> tuple[Answer, bool]:
    """``work``'s answer and False, or the first answer under ``keyed`` and True (a replay).

    ``work`` runs in the transaction that keeps the key; whatever it raises rolls both back.
    """
    if keyed is None:
        with engine.begin() as conn:
            return work(conn), False
    try:
        with engine.begin() as conn:
            stored = _stored(conn, keyed)
            if stored is not None:
                return stored, True
            # The key first: a concurrent request with it waits here (PostgreSQL's unique
            # index) until this transaction ends, then replays what it committed.
            conn.execute(
                idempotency_keys.insert().values(
                    user_id=keyed.user_id,
                    idempotency_key=keyed.key,
                    request=keyed.request,
                    request_sha256=keyed.request_sha256,
                    response={},
                    created_at=utc_now(),
                )
            )
            answer = work(conn)
            k = idempotency_keys.c
            conn.execute(
                idempotency_keys.update()
                .where(k.user_id == keyed.user_id, k.idempotency_key == keyed.key)
                .values(response=answer)
            )
            return answer, False
    except IntegrityError:
        # Another request with this key committed first (else the error was not the key's).
        with reading(engine) as conn:
            stored = _stored(conn, keyed)
        if stored is None:
            raise
        return stored, True


def _stored(conn: Connection, keyed: Keyed) -> Answer | None:
    k = idempotency_keys.c
    row = conn.execute(
        sa.select(k.request, k.request_sha256, k.response, k.created_at).where(
            k.user_id == keyed.user_id, k.idempotency_key == keyed.key
        )
    ).one_or_none()
    if row is None:
        return None
    if (row.request, row.request_sha256) != (keyed.request, keyed.request_sha256):
        raise IdempotencyConflict(keyed.key, row.request, row.created_at.isoformat())
    return dict(row.response)
