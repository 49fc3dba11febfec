"""Errors of the store that a caller shows to a person."""

from __future__ import annotations


class StoreError(Exception):
    """Base class; ``str()`` is one line fit for a terminal."""


class UnknownBatch(StoreError):
    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"unknown batch id {batch_id!r}")


class UnknownAccount(StoreError):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"no credit account for user {user_id!r}")


class InsufficientCredits(StoreError):
    def __init__(self, user_id: str, balance: int, needed: int) -> None:
        self.user_id = user_id
        self.balance = balance
        self.needed = needed
        super().__init__(
            f"user {user_id!r} has {balance} credits but the batch needs {needed};"
            " nothing was written"
        )
