"""Materialization metadata a person reads at a glance in the Dagster UI."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from tabulate import tabulate

from grsai_pipeline.config import load_settings
from grsai_pipeline.domain.links import VideoLinks
from grsai_pipeline.engine.report import EngineReport
from grsai_pipeline.errors import SettingsError
from grsai_pipeline.store.batches import BatchView
from grsai_pipeline.store.outcomes import BatchOutcomes

PREVIEW_ROWS = 20


def batch_metadata(view: BatchView, outcomes: BatchOutcomes | None = None) -> dict[str, Any]:
    """The user, counts per status, progress, credits, failures by reason, the first videos,
    and a preview of the first tasks."""
    metadata: dict[str, Any] = {
        "user_id": view.user_id,
        "batch_status": view.status,
        **{f"tasks_{status}": count for status, count in view.counts.items()},
        "progress_percent": view.progress_percent,
        "credits_reserved": view.reserved_credits,
        "credits_charged": view.charged_credits,
        "credits_refunded": view.refunded_credits,
        "possible_duplicates": view.possible_duplicates,
        "tasks_retried_by_backfill": view.retried_by_backfill,
        "dagster/row_count": view.total_tasks,
    }
    if outcomes is not None:
        metadata |= outcome_metadata(outcomes)
    if view.tasks:
        metadata["preview"] = dg.MetadataValue.md(tasks_preview(view))
    return metadata


def outcome_metadata(outcomes: BatchOutcomes) -> dict[str, Any]:
    """Failures grouped by reason with what a backfill would retry, and links to the first
    videos (their archived copies once made)."""
    metadata: dict[str, Any] = {
        "failed_tasks_a_backfill_would_retry": outcomes.retryable,
        "failed_tasks_out_of_retries": outcomes.used_up,
    }
    if outcomes.failures:
        rows = [
            {
                "reason": g.reason,
                "tasks": g.tasks,
                "a backfill retries": g.retryable,
                "out of retries (final)": g.used_up,
            }
            for g in outcomes.failures
        ]
        metadata["failures_by_reason"] = dg.MetadataValue.md(
            tabulate(rows, headers="keys", tablefmt="pipe")
        )
    return metadata | video_links(outcomes)


def video_links(outcomes: BatchOutcomes) -> dict[str, Any]:
    """The first videos as links, and a line saying which links they are: an archived copy
    through the HTTP API (``GET /v1/videos/{task_id}``, signed, so a browser opens it without a
    token) when GRSAI_API_PUBLIC_URL and GRSAI_LINK_SECRET are set, else the archive's own URL;
    a video not archived yet by the API's URL (which expires about two hours after its task
    finished)."""
    if not outcomes.videos:
        return {}
    archived = [v for v in outcomes.videos if v.archived]
    links = _signed_links() if archived else None
    now = time.time()
    lines = []
    for video in outcomes.videos:
        if links is not None and video.archived:
            shown, url = links.path(video.task_id), links.url(video.task_id, now)
        else:
            shown, url = video.url, video.url
        kept = " (archived copy)" if video.archived else ""
        lines.append(f"- task {video.batch_index}: [{_short(shown)}]({url}){kept}")
    if links is not None:
        until = datetime.fromtimestamp(links.expires(now), UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(
            f"\nArchived copies open through the HTTP API without a token: signed links, "
            f"valid until {until} (GRSAI_LINK_TTL_S)."
        )
    elif archived:
        lines.append(
            "\nArchived copies are linked where the archive keeps them (GRSAI_ARCHIVE_URL); a "
            "browser may not open those from this page. Set GRSAI_API_PUBLIC_URL and "
            "GRSAI_LINK_SECRET for signed links through the HTTP API."
        )
    if len(archived) < len(outcomes.videos):
        lines.append(
            "\nVideos not archived yet link to the Grsai API's URLs, which expire about two "
            "hours after their task finished."
        )
    return {"videos": dg.MetadataValue.md("\n".join(lines))}


def _signed_links() -> VideoLinks | None:
    """This process's link settings (a run with an invalid setting has failed before)."""
    try:
        return load_settings().video_links
    except SettingsError:
        return None


def tasks_preview(view: BatchView) -> str:
    """The first tasks as a Markdown table (tabulate: a second cheaper to import than pandas,
    on every run)."""
    rows = [
        {
            "#": task.batch_index,
            "status": task.status,
            "model": task.model,
            "progress": task.progress,
            "reservation": task.reservation,
            "attempts": task.attempts,
            "result": _short(task.video_url or task.error_message or ""),
        }
        for task in view.tasks[:PREVIEW_ROWS]
    ]
    more = view.total_tasks - len(rows)
    table = tabulate(rows, headers="keys", tablefmt="pipe")
    return table + (f"\n\n… and {more} more tasks" if more > 0 else "")


def engine_metadata(report: EngineReport) -> dict[str, Any]:
    """What the engine did in this step: requests, outcomes, possible duplicates, 429s."""
    return {
        **report.api_metadata(),
        "submitted_now": report.accepted,
        "polls_now": report.polls,
        "polls_unanswered": report.unanswered,
        "possible_duplicates_now": report.possible_duplicates,
        # Answers another writer (a callback, an overlapping run) had already applied.
        "answers_already_applied": report.stale_writes,
        # Polls left because this engine was late past its hold (another may poll the task).
        "polls_left_past_hold": report.polls_left_past_hold,
        "paused_by_429": report.rate_limited,
        # A failover of the application database ridden out: how often, for how long.
        "database_outages": report.database_outages,
        "database_outage_s": round(report.database_outage_s, 1),
        **{f"now_{outcome}": n for outcome, n in report.outcomes().items()},
    }


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
