"""One archiving pass: copy the videos of succeeded tasks to the archive, a few at a time.

Run by the asset ``archived_videos`` for one batch and by the re-polling run for every batch.
Each video is streamed from its URL into the store (``objects.VideoStore``) and only then
recorded on its row, so a crash leaves either nothing or a whole object (which the next pass
overwrites with the same bytes before recording it). A video whose URL answers 403/404/410 is
recorded as ``EXPIRED: ...`` and not tried again; other failures are tried again next pass.
Money never moves here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from grsai_pipeline.config import Settings
from grsai_pipeline.store.archives import (
    VideoToArchive,
    record_archive_failure,
    record_archived,
    videos_to_archive,
)
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.videos.download import VideoUnavailable, video_chunks, with_retries
from grsai_pipeline.videos.objects import VideoStore

log = logging.getLogger(__name__)

# Tries per video per pass; the next pass (a minute later) starts afresh.
ATTEMPTS = 3
PAGE = 200


@dataclass
class ArchiveReport:
    archived: int = 0
    archived_bytes: int = 0
    failed: int = 0
    expired: int = 0
    batches: set[str] = field(default_factory=set)


def archive_videos(
    engine: Engine,
    settings: Settings,
    *,
    batch_ids: Sequence[str] | None = None,
    budget_s: float = 60.0,
) -> ArchiveReport:
    """Copy every video waiting for it (of these batches, or all), until none is left or
    ``budget_s`` has passed (a download under way is finished)."""
    report = ArchiveReport()
    if budget_s <= 0:
        return report
    store = VideoStore(settings.archive_url)
    deadline = time.monotonic() + budget_s
    tried: set[str] = set()
    timeout = httpx.Timeout(settings.http_timeout_s, connect=settings.http_timeout_s)
    with (
        httpx.Client(timeout=timeout, follow_redirects=True) as client,
        ThreadPoolExecutor(settings.archive_concurrency, "archive") as pool,
    ):

        def in_time(video: VideoToArchive) -> int | VideoUnavailable | None:
            # A page holds minutes of downloads: none starts past the budget (the next pass
            # takes it), so a run that is ending is not held up by a whole page.
            if time.monotonic() >= deadline:
                return None
            return _archive_one(engine, store, client, settings, video)

        while time.monotonic() < deadline:
            page = [
                video
                for video in videos_to_archive(engine, batch_ids=batch_ids, limit=PAGE)
                if video.task_id not in tried
            ]
            if not page:
                break
            tried.update(video.task_id for video in page)
            jobs = [pool.submit(in_time, v) for v in page]
            for video, job in zip(page, jobs, strict=True):
                outcome = job.result()
                if outcome is None:
                    continue
                report.batches.add(video.batch_job_id)
                if isinstance(outcome, int):
                    report.archived += 1
                    report.archived_bytes += outcome
                elif outcome.expired:
                    report.expired += 1
                else:
                    report.failed += 1
    return report


def _archive_one(
    engine: Engine,
    store: VideoStore,
    client: httpx.Client,
    settings: Settings,
    video: VideoToArchive,
) -> int | VideoUnavailable:
    """The archived size, or why the video could not be archived (recorded on its row)."""

    def attempt() -> tuple[str, int, str]:
        with video_chunks(client, video.video_url) as chunks:
            stored = store.put(video.batch_job_id, video.task_id, chunks)
        return stored.url, stored.size, stored.sha256

    try:
        url, size, sha256 = with_retries(
            attempt,
            attempts=ATTEMPTS,
            backoff_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
        )
    except VideoUnavailable as exc:
        problem = exc
    except OSError as exc:  # the store refused (a full disk, a bucket we may not write)
        problem = VideoUnavailable(f"ARCHIVE_FAILED: {type(exc).__name__}: {exc}", expired=False)
    else:
        with engine.begin() as conn:
            record_archived(conn, video, url=url, size=size, sha256=sha256, now=utc_now())
        return size
    log.warning("video of task %s not archived: %s", video.task_id, problem)
    with engine.begin() as conn:
        record_archive_failure(conn, video, str(problem)[:500], utc_now())
    return problem
