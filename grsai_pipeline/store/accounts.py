"""Credit accounts: grants and balances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.errors import InvalidInput, UnknownAccount
from grsai_pipeline.store.batches import read_batch
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.idempotency import Answer, Keyed, once
from grsai_pipeline.store.ledger import (
    LedgerLine,
    ensure_account,
    list_entries,
    lock_balance,
    record_transaction,
    running_ledger,
)
from grsai_pipeline.store.schema import credit_accounts

# Far above any real balance, and below 2**63: SQLite turns an overflowing integer into a REAL.
MAX_BALANCE = 2**62


@dataclass(frozen=True)
class Account:
    user_id: str
    balance: int
    held: int
    updated_at: datetime
    # True when an idempotency key replayed an earlier grant's answer (nothing written).
    replayed: bool = False


def grant_credits(
    engine: Engine, user_id: str, amount: int, *, idempotency_key: str | None = None
) -> Account:
    """Add ``amount`` (> 0) spendable credits to the user's account, creating it if needed.

    With ``idempotency_key``, a repeat of the same grant returns the account as the first one
    left it and grants nothing; the key with another amount raises IdempotencyConflict.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput("amount", f"must be a positive integer, got {amount!r}")
    if amount > MAX_BALANCE:
        raise InvalidInput("amount", f"must be at most {MAX_BALANCE}, got {amount}")
    if not user_id.strip():
        raise InvalidInput("user", "must not be empty")
    keyed = None
    if idempotency_key is not None:
        keyed = Keyed.of(user_id, idempotency_key, "credits_grant", {"amount": amount})

    def grant(conn: Connection) -> Answer:
        now = utc_now()
        ensure_account(conn, user_id, now)
        if (lock_balance(conn, user_id) or 0) + amount > MAX_BALANCE:
            raise InvalidInput("amount", f"would take the balance over {MAX_BALANCE} credits")
        record_transaction(
            conn, [LedgerEntry(user_id=user_id, kind=EntryKind.GRANT, amount=amount)], now
        )
        account = _read_account(conn, user_id)
        return {"balance": account.balance, "held": account.held, "at": now.isoformat()}

    answer, replayed = once(engine, keyed, grant)
    at = datetime.fromisoformat(answer["at"])
    return Account(user_id, answer["balance"], answer["held"], at, replayed)


def account_ledger(engine: Engine, user_id: str, batch_id: str | None = None) -> list[LedgerLine]:
    """The account's ledger, oldest first, each entry with the account's balance after it (one
    batch's part of it, when given: the balances stay the whole account's). UnknownAccount for
    a user with no account, UnknownBatch, or InvalidInput naming ``--batch`` for a batch of
    another user (the same for ``credits ledger`` and the API)."""
    with reading(engine) as conn:
        _read_account(conn, user_id)
        if batch_id is not None and read_batch(conn, batch_id, with_tasks=False).user_id != user_id:
            raise InvalidInput("--batch", f"{batch_id} is a batch of another user")
        lines = running_ledger(list_entries(conn, user_id=user_id))
    if batch_id is not None:
        lines = [line for line in lines if line.entry.batch_job_id == batch_id]
    return lines


def get_account(engine: Engine, user_id: str) -> Account:
    with reading(engine) as conn:
        return _read_account(conn, user_id)


def _read_account(conn: Connection, user_id: str) -> Account:
    row = conn.execute(
        sa.select(credit_accounts).where(credit_accounts.c.user_id == user_id)
    ).one_or_none()
    if row is None:
        raise UnknownAccount(user_id)
    return Account(
        user_id=row.user_id, balance=row.balance, held=row.held, updated_at=row.updated_at
    )
