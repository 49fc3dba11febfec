"""How batches and the ledger read on a terminal and in ``--json``: the one place the CLI
shows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grsai_pipeline.api.models import BatchOut, BatchSummary, LedgerEntryOut
from grsai_pipeline.store.batches import BatchView
from grsai_pipeline.store.ledger import LedgerLine


def batch_json(view: BatchView) -> dict[str, Any]:
    """The ``batch status --json`` object of SPEC 6: the API's batch (``api/models.py``)."""
    return BatchOut.of(view).model_dump(mode="json")


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
                "reservation": task.reservation,
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
    return [BatchSummary.of(view).model_dump(mode="json") for view in views]


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
    return [LedgerEntryOut.of(line).model_dump(mode="json") for line in lines]
