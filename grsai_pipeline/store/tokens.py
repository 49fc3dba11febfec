"""The HTTP API's bearer tokens (SPEC 9): made, listed, revoked, and checked per request.

A token is ``gp_`` and 43 URL-safe characters (256 random bits), shown once when made. The
database keeps its SHA-256 only: with that much entropy a plain hash is enough (no salt or slow
hash is needed, unlike a password), and a request's token is found by its hash through the
unique index. The hash found is then compared again in constant time. A revoked token's row
stays, so its name is not given to another token; every request reads the row, so a
revocation holds from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from grsai_pipeline.errors import InvalidInput
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.schema import api_tokens

PREFIX: Final = "gp_"
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created_at: datetime
    revoked_at: datetime | None


def create_token(engine: Engine, name: str) -> str:
    """A new token named ``name``; the only time the token itself is seen."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "NAME",
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(
                api_tokens.insert().values(
                    name=name, token_sha256=_sha256(token), created_at=utc_now()
                )
            )
    except IntegrityError:
        raise InvalidInput(
            "NAME", f"{name!r} already names a token (revoked ones keep their names)"
        ) from None
    return token


def list_tokens(engine: Engine) -> list[TokenInfo]:
    t = api_tokens.c
    with reading(engine) as conn:
        rows = conn.execute(sa.select(t.name, t.created_at, t.revoked_at).order_by(t.created_at))
        return [TokenInfo(row.name, row.created_at, row.revoked_at) for row in rows]


def revoke_token(engine: Engine, name: str) -> TokenInfo:
    """Revoke the token named ``name`` (a revoked one stays as it was)."""
    t = api_tokens.c
    with engine.begin() as conn:
        conn.execute(
            api_tokens.update()
            .where(t.name == name, t.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
        row = conn.execute(
            sa.select(t.name, t.created_at, t.revoked_at).where(t.name == name)
        ).one_or_none()
    if row is None:
        raise InvalidInput("NAME", f"no token is named {name!r}")
    return TokenInfo(row.name, row.created_at, row.revoked_at)


def token_name(engine: Engine, token: str) -> str | None:
    """The name of the live token ``token``, or None (unknown, revoked, or not a token)."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    digest = _sha256(token)
    t = api_tokens.c
    with reading(engine) as conn:
        row = conn.execute(
            sa.select(t.name, t.token_sha256).where(
                t.token_sha256 == digest, t.revoked_at.is_(None)
            )
        ).one_or_none()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return str(row.name)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
