"""SPEC 1's credit rules under random sequences of money operations (a Hypothesis state
machine), on the real databases: grants and batch creations (with idempotency keys, sent again
or reused for another request), batches a web app writes as rows (taken in by the next run:
priced, reserved or refused whole), claims and submits, poll answers and late callbacks, runs and
backfills (sweep, retry, submit, poll, settle), and cancels, each through the product's own
store functions.

Every example works on a migrated database of its own (a fresh SQLite file; a PostgreSQL clone
of the session's template, shared by a few examples that each have users no other one has).
After every step the machine asks ``verify_ledger``, recomputes every invariant of SPEC 1 from
one read of the four tables, and compares them with a small model of its own: each account's
money, each task's status, each batch's status and credit columns, and the journal (which
entries each transaction wrote). A cancelled batch sends no task to the API after its cancel,
but one a live runner had on the wire at that moment.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from grsai_pipeline.config import load_settings
from grsai_pipeline.domain.lifecycle import (
    Accepted,
    Answered,
    Event,
    NotSent,
    Rejected,
    SubmitFailed,
    TaskState,
)
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.domain.states import RemoteResult, RetryPolicy
from grsai_pipeline.domain.tasks import TASK_FIELDS
from grsai_pipeline.errors import IdempotencyConflict, InsufficientCredits, InvalidInput
from grsai_pipeline.store import db as store_db
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.audit import verify_ledger
from grsai_pipeline.store.batches import create_batch
from grsai_pipeline.store.cancels import cancel_batch, sweep_cancelled
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.intake import Intake, take_in_batch
from grsai_pipeline.store.retries import retry_failed_tasks
from grsai_pipeline.store.schema import batch_jobs, video_tasks
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline.store.tasks import tasks_at_api
from grsai_pipeline_tests.conftest import PostgresDatabases
from grsai_pipeline_tests.helpers import rows
from grsai_pipeline_tests.test_store.store_support import (
    INVALID_MODEL,
    LONG_LEASE,
    SORA_10,
    SORA_15,
    VEO_FLASH,
    VEO_PRO,
    claim,
    record,
    register_stale_runner,
)

# Examples per database and steps per example (a run or a backfill is one step): about a
# minute on each database. A clone of the PostgreSQL template costs a quarter of a second:
# SHARE_PG examples share one.
EXAMPLES = 200
STEPS = 12
SHARE_PG = 20

# The price table comes from the settings; veo-pro is free here so that tasks without a
# reservation (price 0) take part too.
PRICES_SETTING = '{"veo-pro": 0}'
PRICES = {"sora-2:10": 10, "sora-2:15": 15, "veo-flash": 20, "veo-pro": 0}
BACKFILL_RETRYABLE = {"error", "submit_exhausted", "timed_out"}
USERS = ("ann", "bob")
# Idempotency keys: mostly none; a repeated key comes mostly from `send_again`.
keys = st.sampled_from((None, None, None, "k1", "k2", "k3", "k4", "k5"))
AMOUNTS = (5, 10, 15, 25, 40, 60, 120, 0)  # 0 is refused
LIVE = "live-"  # runners whose id starts so have a fresh heartbeat; others never registered
VIDEO = "https://cdn.example.com/video.mp4"

# Tasks with the price key they cost (None: invalid, stored failed, reserves nothing).
VALID_TASKS: list[tuple[object, str | None]] = [
    (SORA_10, "sora-2:10"),
    (SORA_15, "sora-2:15"),
    ({"prompt": "A quiet harbour", "model": "sora-2"}, "sora-2:10"),  # default duration
    (VEO_FLASH, "veo-flash"),
    (VEO_PRO, "veo-pro"),
]
INVALID_TASKS: list[object] = [
    INVALID_MODEL,
    {"prompt": "   ", "model": "sora-2"},
    {"prompt": "A storm", "model": "sora-2", "duration": 12},
    {"prompt": "A storm", "model": "veo-flash", "aspect_ratio": "4:3"},
    "not a task object",
]
task_specs = st.one_of(
    st.sampled_from(VALID_TASKS),
    st.sampled_from(VALID_TASKS),
    st.sampled_from(VALID_TASKS),
    st.sampled_from(INVALID_TASKS).map(lambda task: (task, None)),
)

# What the API may say about a remote task (a poll's answer or a callback).
RESULTS: dict[str, RemoteResult] = {
    "running": RemoteResult(code=0, msg="success", status="running", progress=40),
    "succeeded": RemoteResult(0, "success", status="succeeded", progress=100, video_url=VIDEO),
    "no_url": RemoteResult(code=0, msg="success", status="succeeded", progress=100),
    "moderated": RemoteResult(
        code=0, msg="success", status="failed", failure_reason="output_moderation", error="nsfw"
    ),
    "error": RemoteResult(code=0, msg="success", status="failed", failure_reason="error"),
    "api_error": RemoteResult(code=-1, msg="bad request"),
    "not_found": RemoteResult(code=-22, msg="task not found"),
}
SUBMIT_OUTCOMES = ("accepted", "rejected", "submit_failed", "not_sent")
# What a run's submits come to, and what the API says of remote tasks, as they come in a run.
submit_outcomes = st.sampled_from(("accepted",) * 4 + ("submit_failed",) + SUBMIT_OUTCOMES)
answers = st.sampled_from(("succeeded",) * 2 + ("error",) * 3 + tuple(sorted(RESULTS)))
# A run's plan: what its submits come to, and what the API says, in turn.
run_plans = st.tuples(
    st.lists(submit_outcomes, min_size=1, max_size=8), st.lists(answers, min_size=1, max_size=8)
)

# (kind, user, batch, task, reservation, amount); "" and 0 stand for NULL.
Entry = tuple[str, str, str, str, int, int]
FreshDatabase = tuple[str, Callable[[], None]]
Request = tuple[str, str, int | None, list[tuple[object, str | None]] | None]


@dataclass
class TaskModel:
    id: str
    batch_id: str
    index: int
    price: int
    status: str
    failure_kind: str | None = None
    attempts: int = 0
    claimed_by: str | None = None
    remote_id: str | None = None
    reservation: int = 0  # the number of the task's latest reservation (0: none)
    backfills: int = 0  # retries by backfill so far (bounded by max_backfill_retries)
    open: bool = False  # that reservation has no charge or refund yet
    priced: bool = True  # False: written as a row by a web app, not taken in yet
    # What the task costs by the price table (None: invalid), for its intake.
    price_key: str | None = None


@dataclass
class BatchModel:
    id: str
    user: str
    tasks: list[TaskModel]
    status: str = "pending"
    cancelled: bool = False
    reserved: int = 0
    charged: int = 0
    refunded: int = 0
    # Cancelled: tasks that may be at the API, and tasks a live runner had on the wire at the
    # cancel (task -> runner), which may still get there once.
    may_be_at_api: set[str] = field(default_factory=set)
    on_the_wire: dict[str, str] = field(default_factory=dict)

    def unfinished(self) -> list[TaskModel]:
        return [t for t in self.tasks if t.status in ("pending", "queued", "processing")]


@dataclass(frozen=True)
class KeyUse:
    """What an idempotency key answered first: the request, and its answer."""

    request: tuple[str, object]
    answer: tuple[Any, ...]


@dataclass(frozen=True)
class Claim:
    runner: str
    state: TaskState


def _is_live(runner: str | None) -> bool:
    return runner is not None and runner.startswith(LIVE)


def _entry(
    kind: str,
    user: str,
    batch: str | None = None,
    task: str | None = None,
    reservation: int | None = None,
    *,
    amount: int,
) -> Entry:
    return (kind, user, batch or "", task or "", reservation or 0, amount)


def _of_users(
    engine: sa.Engine, queries: dict[str, str], users: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each query's rows of these users (``WHERE user_id IN ...`` is added), all in one
    transaction: one consistent view."""
    users_in: sa.BindParameter[str] = sa.bindparam("users", list(users), expanding=True)
    found = {}
    with engine.connect() as conn:
        for name, sql in queries.items():
            statement = sa.text(f"{sql} WHERE user_id IN :users").bindparams(users_in)
            found[name] = [dict(r._mapping) for r in conn.execute(statement)]
    return found


