"""Fair share (SPEC 7): a small batch is never stuck behind a large one. The engine that
follows every open batch (as the re-polling run does) claims tasks batch by batch in turn."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.work import open_batches_worker
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.helpers import new_batch, rows

pytestmark = pytest.mark.slow

LARGE = 2000


@pytest.fixture
def slow_api(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[SimulatorServer]:
    """An API answering in 50 ms at 8 requests at once: the large batch takes half a minute."""
    config = SimulatorConfig(
        api_key=TEST_API_KEY, latency_s=(0.05, 0.05), generation_s=(0.2, 0.4),
        mix={"succeeded": 1.0}, seed=5,
    )  # fmt: skip
    with SimulatorServer(config) as sim:
        env = pipeline_settings(database_url, sim.base_url) | {"GRSAI_MAX_CONCURRENCY": "8"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield sim


def _batch(engine: sa.Engine, batch_id: str) -> dict[str, Any]:
    return rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)[0]


def _moment(value: datetime | str) -> datetime:
    """A timestamp read with plain SQL (SQLite answers text), in UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_a_small_batch_behind_a_large_one_starts_at_once_and_settles_first(
    engine: sa.Engine, slow_api: SimulatorServer
) -> None:
    settings = load_settings()
    large = new_batch(
        engine, [{"prompt": f"large {i}", "model": "sora-2"} for i in range(LARGE)], user="lena",
        credits=10 * LARGE,
    )  # fmt: skip
    done = threading.Event()

    def follow() -> None:
        with open_batches_worker(engine, settings, "fair-runner") as worker:
            while not done.is_set():
                if worker.run(Until.FINAL, 1.0).unfinished == 0 and done.is_set():
                    return

    runner = threading.Thread(target=follow, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not rows(engine, "SELECT 1 FROM video_tasks WHERE status = 'processing' LIMIT 1"):
            assert time.monotonic() < deadline, "the large batch never started"
            time.sleep(0.1)
        small = new_batch(
            engine, [{"prompt": f"small {i}", "model": "veo-flash"} for i in range(5)], user="sam"
        )
        created = _moment(_batch(engine, small)["created_at"])
        deadline = time.monotonic() + 60
        while _batch(engine, small)["status"] != "settled":
            assert time.monotonic() < deadline, "the small batch never settled"
            time.sleep(0.1)
        first_submit = min(
            _moment(r["submitted_at"])
            for r in rows(
                engine, "SELECT submitted_at FROM video_tasks WHERE batch_job_id = :b", b=small
            )
        )
        large_left = rows(
            engine,
            "SELECT COUNT(*) AS n FROM video_tasks WHERE batch_job_id = :b"
            " AND status IN ('pending', 'processing')",
            b=large,
        )[0]["n"]
    finally:
        done.set()
        runner.join(timeout=120)

    assert (first_submit - created).total_seconds() < 5
    assert (_moment(_batch(engine, small)["settled_at"]) - created).total_seconds() < 15
    # Settled while most of the large batch, created before it, was still to do.
    assert large_left > LARGE / 2
    assert _batch(engine, small)["charged_credits"] == 5 * 20
