"""Two processes claiming one batch's pending tasks at the same moment never both get a task.

Real concurrency: two spawned processes, each a registered runner with its own engine,
connections and heartbeat, released together by a barrier, round after round, on each database.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.synchronize import Barrier

import sqlalchemy as sa

from grsai_pipeline_tests.helpers import new_batch, rows

ROUNDS = 25
TASKS_PER_BATCH = 10
CLAIM_LIMIT = 6
LEASE_S = 300.0


def claimer(url: str, name: str, barrier: Barrier, batches: mp.Queue, results: mp.Queue) -> None:
    """One runner: for each batch id, wait for the other runner, then claim at once."""
    from grsai_pipeline.store.columns import utc_now
    from grsai_pipeline.store.db import get_engine
    from grsai_pipeline.store.runners import Heartbeat
    from grsai_pipeline.store.tasks import claim_waiting_tasks

    engine = get_engine(url)
    with Heartbeat(engine, name, LEASE_S):
        while (batch_id := batches.get()) is not None:
            barrier.wait(timeout=30)
            with engine.begin() as conn:
                claimed = claim_waiting_tasks(
                    conn, name, [(batch_id, CLAIM_LIMIT)], lease_s=LEASE_S, now=utc_now()
                )
            results.put((name, batch_id, [task.state.id for task in claimed]))


def test_two_processes_claiming_at_once_never_share_a_task(
    database_url: str, engine: sa.Engine
) -> None:
    context = mp.get_context("spawn")
    barrier = context.Barrier(2)
    queues = [context.Queue(), context.Queue()]
    results = context.Queue()
    processes = [
        context.Process(target=claimer, args=(database_url, f"runner-{i}", barrier, q, results))
        for i, q in enumerate(queues)
    ]
    for process in processes:
        process.start()
    try:
        for _ in range(ROUNDS):
            batch_id = new_batch(
                engine, [{"prompt": f"t{i}", "model": "sora-2"} for i in range(TASKS_PER_BATCH)]
            )
            for queue in queues:
                queue.put(batch_id)
            got = dict((name, ids) for name, _, ids in (results.get(timeout=60) for _ in queues))
            first, second = set(got["runner-0"]), set(got["runner-1"])
            assert not first & second, f"both runners claimed {first & second}"
            assert len(first | second) == TASKS_PER_BATCH
            claimed_by = rows(
                engine,
                "SELECT id, claimed_by, possible_duplicates FROM video_tasks"
                " WHERE batch_job_id = :b",
                b=batch_id,
            )
            for task in claimed_by:
                owner = "runner-0" if task["id"] in first else "runner-1"
                assert task["claimed_by"] == owner
                # Neither took a claim of the other over: both runners are alive.
                assert task["possible_duplicates"] == 0
    finally:
        for queue in queues:
            queue.put(None)
        for process in processes:
            process.join(timeout=30)
    assert all(process.exitcode == 0 for process in processes)
