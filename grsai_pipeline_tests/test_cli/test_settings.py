"""Settings (SPEC 6): a missing or invalid setting is reported by name, on one line, at start-up,
with exit code 2, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.helpers import new_batch, table_snapshot
from grsai_pipeline_tests.test_cli.cli_helpers import (
    assert_error,
    call_main,
    quiet_dagster_home,
    run_cli,
    sqlite_url,
    use_settings,
    write_json,
)

ONE_TASK = [{"prompt": "A lighthouse at dawn", "model": "sora-2"}]


def _submits(simulator: SimulatorServer) -> int:
    stats = httpx.get(f"{simulator.base_url}/_sim/stats", timeout=5).json()
    return int(stats.get("submit_requests", 0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "value", "argv"),
    [
        ("GRSAI_MAX_CONCURRENCY", "abc", ["credits", "show", "alice"]),
        ("GRSAI_DATABASE_URL", "mysql://x", ["db", "init"]),
        ("GRSAI_PRICES", "not-json", ["batch", "create", "batch.json", "--user", "alice"]),
    ],
)
def test_an_invalid_setting_is_named_on_one_line_with_exit_2(
    name: str, value: str, argv: list[str], tmp_path: Path
) -> None:
    write_json(tmp_path / "batch.json", ONE_TASK)

    result = run_cli(argv, cwd=tmp_path, settings={name: value})

    assert_error(result, 2, name)
    assert result.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.json"]  # no database made


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"GRSAI_BASE_URL": "ftp://grsaiapi.com"}, "GRSAI_BASE_URL"),
        ({"MAX_TASK_RETRIES": "-1"}, "MAX_TASK_RETRIES"),
        ({"GRSAI_POLL_INTERVAL_S": "0"}, "GRSAI_POLL_INTERVAL_S"),
        ({"GRSAI_POLL_BUDGET_S": "soon"}, "GRSAI_POLL_BUDGET_S"),
        ({"GRSAI_MAX_CONCURRENCY": "0"}, "GRSAI_MAX_CONCURRENCY"),
        ({"GRSAI_PRICES": '{"sora-9": 5}'}, "GRSAI_PRICES"),
        ({"GRSAI_DATABASE_URL": "not a url"}, "GRSAI_DATABASE_URL"),
        ({"DAGSTER_PG_URL": "postgresql://u@h/db"}, "DAGSTER_PG_URL"),
        ({"APP_URL": "https://app.example.com"}, "GRSAI_WEBHOOK_SECRET"),
        ({"NEXT_PUBLIC_APP_URL": "not-a-url"}, "NEXT_PUBLIC_APP_URL"),
    ],
)
@pytest.mark.parametrize(
    "argv", [["db", "init"], ["credits", "grant", "alice", "5"], ["batch", "status", "b"]]
)
def test_every_command_names_the_invalid_setting_before_touching_the_database(
    settings: dict[str, str],
    named: str,
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, settings)

    result = call_main(argv, capsys)

    assert_error(result, 2, named)
    assert result.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_without_an_api_key_exits_2_naming_it_and_does_nothing(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, ONE_TASK)
    before = table_snapshot(engine)
    home = quiet_dagster_home(tmp_path / "dagster_home")
    settings = pipeline_settings(database_url, simulator.base_url) | {"DAGSTER_HOME": str(home)}
    del settings["GRSAI_API_KEY"]

    result = run_cli(
        ["run", batch_id, "--until-settled", "--timeout", "30"], cwd=tmp_path, settings=settings
    )

    assert_error(result, 2, "GRSAI_API_KEY")
    assert table_snapshot(engine) == before
    assert _submits(simulator) == 0
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]  # no run recorded


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_without_dagster_home_exits_2_naming_it_and_does_nothing(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, ONE_TASK)
    before = table_snapshot(engine)
    settings = pipeline_settings(database_url, simulator.base_url)

    result = run_cli(["run", batch_id], cwd=tmp_path, settings=settings)

    assert_error(result, 2, "DAGSTER_HOME")
    assert TEST_API_KEY not in result.out + result.err
    assert table_snapshot(engine) == before
    assert _submits(simulator) == 0


def test_run_checks_the_batch_id_before_anything_runs(
    database_url: str,
    engine: sa.Engine,
    simulator: SimulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    new_batch(engine, ONE_TASK)
    before = table_snapshot(engine)
    home = quiet_dagster_home(tmp_path / "dagster_home")
    use_settings(
        monkeypatch,
        pipeline_settings(database_url, simulator.base_url) | {"DAGSTER_HOME": str(home)},
    )

    unknown = call_main(["run", "no-such-batch"], capsys)
    bad_timeout = call_main(["run", "no-such-batch", "--timeout", "0"], capsys)
    not_a_number = call_main(["run", "no-such-batch", "--timeout", "soon"], capsys)

    assert_error(unknown, 2, "no-such-batch")
    assert_error(bad_timeout, 2, "--timeout")
    assert_error(not_a_number, 2, "--timeout")
    assert table_snapshot(engine) == before
    assert _submits(simulator) == 0
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_with_a_dagster_home_that_does_not_exist_is_an_invalid_setting(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, ONE_TASK)
    before = table_snapshot(engine)
    settings = pipeline_settings(database_url, simulator.base_url) | {
        "DAGSTER_HOME": str(tmp_path / "no-such-dir")
    }

    result = run_cli(["run", batch_id], cwd=tmp_path, settings=settings)

    assert table_snapshot(engine) == before
    assert_error(result, 2, "DAGSTER_HOME")


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_takes_dagster_home_from_a_dot_env_file(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, ONE_TASK)
    home = quiet_dagster_home(tmp_path / "dagster_home")
    (tmp_path / ".env").write_text(f"DAGSTER_HOME={home}\n")

    result = run_cli(
        ["run", batch_id, "--until-settled", "--timeout", "60"],
        cwd=tmp_path,
        settings=pipeline_settings(database_url, simulator.base_url),
    )

    assert result.code == 0, result
    assert (home / "history").is_dir()  # the run is in that instance


def test_settings_come_from_a_dot_env_file_but_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from_env = tmp_path / "env.db"
    (tmp_path / ".env").write_text(
        f'GRSAI_DATABASE_URL={sqlite_url(tmp_path / "dotenv.db")}\nGRSAI_PRICES={{"veo-pro": 9}}\n'
    )
    use_settings(
        monkeypatch,
        {"GRSAI_DATABASE_URL": sqlite_url(from_env), "GRSAI_PRICES": json.dumps({"veo-pro": 7})},
    )

    assert call_main(["db", "init"], capsys).code == 0
    assert call_main(["credits", "grant", "alice", "10"], capsys).code == 0
    write_json(tmp_path / "batch.json", [{"prompt": "p", "model": "veo-pro"}])
    created = call_main(["batch", "create", "batch.json", "--user", "alice"], capsys)
    shown = call_main(["credits", "show", "alice", "--json"], capsys)

    assert created.code == 0, created
    assert from_env.exists() and not (tmp_path / "dotenv.db").exists()
    assert json.loads(shown.out)["held"] == 7  # the price table of the environment
