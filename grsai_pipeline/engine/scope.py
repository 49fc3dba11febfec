"""Which batches an engine works on: one batch (a per-batch run), or every open batch that no
other runner is working on (the re-polling run)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Connection

from grsai_pipeline.store.batches import open_batch_ids
from grsai_pipeline.store.runners import Heartbeat, batches_with_live_runners, successor_is_live


class Scope(Protocol):
    def batch_ids(self, conn: Connection) -> list[str]:
        """The batches to work on now, oldest first."""
        ...

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        """Whether a newer runner has taken this scope over (this one should end)."""
        ...


@dataclass(frozen=True)
class OneBatch:
    batch_id: str

    def batch_ids(self, conn: Connection) -> list[str]:
        return [self.batch_id]

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        return False  # a batch's own run ends when its batch does


@dataclass(frozen=True)
class OpenBatches:
    """Every batch not settled, but those a live per-batch runner works on, and those that
    ``busy`` names (the orchestrator's own runs of one batch, queued or starting)."""

    lease_s: float
    busy: Callable[[], set[str]] = field(default=set)

    def batch_ids(self, conn: Connection) -> list[str]:
        taken = batches_with_live_runners(conn, self.lease_s) | self.busy()
        return [b for b in open_batch_ids(conn) if b not in taken]

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        # The newest re-polling runner works; an older one hands over as soon as it sees it.
        return successor_is_live(conn, runner, self.lease_s)
