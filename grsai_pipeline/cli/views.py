"""How batches and the ledger read on a terminal and in ``--json``: the one place the CLI
shows them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry, account_change
from grsai_pipeline.store.batches import BatchView
from grsai_pipeline.store.ledger import LedgerRow


def batch_json(view: BatchView) -> dict[str, Any]:
    """The ``batch status --json`` object of SPEC 6 (with a few more keys)."""
    return {
        "batch_id": view.batch_id,
        "user_id": view.user_id,
        "status": view.status,
        "total_tasks": view.total_tasks,
        "counts": view.counts,
        "progress_percent": view.progress_percent,
        "reserved_credits": view.reserved_credits,
        "charged_credits": view.charged_credits,
        "refunded_credits": view.refunded_credits,
        "possible_duplicates": view.possible_duplicates,
        "created_at": view.created_at.isoformat(),
        "settled_at": view.settled_at.isoformat() if view.settled_at else None,
        "cancelled_at": view.cancelled_at.isoformat() if view.cancelled_at else None,
        "tasks": [
            {
                "id": task.id,
                "batch_index": task.batch_index,
                "status": task.status,
                "model": task.model,
                "video_url": task.video_url,
                "error_message": task.error_message,
                "attempts": task.attempts,
                "progress": task.progress,
                "price": task.price,
                "possible_duplicates": task.possible_duplicates,
                "archived_url": task.archived_url,
                "archived_at": task.archived_at.isoformat() if task.archived_at else None,
                "video_bytes": task.video_bytes,
                "video_sha256": task.video_sha256,
                "archive_error": task.archive_error,
            }
            for task in view.tasks
        ],
    }


def describe_batch(view: BatchView) -> str:
    counts = ", ".join(f"{count} {status}" for status, count in view.counts.items() if count)
    duplicates = (
        f"; {view.possible_duplicates} possible duplicate submit(s)"
        if view.possible_duplicates
        else ""
    )
    cancelled = ", cancelled" if view.cancelled_at else ""
    return (
        f"batch {view.batch_id} ({view.user_id}): {view.status}{cancelled}, {counts}; "
        f"credits reserved {view.reserved_credits}, charged {view.charged_credits}, "
        f"refunded {view.refunded_credits}{duplicates}"
    )


def tasks_table(view: BatchView) -> str:
    import pandas as pd  # only the commands that print tables pay for it

    frame = pd.DataFrame(
        [
            {
                "#": task.batch_index,
                "model": task.model or "-",
                "status": task.status,
                "attempts": task.attempts,
                "result": task.video_url or task.error_message or f"{task.progress}%",
            }
            for task in view.tasks
        ]
    )
    return frame.to_string(index=False) if not frame.empty else "(no tasks)"


def batch_list_table(views: Sequence[BatchView]) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "batch": view.batch_id,
                "user": view.user_id,
                "status": view.status + (" (cancelled)" if view.cancelled_at else ""),
                "created": view.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                **{status: count for status, count in view.counts.items()},
                "reserved": view.reserved_credits,
                "charged": view.charged_credits,
                "refunded": view.refunded_credits,
            }
            for view in views
        ]
    )
    return frame.to_string(index=False) if not frame.empty else "(no batches)"


def batch_list_json(views: Sequence[BatchView]) -> list[dict[str, Any]]:
    return [{k: v for k, v in batch_json(view).items() if k != "tasks"} for view in views]


@dataclass(frozen=True)
class LedgerLine:
    """A ledger entry with the account as it stood after it."""

    entry: LedgerRow
    balance: int
    held: int


def running_ledger(entries: Sequence[LedgerRow]) -> list[LedgerLine]:
    """Each entry (oldest first, the account's whole ledger) with the balance after it."""
    lines, balance, held = [], 0, 0
    for row in entries:
        change = account_change([LedgerEntry(row.user_id, EntryKind(row.kind), row.amount)])
        balance, held = balance + change.balance, held + change.held
        lines.append(LedgerLine(row, balance, held))
    return lines


def ledger_table(lines: Sequence[LedgerLine]) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "entry": line.entry.id,
                "transaction": line.entry.transaction_id[:8],
                "kind": line.entry.kind,
                "amount": line.entry.amount,
                "batch": (line.entry.batch_job_id or "-")[:8],
                "task #": "-" if line.entry.batch_index is None else line.entry.batch_index,
                "reservation": "-" if line.entry.reservation is None else line.entry.reservation,
                "balance": line.balance,
                "held": line.held,
            }
            for line in lines
        ]
    )
    return frame.to_string(index=False) if not frame.empty else "(no entries)"


def ledger_json(lines: Sequence[LedgerLine]) -> list[dict[str, Any]]:
    return [
        {
            "id": line.entry.id,
            "transaction_id": line.entry.transaction_id,
            "kind": line.entry.kind,
            "amount": line.entry.amount,
            "batch_job_id": line.entry.batch_job_id,
            "video_task_id": line.entry.video_task_id,
            "batch_index": line.entry.batch_index,
            "reservation": line.entry.reservation,
            "created_at": line.entry.created_at.isoformat(),
            "balance": line.balance,
            "held": line.held,
        }
        for line in lines
    ]
