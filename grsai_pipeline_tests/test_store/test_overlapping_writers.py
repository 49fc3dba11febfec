"""Runners that record answers about the same tasks at the same moment, each in the order its
answers came, all complete: the writer locks rows in one order (the cause of the flaky
`test_three_overlapping_runs...[postgresql]`: PostgreSQL aborted one writer as a deadlock)."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import Answered, TaskState, Transition, decide
from grsai_pipeline.domain.states import RemoteResult, RetryPolicy
from grsai_pipeline.store.tasks import apply_transitions
from grsai_pipeline_tests.helpers import new_batch, rows

WRITERS = 3
ROUNDS = 15
TASKS = 30


def _at_api(engine: sa.Engine) -> list[TaskState]:
    batch_id = new_batch(engine, [{"prompt": f"t {i}", "model": "sora-2"} for i in range(TASKS)])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE video_tasks SET status = 'processing', grsai_task_id = 'r-' || id,"
                " attempts = 1 WHERE batch_job_id = :b"
            ),
            {"b": batch_id},
        )
    found = rows(engine, "SELECT id, grsai_task_id FROM video_tasks WHERE batch_job_id = :b",
                 b=batch_id)  # fmt: skip
    return [
        TaskState(r["id"], "processing", attempts=1, grsai_task_id=r["grsai_task_id"])
        for r in found
    ]


def _answers(tasks: list[TaskState], progress: int) -> list[Transition]:
    now = datetime.now(UTC)
    running = RemoteResult(code=0, msg="success", status="running", progress=progress)
    decided = [decide(t, Answered(running), now=now, policy=RetryPolicy()) for t in tasks]
    return [t for t in decided if t is not None]


def test_writers_recording_the_same_tasks_in_different_orders_all_complete(
    engine: sa.Engine,
) -> None:
    tasks = _at_api(engine)
    failures: list[BaseException] = []
    for round_ in range(ROUNDS):
        transitions = _answers(tasks, progress=round_ + 1)
        start = threading.Barrier(WRITERS)

        def write(
            seed: int,
            transitions: list[Transition] = transitions,
            start: threading.Barrier = start,
        ) -> None:
            mine = transitions[:]
            random.Random(seed).shuffle(mine)
            start.wait()
            try:
                with engine.begin() as conn:
                    apply_transitions(conn, mine, runner_id=None, now=datetime.now(UTC))
            except BaseException as error:
                failures.append(error)

        writers = [
            threading.Thread(target=write, args=(round_ * WRITERS + n,)) for n in range(WRITERS)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()

    assert failures == []
    assert {r["progress"] for r in rows(engine, "SELECT progress FROM video_tasks")} == {ROUNDS}
