"""Which batches an engine works on: one batch (a per-batch run), or every open batch (the
re-polling run). Who submits and who polls each task is decided per task in the database
(claims: store/tasks.py; poll holds: store/polls.py), so scopes may overlap freely."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection

from grsai_pipeline.store.batches import open_batch_ids
from grsai_pipeline.store.runners import Heartbeat, open_batch_runners, successors_live


class Scope(Protocol):
    def batch_ids(self, conn: Connection) -> list[str]:
        """The batches to work on now, oldest first."""
        ...

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        """Whether a newer runner has taken this scope over (this one hands over and ends)."""
        ...

    def engines(self, conn: Connection, lease_s: float) -> int:
        """How many live engines share this scope's free tasks at the API (this one among
        them): each takes its share."""
        ...


@dataclass(frozen=True)
class OneBatch:
    batch_id: str

    def batch_ids(self, conn: Connection) -> list[str]:
        return [self.batch_id]

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        return False  # a batch's own run ends when its batch does

    def engines(self, conn: Connection, lease_s: float) -> int:
        return 1  # a run of one batch takes what of its batch nobody polls


@dataclass(frozen=True)
class OpenBatches:
    """Every batch not settled, whatever other runs of it exist; ``runs`` such runners at work
    at once (GRSAI_REPOLL_RUNS)."""

    lease_s: float
    runs: int = 1

    def batch_ids(self, conn: Connection) -> list[str]:
        return open_batch_ids(conn)

    def handed_over(self, conn: Connection, runner: Heartbeat) -> bool:
        # The newest ``runs`` re-polling runners work; an older one hands over once it sees them.
        return successors_live(conn, runner, self.lease_s) >= self.runs

    def engines(self, conn: Connection, lease_s: float) -> int:
        # Beyond ``runs``, the oldest are handing over: their tasks are the newer ones' share.
        return max(1, min(open_batch_runners(conn, lease_s), self.runs))
