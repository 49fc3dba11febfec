"""Materialization metadata a person reads at a glance in the Dagster UI."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from grsai_pipeline.grsai.client import ApiStats
from grsai_pipeline.store.batches import BatchView

PREVIEW_ROWS = 20


def batch_metadata(view: BatchView) -> dict[str, Any]:
    """Counts per status, progress, credits, and a preview of the first tasks."""
    metadata: dict[str, Any] = {
        "batch_status": view.status,
        **{f"tasks_{status}": count for status, count in view.counts.items()},
        "progress_percent": view.progress_percent,
        "credits_reserved": view.reserved_credits,
        "credits_charged": view.charged_credits,
        "credits_refunded": view.refunded_credits,
        "possible_duplicates": view.possible_duplicates,
        "dagster/row_count": view.total_tasks,
    }
    if view.tasks:
        metadata["preview"] = dg.MetadataValue.md(tasks_preview(view))
    return metadata


def tasks_preview(view: BatchView) -> str:
    frame = pd.DataFrame(
        [
            {
                "#": task.batch_index,
                "status": task.status,
                "model": task.model,
                "progress": task.progress,
                "attempts": task.attempts,
                "result": _short(task.video_url or task.error_message or ""),
            }
            for task in view.tasks[:PREVIEW_ROWS]
        ]
    )
    more = view.total_tasks - len(frame)
    table = frame.to_markdown(index=False)
    return table + (f"\n\n… and {more} more tasks" if more > 0 else "")


def api_metadata(stats: ApiStats) -> dict[str, int]:
    return stats.as_metadata()


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
