"""The migrated database is the schema of SPEC 1, and the database itself guards the money:
the ledger is append-only, each reservation has one reserve and at most one close, amounts are
positive and accounts never go below zero."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from grsai_pipeline.domain.ledger import EntryKind, LedgerEntry
from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline.store.columns import utc_now
from grsai_pipeline.store.db import create_app_engine
from grsai_pipeline.store.ledger import record_transaction
from grsai_pipeline.store.migrate import (
    HEAD_REVISION,
    VERSION_TABLE,
    alembic_head_revision,
    current_revision,
    upgrade_schema,
)
from grsai_pipeline.store.schema import metadata
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows, table_snapshot
from grsai_pipeline_tests.test_store.store_support import (
    SORA_10,
    VEO_PRO,
    account_row,
    execute,
    insert_task,
    ledger_count,
    succeed,
    task_ids,
)

SPEC_COLUMNS = {
    "credit_accounts": ["user_id", "balance", "held", "updated_at"],
    "batch_jobs": [
        "id", "user_id", "status", "total_tasks", "reserved_credits", "charged_credits",
        "refunded_credits", "created_at", "updated_at", "settled_at", "error_message",
    ],
    "video_tasks": [
        "id", "user_id", "batch_job_id", "batch_index", "status", "prompt", "model",
        "reference_url", "aspect_ratio", "duration", "meta", "video_url", "error_message",
        "grsai_task_id", "progress", "attempts", "price", "created_at", "updated_at",
    ],
    "credit_ledger": [
        "id", "user_id", "batch_job_id", "video_task_id", "kind", "amount", "reservation",
        "created_at",
    ],
}  # fmt: skip


def _insert_entry(engine: sa.Engine, **values: Any) -> None:
    entry = {"batch_job_id": None, "video_task_id": None, "reservation": None, **values}
    execute(
        engine,
        "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
        " reservation, transaction_id, created_at)"
        " VALUES (:user_id, :batch_job_id, :video_task_id, :kind, :amount, :reservation,"
        " 'by-hand', CURRENT_TIMESTAMP)",
        **entry,
    )


@pytest.fixture
def reserved_task(engine: sa.Engine) -> dict[str, Any]:
    """One sora-2 task whose reservation 1 the batch creation wrote."""
    batch_id = new_batch(engine, [SORA_10], credits=100)
    (task_id,) = task_ids(engine, batch_id)
    return {"user_id": "alice", "batch_job_id": batch_id, "video_task_id": task_id}


def test_migrated_database_matches_the_schema_module(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": False}
        )
        # No filtering needed: alembic reports no spurious partial-index or default diffs here.
        assert compare_metadata(context, metadata) == []


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> str:
    """A database of the same kind as ``database_url`` with no schema at all."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("postgres_databases").create(migrated=False)


def test_db_init_creates_the_schema_in_an_empty_database(empty_database_url: str) -> None:
    engine = create_app_engine(empty_database_url)
    try:
        assert current_revision(engine) is None
        assert sa.inspect(engine).get_table_names() == []

        upgrade_schema(engine)

        assert current_revision(engine) == HEAD_REVISION
        assert set(SPEC_COLUMNS) <= set(sa.inspect(engine).get_table_names())
        grant_credits(engine, "alice", 5)  # usable at once
        assert account_row(engine, "alice")["balance"] == 5
    finally:
        engine.dispose()


def test_upgrading_again_is_a_no_op_that_keeps_every_row(engine: sa.Engine) -> None:
    new_batch(engine, [SORA_10, {"prompt": "", "model": "sora-2"}], credits=50)
    before = table_snapshot(engine)
    tables_before = sorted(sa.inspect(engine).get_table_names())

    upgrade_schema(engine)
    upgrade_schema(engine)

    assert current_revision(engine) == HEAD_REVISION
    assert rows(engine, f"SELECT version_num FROM {VERSION_TABLE}") == [
        {"version_num": HEAD_REVISION}
    ]
    assert sorted(sa.inspect(engine).get_table_names()) == tables_before
    assert table_snapshot(engine) == before


