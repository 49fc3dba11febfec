"""``db init`` (SPEC 1 and 6): creates or upgrades the schema, idempotent; the default database
is ``grsai.db`` in the working directory; commands refuse a database that is not initialised."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.helpers import rows
from grsai_pipeline_tests.test_cli.cli_helpers import (
    APP_TABLES,
    assert_error,
    call_main,
    run_cli,
    sqlite_url,
    table_names,
    use_settings,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An application database that exists but has no schema yet."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "fresh" / "app.db")
        return
    yield request.getfixturevalue("postgres_databases").create(migrated=False)


@pytest.mark.slow
def test_db_init_with_no_setting_makes_grsai_db_here_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_cli(["db", "init"], cwd=tmp_path)

    assert first.code == 0, first
    database = tmp_path / "grsai.db"
    assert database.is_file()
    assert set(APP_TABLES) <= table_names(sqlite_url(database))

    # Data written between two inits survives the second one.
    assert call_main(["credits", "grant", "alice", "25"], capsys).code == 0
    second = run_cli(["db", "init"], cwd=tmp_path)

    assert second.code == 0, second
    assert second.err == "", second
    assert set(APP_TABLES) <= table_names(sqlite_url(database))
    engine = sa.create_engine(sqlite_url(database))
    try:
        assert rows(engine, "SELECT user_id, balance, held FROM credit_accounts") == [
            {"user_id": "alice", "balance": 25, "held": 0}
        ]
        assert len(rows(engine, "SELECT * FROM credit_ledger")) == 1
    finally:
        engine.dispose()


def test_db_init_creates_the_schema_at_the_configured_url_twice(
    fresh_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if fresh_database_url.startswith("sqlite"):
        (tmp_path / "fresh").mkdir()
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": fresh_database_url})
    assert not set(APP_TABLES) & table_names(fresh_database_url)

    first = call_main(["db", "init"], capsys)
    second = call_main(["db", "init"], capsys)

    assert (first.code, second.code) == (0, 0), (first, second)
    assert set(APP_TABLES) <= table_names(fresh_database_url)
    assert not (tmp_path / "grsai.db").exists()  # the setting, not the default, was used
    # The schema works: a grant goes through.
    assert call_main(["credits", "grant", "bob", "3"], capsys).code == 0


def test_db_init_reads_the_database_url_from_a_dot_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "from-dotenv.db"
    (tmp_path / ".env").write_text(f"GRSAI_DATABASE_URL={sqlite_url(target)}\n")

    result = call_main(["db", "init"], capsys)

    assert result.code == 0, result
    assert set(APP_TABLES) <= table_names(sqlite_url(target))
    assert not (tmp_path / "grsai.db").exists()


def test_an_invalid_setting_in_dot_env_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("MAX_TASK_RETRIES=lots\n")

    result = call_main(["db", "init"], capsys)

    assert_error(result, 2, "MAX_TASK_RETRIES")
    assert not (tmp_path / "grsai.db").exists()


def test_db_init_in_a_missing_directory_fails_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": sqlite_url(tmp_path / "no" / "such.db")})

    result = call_main(["db", "init"], capsys)

    assert_error(result, 1, "db init")
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_a_command_on_a_database_not_initialised_says_to_run_db_init(tmp_path: Path) -> None:
    settings = {"GRSAI_DATABASE_URL": sqlite_url(tmp_path / "empty.db")}

    result = run_cli(["credits", "grant", "alice", "10"], cwd=tmp_path, settings=settings)

    assert_error(result, 1, "grsai-pipeline db init")
    assert result.out == ""
    assert not set(APP_TABLES) & table_names(settings["GRSAI_DATABASE_URL"])


@pytest.mark.parametrize(
    "argv",
    [
        ["credits", "show", "alice"],
        ["batch", "status", str(uuid.UUID(int=1))],
        ["run", str(uuid.UUID(int=1))],
    ],
)
def test_every_command_refuses_a_database_not_initialised(
    argv: list[str],
    fresh_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if fresh_database_url.startswith("sqlite"):
        (tmp_path / "fresh").mkdir()
    use_settings(
        monkeypatch,
        {
            "GRSAI_DATABASE_URL": fresh_database_url,
            "GRSAI_API_KEY": "sk-unused",
            "DAGSTER_HOME": str(tmp_path),
        },
    )

    result = call_main(argv, capsys)

    assert_error(result, 1, "grsai-pipeline db init")
    assert not set(APP_TABLES) & table_names(fresh_database_url)


@pytest.mark.postgres
def test_a_database_that_cannot_be_opened_is_named_on_one_line(
    postgres_databases: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = postgres_databases.url_of(f"grsai_missing_{uuid.uuid4().hex[:8]}")
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": missing})

    result = call_main(["credits", "show", "alice"], capsys)

    assert_error(result, 1, "GRSAI_DATABASE_URL")
