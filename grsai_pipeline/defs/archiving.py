"""How a batch's archived videos show in Dagster: the ``archived_videos`` materialization's
metadata and the ``videos_archived_in_time`` check, for a batch's own run and for the
re-polling run alike."""

# No "from __future__ import annotations": Dagster reads these hints at definition time.
from typing import Any

import dagster as dg

from grsai_pipeline.store.archives import ArchiveState
from grsai_pipeline.videos.archiver import ArchiveReport

# A preview of the lost videos, not all of them (a batch may hold thousands).
LISTED = 50


def archive_metadata(state: ArchiveState, report: ArchiveReport | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "videos_archived": state.archived,
        "archived_bytes": state.archived_bytes,
        "videos_waiting_for_archive": len(state.waiting),
        "videos_expired_before_archive": len(state.expired),
    }
    if report is not None:
        metadata |= {"archived_now": report.archived, "archive_failures_now": report.failed}
    return metadata


def archive_check(state: ArchiveState) -> dict[str, Any]:
    """The fields of a ``videos_archived_in_time`` result: it fails naming every succeeded
    task whose video could no longer be fetched."""
    lost = [state.expired[index] for index in sorted(state.expired)][:LISTED]
    return {
        "passed": not state.expired,
        "severity": dg.AssetCheckSeverity.ERROR,
        "description": (
            f"{len(state.expired)} succeeded video(s) expired before they were archived"
            if state.expired
            else "every succeeded video is archived or still within reach"
        ),
        "metadata": {
            "expired_videos": dg.MetadataValue.json(lost),
            "videos_waiting_for_archive": len(state.waiting),
        },
    }