def test_every_column_spec_1_names_exists(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    for table, names in SPEC_COLUMNS.items():
        live = {column["name"] for column in inspector.get_columns(table)}
        assert set(names) <= live, (table, set(names) - live)


def test_primary_keys_are_the_spec_ones(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    keys = {t: inspector.get_pk_constraint(t)["constrained_columns"] for t in SPEC_COLUMNS}
    assert keys == {
        "credit_accounts": ["user_id"],
        "batch_jobs": ["id"],
        "video_tasks": ["id"],
        "credit_ledger": ["id"],
    }


def test_batch_index_is_unique_within_a_batch(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        execute(
            engine,
            "INSERT INTO video_tasks (id, user_id, batch_job_id, batch_index, status, progress,"
            " attempts, price, created_at, updated_at) VALUES ('dup-index', 'alice', :b, 0,"
            " 'pending', 0, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
            b=reserved_task["batch_job_id"],
        )


def test_the_ledger_refuses_updates_and_deletes(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    before = table_snapshot(engine)["credit_ledger"]
    assert len(before) == 2  # the grant and the reserve
    statements = [
        "UPDATE credit_ledger SET amount = amount + 1",
        "UPDATE credit_ledger SET kind = 'refund' WHERE kind = 'reserve'",
        "DELETE FROM credit_ledger",
        "DELETE FROM credit_ledger WHERE kind = 'reserve'",
    ]
    for statement in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            execute(engine, statement)

    assert table_snapshot(engine)["credit_ledger"] == before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_ledger_refuses_truncate_on_postgresql(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        execute(engine, "TRUNCATE credit_ledger CASCADE")
    assert ledger_count(engine) == 2


def test_a_second_reserve_of_one_reservation_is_refused(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="reserve", amount=10, reservation=1)
    assert ledger_count(engine) == 2
    # The key is per reservation: the next reservation of the same task is allowed.
    _insert_entry(engine, **reserved_task, kind="reserve", amount=10, reservation=2)
    assert ledger_count(engine) == 3


def test_a_second_charge_of_one_reservation_is_refused(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=1)
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=1)
    assert ledger_count(engine) == 3


def test_a_refund_after_a_charge_of_one_reservation_is_refused(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=1)
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="refund", amount=10, reservation=1)
    assert ledger_count(engine) == 3
    # Closing a different reservation of the same task is allowed.
    _insert_entry(engine, **reserved_task, kind="refund", amount=10, reservation=2)
    assert ledger_count(engine) == 4


def test_a_charge_after_a_refund_of_one_reservation_is_refused(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    _insert_entry(engine, **reserved_task, kind="refund", amount=10, reservation=1)
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=1)
    assert ledger_count(engine) == 3


def test_an_unnumbered_reserve_from_another_writer_is_never_refunded_twice(
    engine: sa.Engine,
) -> None:
    batch_id = new_batch(engine, [SORA_10], credits=100)
    new_batch(engine, [VEO_PRO])  # another open batch: alice holds 40 more
    task_id = insert_task(engine, batch_id, 1, status="failed", price=10)
    try:
        with engine.begin() as conn:  # a writer that forgot the reservation number
            conn.execute(
                sa.text(
                    "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind,"
                    " amount, reservation, transaction_id, created_at)"
                    " VALUES ('alice', :b, :t, 'reserve', 10, NULL, 'by-hand', CURRENT_TIMESTAMP)"
                ),
                {"b": batch_id, "t": task_id},
            )
            conn.execute(
                sa.text(
                    "UPDATE credit_accounts SET balance = balance - 10, held = held + 10"
                    " WHERE user_id = 'alice'"
                )
            )
    except sa.exc.IntegrityError:
        pass  # refused by the database: then there is nothing to refund
    succeed(engine, task_ids(engine, batch_id)[0])
    settle_batch(engine, batch_id)
    before = table_snapshot(engine)

    settle_batch(engine, batch_id)

    refunds = rows(
        engine,
        "SELECT COUNT(*) AS n FROM credit_ledger WHERE video_task_id = :t AND kind = 'refund'",
        t=task_id,
    )
    assert refunds[0]["n"] <= 1
    assert table_snapshot(engine) == before
    assert_ledger_invariants(engine)


def test_non_positive_amounts_are_refused(engine: sa.Engine, reserved_task: dict[str, Any]) -> None:
    for amount in (0, -1, -100):
        with pytest.raises(sa.exc.IntegrityError):
            _insert_entry(engine, user_id="alice", kind="grant", amount=amount)
        with pytest.raises(sa.exc.IntegrityError):
            _insert_entry(engine, **reserved_task, kind="charge", amount=amount, reservation=1)
    assert ledger_count(engine) == 2


def test_unknown_kinds_are_refused(engine: sa.Engine, reserved_task: dict[str, Any]) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="bonus", amount=5, reservation=1)
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, user_id="alice", kind="grant", amount=5, reservation=1)
    assert ledger_count(engine) == 2


def test_task_entries_without_a_reservation_number_are_refused(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    # Were a NULL reservation accepted, the unique key (NULLs are distinct) could not stop a
    # second charge of the same task: the "exactly once" of SPEC 1 would rest on code alone.
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=None)
    with pytest.raises(sa.exc.IntegrityError):
        _insert_entry(engine, **reserved_task, kind="charge", amount=10, reservation=None)
    assert ledger_count(engine) == 2


def test_an_account_cannot_go_below_zero(engine: sa.Engine, reserved_task: dict[str, Any]) -> None:
    before = account_row(engine, "alice")
    assert before is not None and before["held"] == 10
    for column in ("balance", "held"):
        with pytest.raises(sa.exc.IntegrityError):
            execute(engine, f"UPDATE credit_accounts SET {column} = -1 WHERE user_id = 'alice'")
    assert account_row(engine, "alice") == before


def test_a_reserve_larger_than_the_balance_fails_the_whole_write(
    engine: sa.Engine, reserved_task: dict[str, Any]
) -> None:
    grant_credits(engine, "alice", 1)
    assert account_row(engine, "alice")["balance"] == 91  # 100 granted + 1 - 10 reserved
    before = table_snapshot(engine)
    ids = (reserved_task["batch_job_id"], reserved_task["video_task_id"])
    entries = [
        LedgerEntry("alice", EntryKind.GRANT, 1),
        LedgerEntry("alice", EntryKind.RESERVE, 93, *ids, reservation=2),
    ]

    # The CHECK on the account refuses the overdraft; the entries written before it roll back.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        record_transaction(conn, entries, utc_now())

    assert table_snapshot(engine) == before


def test_the_head_revision_commands_check_is_the_newest_migration() -> None:
    assert alembic_head_revision() == HEAD_REVISION
