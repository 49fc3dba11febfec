"""`db init` brings a database made by the first schema version up to date, keeping its rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from grsai_pipeline.cli import main
from grsai_pipeline.domain.pricing import PriceTable
from grsai_pipeline.store import db as store_db
from grsai_pipeline.store.intake import awaiting_intake, take_in_batch
from grsai_pipeline.store.migrate import HEAD_REVISION, current_revision, upgrade_schema
from grsai_pipeline.store.settlement import settle_batch
from grsai_pipeline_tests.helpers import assert_ledger_invariants, rows

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _database_at(request: pytest.FixtureRequest, tmp_path, revision: str) -> Iterator[str]:
    """An empty database brought to ``revision`` only (SQLite, or PostgreSQL by the param)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / f'at-{revision}.db'}"
    else:
        url = request.getfixturevalue("postgres_databases").create(migrated=False)
    engine = sa.create_engine(url)
    upgrade_schema(engine, revision)
    engine.dispose()
    yield url
    stale = store_db._ENGINES.pop(url, None)
    if stale is not None:
        stale.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def first_version_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database brought to revision 0001 only, as the first release left it."""
    yield from _database_at(request, tmp_path, "0001")


def fill_first_version(url: str) -> None:
    """A settled-looking account, a batch with one succeeded and one processing task."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO credit_accounts VALUES ('olga', 70, 30, :now)"), {"now": NOW}
        )
        conn.execute(
            sa.text(
                "INSERT INTO batch_jobs (id, user_id, status, total_tasks, reserved_credits,"
                " charged_credits, refunded_credits, created_at, updated_at)"
                " VALUES ('b-1', 'olga', 'running', 2, 30, 0, 0, :now, :now)"
            ),
            {"now": NOW},
        )
        for index, (status, price, url_) in enumerate(
            [("succeeded", 10, "https://v/1.mp4"), ("processing", 20, None)]
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO video_tasks (id, user_id, batch_job_id, batch_index, status,"
                    " prompt, model, aspect_ratio, duration, video_url, grsai_task_id,"
                    " progress, attempts, price, created_at, updated_at)"
                    " VALUES (:id, 'olga', 'b-1', :i, :status, 'old prompt', 'sora-2', '9:16',"
                    " 10, :video, :remote, 0, 1, :price, :now, :now)"
                ),
                {"id": f"t-{index}", "i": index, "status": status, "video": url_,
                 "remote": f"r-{index}", "price": price, "now": NOW},
            )  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
                " reservation, created_at) VALUES ('olga', NULL, NULL, 'grant', 100, NULL, :now),"
                " ('olga', 'b-1', 't-0', 'reserve', 10, 1, :now),"
                " ('olga', 'b-1', 't-1', 'reserve', 20, 1, :now)"
            ),
            {"now": NOW},
        )
    engine.dispose()


def test_db_init_upgrades_the_first_schema_in_place(first_version_url, monkeypatch, capsys) -> None:
    fill_first_version(first_version_url)
    engine = store_db.get_engine(first_version_url)
    before = {
        table: rows(engine, f"SELECT * FROM {table} ORDER BY 1")
        for table in ("credit_accounts", "batch_jobs", "video_tasks", "credit_ledger")
    }
    monkeypatch.setenv("GRSAI_DATABASE_URL", first_version_url)

    with pytest.raises(SystemExit) as exit_info:
        main(["db", "init"])

    assert exit_info.value.code == 0
    assert "upgraded from 0001" in capsys.readouterr().out
    assert current_revision(engine) == HEAD_REVISION != "0001"
    after = {table: rows(engine, f"SELECT * FROM {table} ORDER BY 1") for table in before}
    for table, old_rows in before.items():
        kept = [{k: row[k] for k in old_rows[0]} for row in after[table]]
        assert kept == old_rows, table
    assert [t["possible_duplicates"] for t in after["video_tasks"]] == [0, 0]
    # Older entries written at one instant by one user are one journal transaction.
    assert {e["transaction_id"] for e in after["credit_ledger"]} == {"legacy-1"}
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE credit_ledger SET amount = 1"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
                " reservation, transaction_id, created_at)"
                " VALUES ('olga', 'b-1', 't-0', 'charge', 10, NULL, 'tx', :n)"
            ),
            {"n": NOW},
        )
    # The old rows work with the new code: finish the task and settle.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE video_tasks SET status = 'failed' WHERE id = 't-1'"))
    assert settle_batch(engine, "b-1").settled
    assert_ledger_invariants(engine)


def test_db_init_on_an_up_to_date_database_changes_nothing(
    database_url, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("GRSAI_DATABASE_URL", database_url)
    with pytest.raises(SystemExit) as exit_info:
        main(["db", "init"])
    assert exit_info.value.code == 0
    assert "already up to date" in capsys.readouterr().out


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def before_intake_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A database at revision 0006, the last one before batches written as rows were taken in."""
    yield from _database_at(request, tmp_path, "0006")


def test_upgrading_leaves_unpaid_rows_to_the_intake_and_keeps_paid_ones_priced(
    before_intake_url,
) -> None:
    engine = sa.create_engine(before_intake_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO credit_accounts VALUES ('olga', 90, 10, :n)"), {"n": NOW})
        for batch in ("paid", "rows"):
            conn.execute(
                sa.text(
                    "INSERT INTO batch_jobs (id, user_id, status, total_tasks, created_at,"
                    " updated_at) VALUES (:b, 'olga', 'pending', 1, :n, :n)"
                ),
                {"b": batch, "n": NOW},
            )
            # The paid one was stored as queued by an operator after its reservation.
            conn.execute(
                sa.text(
                    "INSERT INTO video_tasks (id, user_id, batch_job_id, batch_index, status,"
                    " prompt, model, price, created_at, updated_at)"
                    " VALUES (:b, 'olga', :b, 0, 'queued', 'a kite', 'sora-2', 10, :n, :n)"
                ),
                {"b": batch, "n": NOW},
            )
        conn.execute(
            sa.text(
                "INSERT INTO credit_ledger (user_id, batch_job_id, video_task_id, kind, amount,"
                " reservation, transaction_id, created_at) VALUES"
                " ('olga', NULL, NULL, 'grant', 100, NULL, 'g', :n),"
                " ('olga', 'paid', 'paid', 'reserve', 10, 1, 'r', :n)"
            ),
            {"n": NOW},
        )
    engine.dispose()

    upgrade_schema(store_db.get_engine(before_intake_url))

    engine = store_db.get_engine(before_intake_url)
    tasks = {t["id"]: t for t in rows(engine, "SELECT id, status, priced_at FROM video_tasks")}
    assert tasks["paid"]["status"] == "pending" and tasks["paid"]["priced_at"] is not None
    assert tasks["rows"]["status"] == "queued" and tasks["rows"]["priced_at"] is None
    with engine.connect() as conn:
        assert awaiting_intake(conn) == ["rows"]
    assert take_in_batch(engine, "rows", PriceTable()).reserved_credits == 10
    assert_ledger_invariants(engine)