def _everything(engine: sa.Engine, users: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every row of these users a money operation may write, to compare before and after a
    refused one (sorted: the same rows read twice compare equal)."""
    names = ("credit_accounts", "batch_jobs", "video_tasks", "credit_ledger", "idempotency_keys")
    found = _of_users(engine, {name: f"SELECT * FROM {name}" for name in names}, users)
    return {name: sorted(found[name], key=repr) for name in names}


class Databases:
    """Where examples run: a fresh migrated database for every ``share`` examples. Each example
    has users of its own (ids no other example uses), so it neither sees nor touches another's
    rows, and one that breaks its own rows leaves the next ones alone."""

    def __init__(self, fresh: Callable[[], FreshDatabase], share: int) -> None:
        self._fresh = fresh
        self._share = share
        self._used = 0
        self._engine: sa.Engine | None = None
        self._drop: Callable[[], None] = lambda: None

    def engine(self) -> sa.Engine:
        if self._engine is None or self._used == self._share:
            self.close()
            url, self._drop = self._fresh()
            self._engine = store_db.create_app_engine(url)
        self._used += 1
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._drop()
        self._engine, self._used = None, 0


class LedgerMachine(RuleBasedStateMachine):
    """Random money operations on one database, with a model to compare against."""

    databases: ClassVar[Databases]
    price_table: ClassVar[PriceTable]

    batches = Bundle("batches")
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.engine = type(self).databases.engine()
        self.example = uuid.uuid4().hex[:8]
        self.users = [f"{self.example}-{user}" for user in USERS]
        self.accounts: dict[str, list[int]] = {}  # user -> [balance, held]
        self.model: dict[str, BatchModel] = {}
        self.tasks: dict[str, TaskModel] = {}
        self.keys: dict[tuple[str, str], KeyUse] = {}
        self.journal: list[list[Entry]] = []
        # Requests sent with an idempotency key: (user, key, amount or None, tasks or None).
        self.requests: list[Request] = []
        self.names = (f"{self.example}-{n}" for n in itertools.count())
        self.policy = RetryPolicy()
        self.polled: list[TaskState] = []  # tasks at the API as runs read them

    # --- the model's money ------------------------------------------------------------------

    def _write(self, entries: list[Entry]) -> None:
        """One money movement: the journal gets a transaction, accounts and batches move."""
        if not entries:
            return
        self.journal.append(entries)
        for kind, user, batch_id, _task, _reservation, amount in entries:
            money = self.accounts[user]
            batch = self.model.get(batch_id)
            if kind == "grant":
                money[0] += amount
            elif kind == "reserve":
                money[0] -= amount
                money[1] += amount
            elif kind == "charge":
                money[1] -= amount
            else:
                money[0] += amount
                money[1] -= amount
            if batch is not None:
                batch.reserved += amount if kind == "reserve" else 0
                batch.charged += amount if kind == "charge" else 0
                batch.refunded += amount if kind == "refund" else 0

    def _close(self, tasks: Sequence[TaskModel]) -> list[Entry]:
        """The charge or refund of each final task's open reservation."""
        entries = []
        for task in tasks:
            if task.open and task.status in ("succeeded", "failed"):
                kind = "charge" if task.status == "succeeded" else "refund"
                batch = self.model[task.batch_id]
                entries.append(
                    _entry(kind, batch.user, batch.id, task.id, task.reservation, amount=task.price)
                )
                task.open = False
        return entries

    def _fail_unsent(self, batch: BatchModel) -> tuple[int, int]:
        """Cancel: fail what waits unclaimed by a live runner, refund it at once."""
        unsent = [
            t
            for t in batch.tasks
            if t.status in ("pending", "queued") and not _is_live(t.claimed_by)
        ]
        for task in unsent:
            task.status, task.failure_kind, task.remote_id = "failed", "cancelled", None
        refunds = self._close(unsent)
        self._write(refunds)
        return len(unsent), sum(e[5] for e in refunds)

    def _settle(self, batch: BatchModel) -> tuple[int, int]:
        """What settle_batch does: (unfinished tasks, entries written)."""
        if batch.unfinished():
            return len(batch.unfinished()), 0
        entries = self._close(batch.tasks)
        if batch.status == "settled" and not entries:
            return 0, 0
        self._write(entries)
        batch.status = "settled"
        return 0, len(entries)

    def _nothing_written(
        self, call: Callable[[], object], error: type[Exception], match: str | None = None
    ) -> None:
        before = _everything(self.engine, self.users)
        with pytest.raises(error, match=match):
            call()
        assert _everything(self.engine, self.users) == before

    # --- rules ------------------------------------------------------------------------------

    @initialize(
        target=batches,
        amounts=st.tuples(*(st.sampled_from((30, 100, 300)) for _ in USERS)),
        retries=st.sampled_from((0, 0, 1, 2)),
        specs=st.lists(task_specs, min_size=1, max_size=4),
    )
    def start(
        self, amounts: tuple[int, ...], retries: int, specs: list[tuple[object, str | None]]
    ) -> MultipleResults[str]:
        """MAX_TASK_RETRIES (0: a generation error is final at once, and a retry by backfill
        comes within a few steps), each user's first grant, and a first batch."""
        self.policy = RetryPolicy(max_task_retries=retries)
        for user, amount in zip(self.users, amounts, strict=True):
            self._grant(user, amount, None)
        return self._create(self.users[0], specs, None)

    @rule(user=st.sampled_from(USERS), amount=st.sampled_from(AMOUNTS), key=keys)
    def grant(self, user: str, amount: int, key: str | None) -> None:
        self._grant(f"{self.example}-{user}", amount, key)

    @rule(
        target=batches,
        user=st.sampled_from(USERS),
        specs=st.lists(task_specs, min_size=1, max_size=4),
        key=keys,
    )
    def create(
        self, user: str, specs: list[tuple[object, str | None]], key: str | None
    ) -> MultipleResults[str]:
        return self._create(f"{self.example}-{user}", specs, key)

    @precondition(lambda self: bool(self.requests))
    @rule(target=batches, data=st.data(), change=st.sampled_from(("same", "same", "other", "new")))
    def send_again(self, data: st.DataObject, change: str) -> MultipleResults[str]:
        """A request sent with an idempotency key before, sent again: the very same request
        (a client's retry), another request of its kind, or one of the other kind (new)."""
        request = data.draw(st.sampled_from(self.requests))
        user, key, amount, specs = request
        if change == "new":
            amount, specs = (None, [VALID_TASKS[0]]) if amount is not None else (10, None)
        elif change == "other":
            amount = None if amount is None else amount + 1
            specs = None if specs is None else [*specs, VALID_TASKS[1]]
        else:
            assert change == "same"
        if amount is not None:
            self._grant(user, amount, key)
            return multiple()
        assert specs is not None
        return self._create(user, specs, key)

    def _grant(self, user: str, amount: int, key: str | None) -> None:
        if key is not None:
            self.requests.append((user, key, amount, None))

        def call() -> Any:
            return grant_credits(self.engine, user, amount, idempotency_key=key)

        if amount <= 0:
            event("grant: refused, not a positive amount")
            self._nothing_written(call, InvalidInput, match="^amount must be a positive")
            return
        first = self.keys.get((user, key)) if key is not None else None
        if first is not None and first.request != ("grant", amount):
            event("grant: refused, key used for another request")
            self._nothing_written(call, IdempotencyConflict)
            return
        if first is not None:
            event("grant: replayed")
            before = _everything(self.engine, self.users)
            account = call()
            assert _everything(self.engine, self.users) == before, (
                "a replayed grant wrote something"
            )
            assert (account.balance, account.held) == first.answer
            assert account.replayed, "a replayed grant does not say it was replayed"
            return
        account = call()
        self.accounts.setdefault(user, [0, 0])
        self._write([_entry("grant", user, amount=amount)])
        assert not account.replayed
        assert [account.balance, account.held] == self.accounts[user]
        if key is not None:
            self.keys[(user, key)] = KeyUse(("grant", amount), (account.balance, account.held))

    def _create(
        self, user: str, specs: list[tuple[object, str | None]], key: str | None
    ) -> MultipleResults[str]:
        if key is not None:
            self.requests.append((user, key, None, specs))
        tasks = [task for task, _price_key in specs]

        def call() -> Any:
            return create_batch(self.engine, user, tasks, self.price_table, idempotency_key=key)

        first = self.keys.get((user, key)) if key is not None else None
        if first is not None and first.request != ("batch", tasks):
            event("create: refused, key used for another request")
            self._nothing_written(call, IdempotencyConflict)
            return multiple()
        if first is not None:
            event("create: replayed")
            before = _everything(self.engine, self.users)
            replay = call()
            assert _everything(self.engine, self.users) == before, (
                "a replayed batch create wrote something"
            )
            assert replay.replayed
            assert (
                replay.batch_id,
                replay.total_tasks,
                replay.invalid_tasks,
                replay.reserved_credits,
            ) == first.answer
            return multiple()
        prices = [None if k is None else PRICES[k] for _task, k in specs]
        needed = sum(p for p in prices if p is not None)
        if self.accounts.get(user, [0, 0])[0] < needed:
            event("create: refused, insufficient credits")
            self._nothing_written(call, InsufficientCredits)
            return multiple()
        event("create: created" + (" with invalid tasks" if None in prices else ""))
        new = call()
        assert not new.replayed
        invalid = prices.count(None)
        assert (new.total_tasks, new.invalid_tasks, new.reserved_credits) == (
            len(tasks),
            invalid,
            needed,
        )
        ids = [
            r["id"]
            for r in rows(
                self.engine,
                "SELECT id FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
                b=new.batch_id,
            )
        ]
        assert len(ids) == len(tasks)
        batch = BatchModel(new.batch_id, user, [])
        for index, (task_id, price) in enumerate(zip(ids, prices, strict=True)):
            task = TaskModel(task_id, batch.id, index, price or 0, "pending")
            if price is None:
                task.status, task.failure_kind = "failed", "invalid_input"
            elif price > 0:
                task.reservation, task.open = 1, True
            batch.tasks.append(task)
            self.tasks[task_id] = task
        self.model[batch.id] = batch
        self.accounts.setdefault(user, [0, 0])
        self._write(
            [
                _entry("reserve", user, batch.id, t.id, 1, amount=t.price)
                for t in batch.tasks
                if t.open
            ]
        )
        if key is not None:
            answer = (new.batch_id, new.total_tasks, new.invalid_tasks, new.reserved_credits)
            self.keys[(user, key)] = KeyUse(("batch", tasks), answer)
        return multiple(new.batch_id)

    @rule(target=claims, batch_id=batches, n=st.integers(1, 3), live=st.booleans())
    def claim_tasks(self, batch_id: str, n: int, live: bool) -> MultipleResults[Claim]:
        """A runner claims waiting tasks to submit them, and records what came of it later (or
        never: it died). A live runner has a fresh heartbeat; any other never registered, so
        its claims may be taken over by another runner, or cancelled."""
        return multiple(*self._claim(batch_id, n, self._runner(live)))

    @rule(
        target=batches,
        user=st.sampled_from(USERS),
        specs=st.lists(task_specs, min_size=1, max_size=4),
        price=st.sampled_from((0, 0, 1, 999)),
        status=st.sampled_from(("queued", "pending")),
    )
    def web_app_writes_rows(
        self, user: str, specs: list[tuple[object, str | None]], price: int, status: str
    ) -> MultipleResults[str]:
        """A web app writes a batch as rows (SPEC 1): one ``batch_jobs`` row and its tasks in
        one transaction, with a price of its own making (or none) and no credit entries. The
        next run to meet the batch takes it in."""
        owner = f"{self.example}-{user}"
        batch = BatchModel(str(uuid.uuid4()), owner, [])
        now = utc_now()
        with self.engine.begin() as conn:
            conn.execute(
                batch_jobs.insert().values(
                    id=batch.id,
                    user_id=owner,
                    status="pending",
                    total_tasks=len(specs),
                    created_at=now,
                    updated_at=now,
                )
            )
            for index, (raw, price_key) in enumerate(specs):
                task = TaskModel(str(uuid.uuid4()), batch.id, index, price, status)
                task.priced, task.price_key = False, price_key
                fields = raw if isinstance(raw, dict) else {}
                conn.execute(
                    video_tasks.insert().values(
                        id=task.id,
                        user_id=owner,
                        batch_job_id=batch.id,
                        batch_index=index,
                        status=status,
                        price=price,
                        created_at=now,
                        updated_at=now,
                        **{k: v for k, v in fields.items() if k in TASK_FIELDS},
                    )
                )
                batch.tasks.append(task)
                self.tasks[task.id] = task
        self.model[batch.id] = batch
        event(f"web app: wrote a batch of {status} rows")
        return multiple(batch.id)

    def _take_in(self, batch_id: str) -> None:
        """What take_in_batch does: price the unpriced waiting rows, reserve them all in one
        transaction or refuse them all, and settle the batch if nothing is left."""
        batch = self.model[batch_id]
        intake = take_in_batch(self.engine, batch_id, self.price_table)
        rows_ = [t for t in batch.tasks if not t.priced and t.status in ("pending", "queued")]
        if batch.cancelled or not rows_:
            assert intake == Intake(batch_id), intake
            return
        valid = [t for t in rows_ if t.price_key is not None]
        needed = sum(PRICES[t.price_key] for t in valid if t.price_key is not None)
        refused = needed > self.accounts[batch.user][0]
        entries = []
        for task in rows_:
            task.priced = True
            if task.price_key is None:
                task.status, task.failure_kind, task.price = "failed", "invalid_input", 0
                continue
            task.price = PRICES[task.price_key]
            if refused:
                task.status, task.failure_kind = "failed", "insufficient_credits"
            else:
                task.status = "pending"
                if task.price > 0:
                    task.reservation, task.open = 1, True
                    entries.append(
                        _entry("reserve", batch.user, batch.id, task.id, 1, amount=task.price)
                    )
        self._write(entries)
        if not batch.unfinished():
            self._settle(batch)
        event(f"intake: {'refused' if refused else 'reserved'}")
        assert (intake.priced, intake.invalid, intake.reserved_credits) == (
            len(valid),
            len(rows_) - len(valid),
            0 if refused else needed,
        )
        assert (intake.refused is not None) == refused
        assert intake.refused is None or intake.refused.startswith("INSUFFICIENT_CREDITS:")

    # Hypothesis tries rules without a target, with fewer arguments, and by name first: the
    # backfill (when there is a failed partition) and the batch's run come first: they move the
    # most.

    @precondition(lambda self: bool(self._failed_partitions()))
    @rule(data=st.data(), plan=run_plans)
    def backfill(self, data: st.DataObject, plan: tuple[list[str], list[str]]) -> None:
        """A backfill of a failed partition: a run of a settled batch with failures that may be
        retried."""
        self._run(data.draw(st.sampled_from(self._failed_partitions())), plan)

    @rule(batch_id=batches, plan=run_plans)
    def batch_run(self, batch_id: str, plan: tuple[list[str], list[str]]) -> None:
        self._run(batch_id, plan)

    def _failed_partitions(self) -> list[str]:
        return [
            b.id
            for b in self.model.values()
            if b.status == "settled"
            and not b.cancelled
            and any(t.status == "failed" and t.failure_kind in BACKFILL_RETRYABLE for t in b.tasks)
        ]

    def _run(self, batch_id: str, plan: tuple[list[str], list[str]]) -> None:
        """A run (or backfill) of the batch's partition, as the engine does it: fail what came
        back to waiting in a cancelled batch, retry what a settled one may retry, then rounds of
        submitting waiting tasks and polling those at the API (the submits come to the plan's
        outcomes, the API says its answers, in turn, until either runs out), and settle if all
        are final. What it polled stays around for answers that come late."""
        outcomes, said = list(plan[0]), list(plan[1])
        self._take_in(batch_id)
        self._sweep(batch_id)
        self._retry(batch_id)
        runner = self._runner(live=True)
        for _round in range(3):
            claimed_now = self._claim(batch_id, len(outcomes), runner) if outcomes else []
            self._submit([(claimed, outcomes.pop(0)) for claimed in claimed_now])
            states = self._poll(batch_id)
            self.polled += states
            self._answer([(state, said.pop(0)) for state in states[: len(said)]])
            if not (claimed_now or states):
                break
        self._settle_batch(batch_id)

    @rule(batch_id=batches, outcomes=st.lists(submit_outcomes, max_size=3))
    def user_cancels(self, batch_id: str, outcomes: list[str]) -> None:
        """The user cancels the batch: while a run has just claimed some of its tasks (and then
        records what their submits came to), or with no run about (no outcomes)."""
        claimed_now = (
            self._claim(batch_id, len(outcomes), self._runner(live=True)) if outcomes else []
        )
        self._cancel(batch_id)
        self._submit(list(zip(claimed_now, outcomes, strict=False)))

    @precondition(lambda self: bool(self.polled))
    @rule(data=st.data(), answer=answers)
    def late_answer(self, data: st.DataObject, answer: str) -> None:
        """An answer about a task as a run read it some time ago: a late poll or callback."""
        self._answer([(data.draw(st.sampled_from(self.polled)), answer)])

    def _runner(self, live: bool) -> str:
        """A new runner: live (a fresh heartbeat), or one that died (never registered)."""
        runner = f"{LIVE if live else 'dead-'}{next(self.names)}"
        if live:
            register_stale_runner(self.engine, runner, silent_for_s=0.0)
        return runner

    def _claim(self, batch_id: str, n: int, runner: str) -> list[Claim]:
        """``runner`` claims up to ``n`` of the batch's waiting tasks."""
        batch = self.model[batch_id]
        expected = (
            []
            if batch.cancelled
            else [
                t
                for t in batch.tasks
                if t.status == "pending"
                and not _is_live(t.claimed_by)
                and t.priced
                and (t.open or t.price == 0)  # paid before sent
            ]
        )[:n]
        if any(t.claimed_by is not None for t in expected):
            event("claim: takes over a dead runner's claim")
        claimed = claim(self.engine, batch_id, runner, n, lease_s=LONG_LEASE)
        assert [c.state.id for c in claimed] == [t.id for t in expected]
        for task, taken in zip(expected, claimed, strict=True):
            assert (taken.state.status, taken.state.attempts) == ("pending", task.attempts)
            task.claimed_by = runner
        if expected and batch.status == "pending":
            batch.status = "running"
        return [Claim(runner, c.state) for c in claimed]

    @rule(claimed=consumes(claims), outcome=submit_outcomes, again=st.booleans())
    def submit(self, claimed: Claim, outcome: str, again: bool) -> None:
        """The runner records what its submit came to (``again``: a second time)."""
        self._submit([(claimed, outcome)], again=again)

    def _submit(self, submits: Sequence[tuple[Claim, str]], *, again: bool = False) -> None:
        """One runner records what its submits came to, in one transaction as the engine does
        (``again``: then a second time, which must change nothing)."""
        if not submits:
            return
        (runner,) = {claimed.runner for claimed, _outcome in submits}
        outcomes: list[tuple[TaskState, Event]] = []
        applying: list[tuple[TaskModel, str, str]] = []
        for claimed, outcome in submits:
            task = self.tasks[claimed.state.id]
            remote_id = f"remote-{next(self.names)}"
            events: dict[str, Event] = {
                "accepted": Accepted(remote_id),
                "rejected": Rejected("prompt violates policy"),
                "submit_failed": SubmitFailed("HTTP 503 on /v1/video/sora-video"),
                "not_sent": NotSent(),
            }
            outcomes.append((claimed.state, events[outcome]))
            if task.status == "pending" and task.claimed_by == runner:
                assert claimed.state.attempts == task.attempts
                applying.append((task, outcome, remote_id))
            else:
                event("submit: refused, the claim is gone")
        assert record(self.engine, runner, outcomes, self.policy) == len(applying), applying
        if again:
            assert record(self.engine, runner, outcomes, self.policy) == 0
        for task, outcome, remote_id in applying:
            batch = self.model[task.batch_id]
            event(f"submit: {outcome}" + (" after the cancel" if batch.cancelled else ""))
            task.claimed_by = None
            if batch.cancelled:
                # Only a claim a live runner held at the cancel may still reach the API.
                assert batch.on_the_wire.pop(task.id) == runner
            if outcome == "not_sent":
                continue
            task.attempts += 1
            if outcome == "accepted":
                task.status, task.failure_kind, task.remote_id = "processing", None, remote_id
                if batch.cancelled:
                    batch.may_be_at_api.add(task.id)
            elif outcome == "rejected":
                task.status, task.failure_kind = "failed", "api_error"
            else:
                again_later = task.attempts <= self.policy.max_task_retries
                task.status = "pending" if again_later else "failed"
                task.failure_kind = "submit_exhausted"

    def _poll(self, batch_id: str) -> list[TaskState]:
        """Read the batch's tasks at the API, as a poll does, in ``batch_index`` order (not in
        the order of their random ids: Hypothesis must be able to replay an example)."""
        batch = self.model[batch_id]
        with self.engine.connect() as conn:
            found = tasks_at_api(conn, [t.id for t in batch.tasks])
        states = sorted((r.state for r in found), key=lambda s: self.tasks[s.id].index)
        expected = [t for t in batch.tasks if t.status == "processing"]
        assert [(s.id, s.grsai_task_id) for s in states] == [(t.id, t.remote_id) for t in expected]
        return states

    def _answer(self, answers: Sequence[tuple[TaskState, str]]) -> None:
        """What the API said about tasks as they were read, recorded in one transaction."""
        if not answers:
            return
        final: list[tuple[TaskModel, str]] = []
        maybe = 0  # "running" and "not found" may change a field or nothing
        for state, answer in answers:
            task = self.tasks[state.id]
            applies = task.status == "processing" and task.remote_id == state.grsai_task_id
            if applies:
                assert state.attempts == task.attempts
            if answer in ("running", "not_found"):
                maybe += applies
            elif applies:
                event(f"answer: {answer}")
                final.append((task, answer))
            else:
                event("answer: about a task no longer at the API")
        outcomes = [(state, Answered(RESULTS[answer])) for state, answer in answers]
        written = record(self.engine, None, outcomes, self.policy)
        assert len(final) <= written <= len(final) + maybe, (answers, written)
        for task, answer in final:
            if answer == "succeeded":
                task.status, task.failure_kind = "succeeded", None
            elif answer == "error" and task.attempts <= self.policy.max_task_retries:
                task.status, task.failure_kind, task.remote_id = "pending", "error", None
            else:
                kinds = {"no_url": "no_video_url", "moderated": "output_moderation"}
                task.status, task.failure_kind = "failed", kinds.get(answer, answer)
            self.model[task.batch_id].may_be_at_api.discard(task.id)

    def _settle_batch(self, batch_id: str) -> None:
        batch = self.model[batch_id]
        settlement = settle_batch(self.engine, batch_id)
        unfinished, written = self._settle(batch)
        event("settle: waits" if unfinished else f"settle: {written > 0} entries written")
        assert (settlement.status, settlement.unfinished, settlement.entries_written) == (
            batch.status,
            unfinished,
            written,
        )
        assert (
            settlement.reserved_credits,
            settlement.charged_credits,
            settlement.refunded_credits,
        ) == (batch.reserved, batch.charged, batch.refunded)

    def _retry(self, batch_id: str) -> None:
        """What retry_failed_tasks does: a settled batch retries its retryable failures."""
        batch = self.model[batch_id]
        policy = RetryPolicy()
        started = retry_failed_tasks(self.engine, batch_id, policy)
        retried = credits = short = final = 0
        if batch.status == "settled" and not batch.cancelled:
            entries = []
            money = self.accounts[batch.user]
            balance = money[0]
            for task in batch.tasks:
                if task.status != "failed" or task.failure_kind not in BACKFILL_RETRYABLE:
                    continue
                if task.backfills >= policy.max_backfill_retries:
                    final += 1  # out of retries: final now, never retried again
                    task.failure_kind = "retries_exhausted"
                    continue
                if task.price > balance:
                    short += 1
                    continue
                balance -= task.price
                retried += 1
                task.backfills += 1
                credits += task.price
                task.status, task.failure_kind, task.attempts = "pending", None, 0
                task.remote_id = None
                if task.price > 0:
                    task.reservation += 1
                    task.open = True
                    number = task.reservation
                    entries.append(
                        _entry("reserve", batch.user, batch.id, task.id, number, amount=task.price)
                    )
            self._write(entries)
            if retried:
                batch.status = "running"
        event(f"retry: {retried > 0} retried, {short > 0} short of credits, {final > 0} final")
        assert (
            started.retried,
            started.retry_credits,
            started.short_of_credits,
            started.final,
        ) == (retried, credits, short, final)

    def _cancel(self, batch_id: str) -> None:
        batch = self.model[batch_id]
        done = cancel_batch(self.engine, batch_id, lease_s=LONG_LEASE)
        if batch.cancelled or batch.status == "settled":
            event("cancel: unchanged")
            assert done.unchanged is not None
            assert (done.cancelled_tasks, done.refunded_credits, done.settled) == (0, 0, False)
            return
        batch.cancelled = True
        batch.may_be_at_api = {t.id for t in batch.tasks if t.status == "processing"}
        batch.on_the_wire = {
            t.id: t.claimed_by
            for t in batch.tasks
            if t.status == "pending" and t.claimed_by is not None and t.claimed_by.startswith(LIVE)
        }
        cancelled, refunded = self._fail_unsent(batch)
        still_running = len(batch.unfinished())
        if not still_running:
            self._settle(batch)
        event(f"cancel: {bool(cancelled)} cancelled, {bool(batch.on_the_wire)} on the wire")
        event(f"cancel: {'settled at once' if not still_running else 'tasks left at the API'}")
        assert done.unchanged is None
        assert (done.cancelled_tasks, done.refunded_credits, done.still_running) == (
            cancelled,
            refunded,
            still_running,
        )
        assert done.settled == (batch.status == "settled")

    def _sweep(self, batch_id: str) -> None:
        """The engine's rescan of cancelled batches: tasks that came back to waiting."""
        batch = self.model[batch_id]
        swept = sweep_cancelled(self.engine, [batch_id], lease_s=LONG_LEASE)
        expected = self._fail_unsent(batch)[0] if batch.cancelled else 0
        event(f"sweep: {expected > 0} swept")
        assert swept == expected

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def every_invariant_holds(self) -> None:
        """After every step: the product's own audit, then SPEC 1's invariants and the model,
        checked on one consistent read of the tables."""
        ours = tuple(f"account {u}:" for u in self.users) + tuple(f"batch {b}:" for b in self.model)
        tasks = tuple(f"(batch {b} #" for b in self.model)
        problems = verify_ledger(self.engine)
        assert [
            p
            for p in problems
            if p.startswith(ours) or (p.startswith("task ") and any(b in p for b in tasks))
        ] == []
        tables = _read_tables(self.engine, self.users)
        self._check_spec_1(tables)
        self._check_the_model(tables)
        self._check_cancelled_batches(tables)

    def _check_spec_1(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        ledger, tasks = tables["credit_ledger"], {t["id"]: t for t in tables["video_tasks"]}
        batches = {b["id"]: b for b in tables["batch_jobs"]}
        per_user: dict[str, Counter[str]] = defaultdict(Counter)
        per_batch: dict[str, Counter[str]] = defaultdict(Counter)
        users_of: dict[str, set[str]] = defaultdict(set)
        batches_of: dict[str, set[str]] = defaultdict(set)
        per_reservation: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for entry in ledger:
            assert entry["transaction_id"] is not None, entry
            assert entry["amount"] > 0, entry
            per_user[entry["user_id"]][entry["kind"]] += entry["amount"]
            users_of[entry["transaction_id"]].add(entry["user_id"])
            if entry["batch_job_id"] is not None:
                per_batch[entry["batch_job_id"]][entry["kind"]] += entry["amount"]
                batches_of[entry["transaction_id"]].add(entry["batch_job_id"])
                assert entry["user_id"] == batches[entry["batch_job_id"]]["user_id"], entry
            if entry["kind"] != "grant":
                assert entry["user_id"] == tasks[entry["video_task_id"]]["user_id"], entry
                per_reservation[(entry["video_task_id"], entry["reservation"])].append(entry)
        # Every transaction is one money movement of one user (and of at most one batch).
        assert all(len(users) == 1 for users in users_of.values()), users_of
        assert all(len(found) == 1 for found in batches_of.values()), batches_of
        for account in tables["credit_accounts"]:
            sums = per_user[account["user_id"]]
            assert account["balance"] == sums["grant"] - sums["reserve"] + sums["refund"], account
            assert account["held"] == sums["reserve"] - sums["charge"] - sums["refund"], account
            assert account["balance"] >= 0 and account["held"] >= 0, account
        unfinished = Counter(
            t["batch_job_id"]
            for t in tasks.values()
            if t["status"] in ("pending", "queued", "processing")
        )
        for batch in batches.values():
            sums = per_batch[batch["id"]]
            columns = tuple(
                batch[f"{kind}_credits"] for kind in ("reserved", "charged", "refunded")
            )
            assert columns == (sums["reserve"], sums["charge"], sums["refund"]), (batch, sums)
            if batch["status"] == "settled":
                assert columns[0] == columns[1] + columns[2], batch
                assert unfinished[batch["id"]] == 0, batch
        # Each reservation of a task: one reserve of the task's price, at most one close of the
        # same amount; reservations numbered 1, 2, ...; the latest one's close fits the task.
        numbers: dict[str, list[int]] = defaultdict(list)
        for (task_id, number), entries in per_reservation.items():
            kinds = Counter(e["kind"] for e in entries)
            assert kinds["reserve"] == 1 and kinds["charge"] + kinds["refund"] <= 1, entries
            assert {e["amount"] for e in entries} == {tasks[task_id]["price"]}, entries
            numbers[task_id].append(number)
        for task_id, taken in numbers.items():
            assert sorted(taken) == list(range(1, len(taken) + 1)), (task_id, taken)
            for close in per_reservation[(task_id, max(taken))]:
                if close["kind"] != "reserve":
                    wanted = "succeeded" if close["kind"] == "charge" else "failed"
                    assert tasks[task_id]["status"] == wanted, (close, tasks[task_id])

    def _check_the_model(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        accounts = {a["user_id"]: [a["balance"], a["held"]] for a in tables["credit_accounts"]}
        assert accounts == self.accounts
        batches = {
            b["id"]: (
                b["status"],
                b["reserved_credits"],
                b["charged_credits"],
                b["refunded_credits"],
                b["cancelled_at"] is not None,
                b["settled_at"] is not None,
            )
            for b in tables["batch_jobs"]
        }
        assert batches == {
            b.id: (b.status, b.reserved, b.charged, b.refunded, b.cancelled, b.status == "settled")
            for b in self.model.values()
        }
        found = {t["id"]: t for t in tables["video_tasks"]}
        assert set(found) == set(self.tasks)
        for task_id, task in self.tasks.items():
            row = found[task_id]
            expected = (task.status, task.failure_kind, task.attempts, task.price)
            actual = (row["status"], row["failure_kind"], row["attempts"], row["price"])
            assert actual == expected, (task, row)
            if task.status == "pending":
                assert row["claimed_by"] == task.claimed_by, (task, row)
            if task.status == "processing":
                assert row["grsai_task_id"] == task.remote_id, (task, row)
        journal: dict[str, list[Entry]] = defaultdict(list)
        for e in tables["credit_ledger"]:
            where = (e["batch_job_id"], e["video_task_id"], e["reservation"])
            entry = _entry(e["kind"], e["user_id"], *where, amount=e["amount"])
            journal[e["transaction_id"]].append(entry)
        assert sorted(sorted(t) for t in journal.values()) == sorted(
            sorted(t) for t in self.journal
        )

    def _check_cancelled_batches(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        """What of a cancelled batch is at the API was there, or on the wire, at the cancel."""
        at_api: dict[str, set[str]] = defaultdict(set)
        for task in tables["video_tasks"]:
            if task["status"] == "processing":
                at_api[task["batch_job_id"]].add(task["id"])
        for batch in self.model.values():
            if batch.cancelled:
                assert at_api[batch.id] <= batch.may_be_at_api, (batch, at_api[batch.id])


def _read_tables(engine: sa.Engine, users: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The rows of these users in the four tables of SPEC 1."""
    queries = {
        "credit_accounts": "SELECT user_id, balance, held FROM credit_accounts",
        "batch_jobs": "SELECT id, user_id, status, reserved_credits, charged_credits,"
        " refunded_credits, cancelled_at, settled_at FROM batch_jobs",
        "video_tasks": "SELECT id, user_id, batch_job_id, status, failure_kind, attempts,"
        " claimed_by, grsai_task_id, price FROM video_tasks",
        "credit_ledger": "SELECT * FROM credit_ledger",
    }
    return _of_users(engine, queries, users)


def _sqlite_files(template: Path, folder: Path) -> Callable[[], FreshDatabase]:
    def fresh() -> FreshDatabase:
        path = folder / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(template, path)

        def drop() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        return f"sqlite:///{path}", drop

    return fresh


def _postgres_clones(databases: PostgresDatabases) -> Callable[[], FreshDatabase]:
    def fresh() -> FreshDatabase:
        url = databases.create()
        name = sa.engine.make_url(url).database
        assert name is not None
        # No wait for the WAL flush at each commit: what a commit makes visible is the same,
        # and the examples' thousands of small transactions no longer wait on the disk.
        with databases.admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {name} SET synchronous_commit = off")

        def drop() -> None:
            databases.drop(name)
            databases.created.remove(name)

        return url, drop

    return fresh


# A failure is shrunk for up to five minutes (Hypothesis's limit) after up to a minute of search.
@pytest.mark.timeout(900)
def test_random_money_operations_keep_every_invariant_of_spec_1(
    request: pytest.FixtureRequest,
    database_url: str,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRSAI_PRICES", PRICES_SETTING)
    prices = load_settings().price_table
    assert prices.as_dict() == PRICES
    if sa.engine.make_url(database_url).get_backend_name() == "sqlite":
        # A copy of the template is cheap: a file of its own for every example.
        databases = Databases(_sqlite_files(sqlite_template, tmp_path), share=1)
    else:
        databases = Databases(
            _postgres_clones(request.getfixturevalue("postgres_databases")), share=SHARE_PG
        )

    class OnThisDatabase(LedgerMachine):
        pass

    OnThisDatabase.databases = databases
    OnThisDatabase.price_table = prices
    try:
        run_state_machine_as_test(
            OnThisDatabase,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                database=None,
                suppress_health_check=[
                    HealthCheck.function_scoped_fixture,
                    HealthCheck.too_slow,
                    HealthCheck.filter_too_much,
                ],
            ),
        )
    finally:
        databases.close()
