"""Helpers of the store tests: sample tasks; rows read or written with plain SQL, the way
another writer (the web app, an operator) would touch the tables; and the engine's own claim
and record steps, one call at a time."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from grsai_pipeline.domain.lifecycle import Event, TaskState, decide
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.schema import pipeline_runners
from grsai_pipeline.store.tasks import ClaimedTask, apply_transitions, claim_waiting_tasks
from grsai_pipeline_tests.helpers import rows

T = TypeVar("T")

SORA_10 = {"prompt": "A cat surfing at dawn", "model": "sora-2", "duration": 10}
SORA_15 = {"prompt": "A lighthouse in a storm", "model": "sora-2", "duration": 15}
VEO_FLASH = {
    "prompt": "A paper boat on a river",
    "model": "veo-flash",
    "aspect_ratio": "16:9",
    "meta": {
        "firstFrameUrl": "https://example.com/first.jpg",
        "lastFrameUrl": "https://example.com/last.jpg",
        "urls": ["https://example.com/ref1.jpg"],
    },
}
VEO_PRO = {"prompt": "A city timelapse", "model": "veo-pro"}
# The default price table of SPEC 1 / the README.
PRICE = {"sora-2:10": 10, "sora-2:15": 15, "veo-flash": 20, "veo-pro": 40}
INVALID_MODEL = {"prompt": "A dragon", "model": "sora-3"}
# GRSAI_CLAIM_LEASE_S's default: far longer than any test.
LONG_LEASE = 300.0
POLICY = RetryPolicy(max_task_retries=2)


def sora(prompt: str = "A cinematic video", duration: int = 10) -> dict[str, Any]:
    return {"prompt": prompt, "model": "sora-2", "duration": duration}


def tasks_of(engine: sa.Engine, batch_id: str) -> list[dict[str, Any]]:
    """Every column of the batch's tasks, by ``batch_index``."""
    return rows(
        engine,
        "SELECT * FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )


def task_ids(engine: sa.Engine, batch_id: str) -> list[str]:
    return [t["id"] for t in tasks_of(engine, batch_id)]


def task_row(engine: sa.Engine, task_id: str) -> dict[str, Any]:
    (row,) = rows(engine, "SELECT * FROM video_tasks WHERE id = :i", i=task_id)
    return row


def batch_row(engine: sa.Engine, batch_id: str) -> dict[str, Any]:
    (row,) = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)
    return row


def account_row(engine: sa.Engine, user_id: str) -> dict[str, Any] | None:
    found = rows(engine, "SELECT * FROM credit_accounts WHERE user_id = :u", u=user_id)
    return found[0] if found else None


def money(engine: sa.Engine, user_id: str) -> tuple[int, int]:
    """``(balance, held)`` of the account."""
    account = account_row(engine, user_id)
    assert account is not None, f"no account for {user_id}"
    return account["balance"], account["held"]


def ledger_of(engine: sa.Engine, batch_id: str) -> list[tuple[str, str, int, int]]:
    """``(kind, video_task_id, reservation, amount)`` of the batch's entries, oldest first."""
    found = rows(
        engine,
        "SELECT kind, video_task_id, reservation, amount FROM credit_ledger"
        " WHERE batch_job_id = :b ORDER BY id",
        b=batch_id,
    )
    return [(r["kind"], r["video_task_id"], r["reservation"], r["amount"]) for r in found]


def ledger_count(engine: sa.Engine) -> int:
    return rows(engine, "SELECT COUNT(*) AS n FROM credit_ledger")[0]["n"]


def execute(engine: sa.Engine, sql: str, **params: Any) -> int:
    """Run one statement in its own transaction; returns the row count."""
    with engine.begin() as conn:
        return conn.execute(sa.text(sql), params).rowcount


def set_task(engine: sa.Engine, task_id: str, **values: Any) -> None:
    """Overwrite columns of one task, as an operator with SQL would."""
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    changed = execute(
        engine,
        f"UPDATE video_tasks SET {assignments} WHERE id = :task_id",
        task_id=task_id,
        **values,
    )
    assert changed == 1


def succeed(engine: sa.Engine, task_id: str) -> None:
    set_task(
        engine,
        task_id,
        status="succeeded",
        progress=100,
        video_url=f"https://cdn.example.com/{task_id}.mp4",
        grsai_task_id=f"g-{task_id}",
    )


