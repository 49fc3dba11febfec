"""Credit accounts: grants and balances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.errors import InvalidInput, UnknownAccount
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.ledger import ensure_account, lock_balance, write_entries
from grsai_pipeline.store.schema import credit_accounts

# Far above any real balance, and below 2**63: SQLite turns an overflowing integer into a REAL.
MAX_BALANCE = 2**62


@dataclass(frozen=True)
class Account:
    user_id: str
    balance: int
    held: int
    updated_at: datetime


def grant_credits(engine: Engine, user_id: str, amount: int) -> Account:
    """Add ``amount`` (> 0) spendable credits to the user's account, creating it if needed."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput("amount", f"must be a positive integer, got {amount!r}")
    if amount > MAX_BALANCE:
        raise InvalidInput("amount", f"must be at most {MAX_BALANCE}, got {amount}")
    if not user_id.strip():
        raise InvalidInput("user", "must not be empty")
    now = utc_now()
    with engine.begin() as conn:
        ensure_account(conn, user_id, now)
        if (lock_balance(conn, user_id) or 0) + amount > MAX_BALANCE:
            raise InvalidInput("amount", f"would take the balance over {MAX_BALANCE} credits")
        write_entries(
            conn, [LedgerEntry(user_id=user_id, kind=EntryKind.GRANT, amount=amount)], now
        )
    return get_account(engine, user_id)


def get_account(engine: Engine, user_id: str) -> Account:
    with reading(engine) as conn:
        row = conn.execute(
            sa.select(credit_accounts).where(credit_accounts.c.user_id == user_id)
        ).one_or_none()
    if row is None:
        raise UnknownAccount(user_id)
    return Account(
        user_id=row.user_id, balance=row.balance, held=row.held, updated_at=row.updated_at
    )
