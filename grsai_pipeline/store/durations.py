"""How long recent tasks of each model took, from their submit to the answer that said they
succeeded: what the engine paces its polls by (``domain/pacing.py``). Kept in the database
(``video_tasks.finished_at``), so a restarted engine knows as much as the one before it."""

from __future__ import annotations

from collections import defaultdict
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from grsai_pipeline.domain.pacing import ModelDurations
from grsai_pipeline.domain.states import TaskStatus
from grsai_pipeline.store.schema import video_tasks

# The newest succeeded tasks read, all models together: recent enough to follow the API's load.
RECENT: Final = 2000


def recent_durations(conn: Connection) -> dict[str, ModelDurations]:
    """Per model, the durations of its recent succeeded tasks (a model with too few: absent)."""
    t = video_tasks.c
    query = (
        sa.select(t.model, t.submitted_at, t.finished_at)
        .where(
            t.status == TaskStatus.SUCCEEDED.value,
            t.finished_at.is_not(None),
            t.submitted_at.is_not(None),
        )
        .order_by(t.finished_at.desc())
        .limit(RECENT)
    )
    seconds: dict[str, list[float]] = defaultdict(list)
    for model, submitted, finished in conn.execute(query):
        seconds[model].append((finished - submitted).total_seconds())
    found = {model: ModelDurations.of(durations) for model, durations in seconds.items()}
    return {model: durations for model, durations in found.items() if durations is not None}
