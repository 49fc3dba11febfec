"""How a batch reads on a terminal and in ``--json``: the one place the CLI shows batches."""

from __future__ import annotations

from typing import Any

from grsai_pipeline.store.batches import BatchView


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
    return (
        f"batch {view.batch_id} ({view.user_id}): {view.status}, {counts}; "
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