def fail(engine: sa.Engine, task_id: str, kind: str = "error", message: str = "boom") -> None:
    set_task(
        engine,
        task_id,
        status="failed",
        failure_kind=kind,
        error_message=message,
        grsai_task_id=f"g-{task_id}",
    )


def insert_task(
    engine: sa.Engine,
    batch_id: str,
    batch_index: int,
    *,
    user_id: str = "alice",
    status: str = "pending",
    prompt: str | None = "Inserted by the web app",
    model: str | None = "sora-2",
    duration: int | None = 10,
    price: int = 0,
) -> str:
    """A task row written by another writer with plain SQL (no validation on the way in)."""
    task_id = str(uuid.uuid4())
    execute(
        engine,
        "INSERT INTO video_tasks (id, user_id, batch_job_id, batch_index, status, prompt, model,"
        " duration, progress, attempts, price, created_at, updated_at)"
        " VALUES (:id, :user_id, :batch_id, :batch_index, :status, :prompt, :model, :duration,"
        " 0, 0, :price, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        id=task_id,
        user_id=user_id,
        batch_id=batch_id,
        batch_index=batch_index,
        status=status,
        prompt=prompt,
        model=model,
        duration=duration,
        price=price,
    )
    return task_id


def insert_batch(engine: sa.Engine, *, user_id: str = "alice", total_tasks: int = 0) -> str:
    """A ``batch_jobs`` row written by another writer with plain SQL."""
    batch_id = str(uuid.uuid4())
    execute(
        engine,
        "INSERT INTO batch_jobs (id, user_id, status, total_tasks, reserved_credits,"
        " charged_credits, refunded_credits, created_at, updated_at)"
        " VALUES (:id, :user_id, 'pending', :total, 0, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        id=batch_id,
        user_id=user_id,
        total=total_tasks,
    )
    return batch_id


def reserve_as_other_writer(
    engine: sa.Engine, *, user_id: str, batch_id: str, task_id: str, amount: int
) -> None:
    """What the web app does when it adds a task to a batch: reserve, move the account, and
    count the credits on the batch, in one transaction."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
                " reservation, transaction_id, created_at)"
                " VALUES (:u, :b, :t, 'reserve', :a, 1, :tx, CURRENT_TIMESTAMP)"
            ),
            {"u": user_id, "b": batch_id, "t": task_id, "a": amount, "tx": f"web-{uuid.uuid4()}"},
        )
        conn.execute(
            sa.text(
                "UPDATE credit_accounts SET balance = balance - :a, held = held + :a"
                " WHERE user_id = :u"
            ),
            {"u": user_id, "a": amount},
        )
        conn.execute(
            sa.text(
                "UPDATE batch_jobs SET reserved_credits = reserved_credits + :a,"
                " total_tasks = total_tasks + 1 WHERE id = :b"
            ),
            {"b": batch_id, "a": amount},
        )


def run_together(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released at the same moment; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def worker(i: int, call: Callable[[], T]) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def claim(
    engine: sa.Engine, batch_id: str, runner: str, n: int = 100, *, lease_s: float = LONG_LEASE
) -> list[ClaimedTask]:
    """``runner`` claims up to ``n`` pending tasks of the batch, in a transaction of its own."""
    with engine.begin() as conn:
        return claim_waiting_tasks(conn, runner, [(batch_id, n)], lease_s=lease_s, now=utc_now())


def record(
    engine: sa.Engine,
    runner: str | None,
    outcomes: Sequence[tuple[TaskState, Event]],
    policy: RetryPolicy = POLICY,
) -> int:
    """Decide what each event makes of its task and write it all as ``runner`` in one
    transaction, as the engine does; returns how many rows changed."""
    now = utc_now()
    decided = [decide(state, event, now=now, policy=policy) for state, event in outcomes]
    with engine.begin() as conn:
        return apply_transitions(
            conn, [t for t in decided if t is not None], runner_id=runner, now=now
        )


def register_stale_runner(engine: sa.Engine, runner_id: str, silent_for_s: float) -> None:
    """A runner's row whose last heartbeat was ``silent_for_s`` ago: it died without leaving."""
    beat = utc_now() - timedelta(seconds=silent_for_s)
    with engine.begin() as conn:
        conn.execute(
            pipeline_runners.insert().values(
                runner_id=runner_id,
                batch_job_id=None,
                started_at=beat,
                heartbeat_at=beat,
                host="gone.example",
                pid=1,
            )
        )
