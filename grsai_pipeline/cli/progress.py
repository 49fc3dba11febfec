"""A progress bar over a batch's tasks, fed by reading the database from a background thread
while the Dagster run works in the foreground."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine
from tqdm import tqdm

from grsai_pipeline.store.batches import get_batch

REFRESH_S = 0.5


@contextmanager
def batch_progress(engine: Engine, batch_id: str, *, enabled: bool | None = None) -> Iterator[None]:
    """Show final tasks out of all on stderr; on by default only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    view = get_batch(engine, batch_id, with_tasks=False)
    done = threading.Event()
    with tqdm(total=view.total_tasks, unit="task", desc=batch_id[:8], file=sys.stderr) as bar:

        def follow() -> None:
            while not done.wait(REFRESH_S):
                _update(bar, engine, batch_id)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            _update(bar, engine, batch_id)


def _update(bar: tqdm, engine: Engine, batch_id: str) -> None:  # type: ignore[type-arg]
    view = get_batch(engine, batch_id, with_tasks=False)
    bar.n = view.counts["succeeded"] + view.counts["failed"]
    bar.set_postfix(
        ok=view.counts["succeeded"],
        failed=view.counts["failed"],
        running=view.counts["processing"],
        waiting=view.counts["pending"],
        refresh=False,
    )
    bar.refresh()
