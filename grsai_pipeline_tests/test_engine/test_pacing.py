"""Polls when the video is likely ready (issue 25): an engine that starts (after a restart,
or taking over from a dead run) paces its first polls by the durations of recent tasks of
each model kept in the database, and polls every interval where nothing is known; on the
simulator's realistic generations, progress that tells little never leaves a task unpolled
longer than GRSAI_POLL_MAX_GAP_S, nor its end unseen."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.dev.generation import DurationModel
from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.work import batch_worker, open_batches_worker
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.helpers import new_batch, rows
from grsai_pipeline_tests.test_engine.long_api import long_running_api

INTERVAL_S = 0.5
WINDOW_S = 5.0


@pytest.fixture
def long_api(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[SimulatorServer]:
    """Generations that outlast the test (progress 0 throughout), every poll logged."""
    env = {"GRSAI_POLL_INTERVAL_S": str(INTERVAL_S), "GRSAI_CLAIM_LEASE_S": "2"}
    with long_running_api(monkeypatch, database_url, seed=25, env=env) as sim:
        yield sim


def _history(engine: sa.Engine, model: str, seconds: list[float]) -> None:
    """Tasks of ``model`` that succeeded, each ``seconds`` after its submit, a while ago."""
    batch_id = new_batch(engine, [{"prompt": f"old {i}", "model": model} for i in seconds])
    ended = utc_now() - timedelta(minutes=5)
    for index, took in enumerate(seconds):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE video_tasks SET status = 'succeeded', progress = 100,"
                    " submitted_at = :s, finished_at = :f, grsai_task_id = :r"
                    " WHERE batch_job_id = :b AND batch_index = :i"
                ),
                {"s": ended - timedelta(seconds=took), "f": ended, "r": f"old-{index}",
                 "b": batch_id, "i": index},
            )  # fmt: skip


def _polls_after_a_restart(engine: sa.Engine, sim: SimulatorServer, model: str) -> list[int]:
    """Per task of a batch submitted by a runner that is gone, the polls a new engine makes
    in its first ``WINDOW_S``."""
    batch_id = new_batch(engine, [{"prompt": f"new {i}", "model": model} for i in range(6)])
    settings = load_settings()
    with batch_worker(engine, settings, "before-the-restart", batch_id) as worker:
        worker.run(Until.SUBMITTED, 30)
    sim.simulator.state.polls.clear()
    with open_batches_worker(engine, settings, "after-the-restart") as worker:
        worker.run(Until.FINAL, WINDOW_S)
    remote = rows(
        engine, "SELECT grsai_task_id FROM video_tasks WHERE batch_job_id = :b", b=batch_id
    )
    polls = sim.simulator.state.polls
    return [len(polls.get(r["grsai_task_id"], [])) for r in remote]


def test_a_restarted_engine_paces_its_first_polls_by_the_stored_durations(
    engine: sa.Engine, long_api: SimulatorServer
) -> None:
    _history(engine, "veo-flash", [120.0, 130.0, 150.0, 160.0, 200.0, 400.0])

    paced = _polls_after_a_restart(engine, long_api, "veo-flash")
    # sora-2 has no history: every interval, as fixed polling would.
    unknown = _polls_after_a_restart(engine, long_api, "sora-2")

    # Two minutes before the model's early end: the next poll is a minute (the max gap) off.
    assert paced == [0] * 6, paced
    assert min(unknown) >= WINDOW_S / INTERVAL_S / 2, unknown


def test_with_the_max_gap_at_the_interval_it_polls_every_interval_as_before(
    engine: sa.Engine, long_api: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRSAI_POLL_MAX_GAP_S", str(INTERVAL_S))
    _history(engine, "veo-flash", [120.0, 130.0, 150.0, 160.0, 200.0, 400.0])

    fixed = _polls_after_a_restart(engine, long_api, "veo-flash")

    assert min(fixed) >= WINDOW_S / INTERVAL_S / 2, fixed


# --- on the simulator's realistic generations (acceptance 3) -------------------------------

REALISTIC_INTERVAL_S = 0.25
REALISTIC_MAX_GAP_S = 1.5
# What a poll may come later than planned on a loaded machine (the engine's loop, a round trip).
SLACK_S = 1.0
QUICK_SORA = DurationModel(median_s=4.0, sigma=0.5, low_s=1.5, high_s=9.0)
MIX = {"flat": 1.0, "noisy": 1.0, "stuck": 1.0, "coarse_25": 1.0}


@pytest.fixture
def realistic_api(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[SimulatorServer]:
    """Generations of a few seconds, progress of each kind that tells little (never moving,
    going back, stuck below 100, coarse), every poll logged, paced polling on."""
    config = SimulatorConfig(
        api_key=TEST_API_KEY, latency_s=(0.005, 0.005), mix={"succeeded": 1.0}, seed=25,
        log_polls=True, realistic=True, durations={"sora-2": QUICK_SORA}, progress_mix=MIX,
    )  # fmt: skip
    env = {
        "GRSAI_POLL_INTERVAL_S": str(REALISTIC_INTERVAL_S),
        "GRSAI_POLL_MAX_GAP_S": str(REALISTIC_MAX_GAP_S),
        "GRSAI_POLL_BUDGET_S": "60",
    }
    with SimulatorServer(config) as sim:
        for name, value in (pipeline_settings(database_url, sim.base_url) | env).items():
            monkeypatch.setenv(name, value)
        yield sim


@pytest.mark.parametrize("history", ["no history", "a history"])
def test_progress_that_tells_little_never_leaves_a_gap_over_the_max_or_misses_an_end(
    engine: sa.Engine, realistic_api: SimulatorServer, history: str
) -> None:
    if history == "a history":  # 60 tasks of 1.5-4.5 s: long waits for tasks with no figure
        _history(engine, "sora-2", [1.5 + k * 0.05 for k in range(60)])
    batch_id = new_batch(engine, [{"prompt": f"clip {i}", "model": "sora-2"} for i in range(16)])

    with batch_worker(engine, load_settings(), "paced", batch_id) as worker:
        worker.run(Until.FINAL, 60)

    statuses = rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert {r["status"] for r in statuses} == {"succeeded"}  # no end missed
    sim = realistic_api.simulator
    records, polls = sim.task_records(), sim.state.polls
    assert {r["progress_kind"] for r in records.values()} == set(MIX)
    went_back = [
        t for t in sim.state.tasks.values()
        if any(t.progress.at(k / 50) < t.progress.at((k - 1) / 50) for k in range(1, 50))
    ]  # fmt: skip
    assert went_back, "the mix should hold progress that goes backwards"
    for task_id, record in records.items():
        times = [record["made"], *polls[task_id]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert max(gaps) <= REALISTIC_MAX_GAP_S + SLACK_S, (record["progress_kind"], gaps)
        assert record["told"] is not None
        assert record["told"] - record["ended"] <= REALISTIC_MAX_GAP_S + SLACK_S, record
