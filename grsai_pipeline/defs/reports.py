"""A batch's Dagster events, built in one place whichever run writes them: each asset's
materialization of the batch with its checks' results, from one snapshot of the batch.

A batch's own run yields them from its step as ``MaterializeResult`` (:meth:`AssetReport.result`);
the re-polling run from its op as ``AssetMaterialization`` and ``AssetCheckEvaluation`` events
of the batch's partition (:meth:`AssetReport.events`). The metadata and the checks are the same.
"""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine as Database
from tabulate import tabulate

from grsai_pipeline.defs.archiving import archive_check, archive_metadata
from grsai_pipeline.defs.checks import (
    LEDGER_CHECK,
    POLLED_KEY,
    SETTLED_KEY,
    TASKS_CHECK,
    VIDEO_CHECK,
    ledger_check,
    tasks_check,
    video_check,
)
from grsai_pipeline.defs.metadata import batch_metadata, video_links
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.store.archives import ArchiveState
from grsai_pipeline.store.batches import BatchView, read_batch, read_batches
from grsai_pipeline.store.db import reading
from grsai_pipeline.store.outcomes import BatchOutcomes, batch_outcomes
from grsai_pipeline.videos.archiver import ArchiveReport

ARCHIVED_KEY = dg.AssetKey("archived_videos")
ARCHIVE_CHECK_NAME = "videos_archived_in_time"


@dataclass(frozen=True)
class BatchSnapshot:
    """A batch as one read of the database saw it: its counts (and a preview of its tasks, when
    read with one) and what its tasks came to."""

    view: BatchView
    outcomes: BatchOutcomes


def snapshot(db: Database, batch_id: str, preview_rows: int, policy: RetryPolicy) -> BatchSnapshot:
    """One batch with a preview of its first tasks (a batch's own run); what a backfill would
    retry as ``policy`` bounds it."""
    with reading(db) as conn:
        view = read_batch(conn, batch_id, task_limit=preview_rows)
        return BatchSnapshot(view, batch_outcomes(conn, [batch_id], policy=policy)[batch_id])


def snapshots(
    db: Database, batch_ids: Sequence[str], policy: RetryPolicy
) -> dict[str, BatchSnapshot]:
    """Many batches in one read, without task previews (the re-polling run, thousands)."""
    with reading(db) as conn:
        views = read_batches(conn, batch_ids)
        outcomes = batch_outcomes(conn, batch_ids, policy=policy)
    return {b: BatchSnapshot(views[b], outcomes[b]) for b in batch_ids}


@dataclass(frozen=True)
class AssetReport:
    """One asset's materialization of one batch, and its checks' results (name, fields)."""

    asset: dg.AssetKey
    batch_id: str
    metadata: dict[str, Any]
    checks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def shown(self) -> dict[str, Any]:
        """The metadata, with a ``checks`` table of this report's check results: the asset's
        partition page shows its latest materialization's metadata but not its checks (Dagster
        1.13), so there each batch names its own results."""
        if not self.checks:
            return self.metadata
        return self.metadata | {"checks": dg.MetadataValue.md(checks_table(self.checks))}

    def result(self) -> dg.MaterializeResult:
        """As the batch's own step yields it."""
        return dg.MaterializeResult(
            asset_key=self.asset,
            metadata=self.shown(),
            check_results=[
                dg.AssetCheckResult(check_name=name, asset_key=self.asset, **fields)
                for name, fields in self.checks
            ],
        )

    def events(self) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
        """As an op that follows many batches yields it, for the batch's partition."""
        yield dg.AssetMaterialization(
            asset_key=self.asset, partition=self.batch_id, metadata=self.shown()
        )
        for name, fields in self.checks:
            yield dg.AssetCheckEvaluation(
                asset_key=self.asset, check_name=name, partition=self.batch_id, **fields
            )


def checks_table(checks: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The results as a Markdown table: the check, passed / failed / warning, what it says."""
    rows = [
        {
            "check": name,
            "result": "passed"
            if fields["passed"]
            else ("warning" if fields.get("severity") == dg.AssetCheckSeverity.WARN else "failed"),
            "says": str(fields.get("description", "")).replace("|", "\\|"),
        }
        for name, fields in checks
    ]
    return tabulate(rows, headers="keys", tablefmt="pipe")


def polled_report(
    snap: BatchSnapshot, extra: dict[str, Any], missing_videos: list[int] | None
) -> AssetReport:
    """``polled_results``; its video check when tasks ended (``missing_videos`` read)."""
    checks = [] if missing_videos is None else [(VIDEO_CHECK.name, video_check(missing_videos))]
    metadata = {**batch_metadata(snap.view, snap.outcomes), **extra}
    return AssetReport(POLLED_KEY, snap.view.batch_id, metadata, checks)


def settled_report(
    snap: BatchSnapshot, extra: dict[str, Any], settlement: str, ledger_problems: list[str]
) -> AssetReport:
    """``settled_ledger``: ``settlement`` says "settled" or what it waits on."""
    metadata = {**batch_metadata(snap.view, snap.outcomes), **extra, "settlement": settlement}
    checks = [
        (LEDGER_CHECK.name, ledger_check(ledger_problems)),
        (TASKS_CHECK.name, tasks_check(snap.view, snap.outcomes)),
    ]
    return AssetReport(SETTLED_KEY, snap.view.batch_id, metadata, checks)


def archived_report(
    batch_id: str,
    state: ArchiveState,
    outcomes: BatchOutcomes,
    extra: dict[str, Any],
    archived: ArchiveReport | None = None,
) -> AssetReport:
    """``archived_videos`` and its ``videos_archived_in_time`` check."""
    metadata = {**archive_metadata(state, archived), **video_links(outcomes), **extra}
    return AssetReport(
        ARCHIVED_KEY, batch_id, metadata, [(ARCHIVE_CHECK_NAME, archive_check(state))]
    )
