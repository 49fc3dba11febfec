"""``run BATCH_ID [--until-settled] [--timeout SECONDS]`` (SPEC 3, 4 and 6): the batch's partition
materialized through Dagster in the command's process, against the instance in DAGSTER_HOME,
talking to the simulator over loopback HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    rows,
    table_snapshot,
)
from grsai_pipeline_tests.test_cli.cli_helpers import (
    CliResult,
    assert_error,
    quiet_dagster_home,
    run_cli,
)

WRONG_KEY = "sk-wrong-Hx4Tz7Qp2W"
MIXED_TASKS: list[dict[str, Any]] = [
    {"prompt": "A paper boat on a rainy street", "model": "sora-2", "duration": 15},
    {"prompt": "A hummingbird in slow motion", "model": "veo-flash"},
    {"prompt": "A watch turning on a pedestal", "model": "veo-pro", "aspect_ratio": "9:16"},
    {"prompt": "A storm over the sea [sim:input_moderation]", "model": "sora-2"},
    {"prompt": "A crowded night market [sim:output_moderation]", "model": "veo-flash"},
    {"prompt": "A twelve second clip", "model": "sora-2", "duration": 12},
]


def _stats(simulator: SimulatorServer) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{simulator.base_url}/_sim/stats", timeout=5).json()
    return stats


def _tasks(engine: sa.Engine, batch_id: str) -> list[dict[str, Any]]:
    return rows(
        engine,
        "SELECT id, batch_index, status, video_url, error_message, price, grsai_task_id"
        " FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )


def _ledger_tasks(engine: sa.Engine, batch_id: str, kind: str) -> list[str]:
    entries = rows(
        engine,
        "SELECT video_task_id FROM credit_ledger WHERE batch_job_id = :b AND kind = :k",
        b=batch_id,
        k=kind,
    )
    return sorted(e["video_task_id"] for e in entries)


def _run(
    batch_id: str, settings: dict[str, str], cwd: Path, *flags: str, timeout: str = "60"
) -> CliResult:
    return run_cli(["run", batch_id, *flags, "--timeout", timeout], cwd=cwd, settings=settings)


@pytest.mark.slow
def test_run_until_settled_charges_successes_refunds_failures_and_shows_in_dagster(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, MIXED_TASKS, credits=1_000)
    home = tmp_path / "dagster_home"
    home.mkdir()
    settings = pipeline_settings(database_url, simulator.base_url) | {"DAGSTER_HOME": str(home)}

    result = _run(batch_id, settings, tmp_path, "--until-settled")

    assert result.code == 0, result
    summary = result.out_lines[-1]
    assert batch_id in summary and "settled" in summary, result
    assert TEST_API_KEY not in result.out + result.err

    batch = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)[0]
    assert batch["status"] == "settled"
    assert batch["settled_at"] is not None
    tasks = _tasks(engine, batch_id)
    assert [t["status"] for t in tasks] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "failed",
        "failed",
        "failed",
    ]
    succeeded = [t for t in tasks if t["status"] == "succeeded"]
    moderated = tasks[3:5]
    invalid = tasks[5]
    assert all(t["video_url"].startswith("http") for t in succeeded)
    assert "input_moderation" in moderated[0]["error_message"]
    assert "output_moderation" in moderated[1]["error_message"]
    assert invalid["error_message"].startswith("INVALID_INPUT:")
    assert invalid["grsai_task_id"] is None  # never sent
    # One charge per success, one refund per failed reservation, nothing for the invalid task.
    assert _ledger_tasks(engine, batch_id, "charge") == sorted(t["id"] for t in succeeded)
    assert _ledger_tasks(engine, batch_id, "refund") == sorted(t["id"] for t in moderated)
    assert ledger_kinds(engine, batch_id) == {"reserve": 5, "charge": 3, "refund": 2}
    assert batch["charged_credits"] == sum(t["price"] for t in succeeded)
    assert batch["refunded_credits"] == sum(t["price"] for t in moderated)
    assert rows(engine, "SELECT balance, held FROM credit_accounts") == [
        {"balance": 1_000 - batch["charged_credits"], "held": 0}
    ]
    assert_ledger_invariants(engine)
    assert _stats(simulator)["submits_accepted"] == 5

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        records = instance.get_run_records(
            dg.RunsFilter(job_name="batch_pipeline", tags={"dagster/partition": batch_id})
        )
        assert records, "no batch_pipeline run of the batch's partition in DAGSTER_HOME"
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
        assert instance.has_dynamic_partition("batches", batch_id)
        assert batch_id in instance.get_materialized_partitions(dg.AssetKey("settled_ledger"))
    finally:
        instance.dispose()

    # Again: nothing is left to retry, so nothing is written and nothing is submitted.
    before = table_snapshot(engine)
    submits = _stats(simulator)["submit_requests"]

    again = _run(batch_id, settings, tmp_path, "--until-settled")

    assert again.code == 0, again
    assert batch_id in again.out_lines[-1] and "settled" in again.out_lines[-1]
    assert table_snapshot(engine) == before
    assert _stats(simulator)["submit_requests"] == submits


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_that_does_not_settle_in_time_exits_1_and_keeps_the_reservation(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    tasks = [
        {"prompt": "The API forgets this one [sim:lost]", "model": "sora-2"},
        {"prompt": "A quiet lake", "model": "sora-2"},
    ]
    batch_id = new_batch(engine, tasks, credits=100)
    settings = pipeline_settings(database_url, simulator.base_url) | {
        "DAGSTER_HOME": str(quiet_dagster_home(tmp_path / "dagster_home")),
        "GRSAI_NOT_FOUND_GRACE_S": "600",
    }

    result = _run(batch_id, settings, tmp_path, "--until-settled", timeout="3")

    assert_error(result, 1, batch_id, "not settled")
    batch = rows(engine, "SELECT status, settled_at FROM batch_jobs")[0]
    assert batch["status"] != "settled" and batch["settled_at"] is None
    lost, quiet = _tasks(engine, batch_id)
    assert lost["status"] == "processing"
    assert quiet["status"] == "succeeded"
    assert _ledger_tasks(engine, batch_id, "refund") == []
    assert _ledger_tasks(engine, batch_id, "charge") in ([], [quiet["id"]])
    assert rows(engine, "SELECT held FROM credit_accounts")[0]["held"] >= lost["price"]
    assert_ledger_invariants(engine)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_rejected_api_key_stops_the_run_and_a_fixed_key_continues_it(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, MIXED_TASKS[:2], credits=100)
    before = table_snapshot(engine)
    settings = pipeline_settings(database_url, simulator.base_url) | {
        "DAGSTER_HOME": str(quiet_dagster_home(tmp_path / "dagster_home")),
    }

    rejected = _run(batch_id, settings | {"GRSAI_API_KEY": WRONG_KEY}, tmp_path, "--until-settled")

    assert rejected.code == 1, rejected
    last = rejected.err_lines[-1]
    assert last.startswith("grsai-pipeline: error: ") and "401" in last, rejected
    assert "GRSAI_API_KEY" in last
    assert WRONG_KEY not in rejected.out + rejected.err
    assert [t["status"] for t in _tasks(engine, batch_id)] == ["pending", "pending"]
    assert table_snapshot(engine)["credit_ledger"] == before["credit_ledger"]

    fixed = _run(batch_id, settings, tmp_path, "--until-settled")

    assert fixed.code == 0, fixed
    assert [t["status"] for t in _tasks(engine, batch_id)] == ["succeeded", "succeeded"]
    assert ledger_kinds(engine, batch_id) == {"reserve": 2, "charge": 2}
    assert_ledger_invariants(engine)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_rejected_api_key_is_one_line_on_stderr(
    database_url: str, engine: sa.Engine, simulator: SimulatorServer, tmp_path: Path
) -> None:
    batch_id = new_batch(engine, MIXED_TASKS[:1], credits=100)
    settings = pipeline_settings(database_url, simulator.base_url) | {
        "DAGSTER_HOME": str(quiet_dagster_home(tmp_path / "dagster_home")),
        "GRSAI_API_KEY": WRONG_KEY,
    }

    result = _run(batch_id, settings, tmp_path)

    assert_error(result, 1, "401", "GRSAI_API_KEY")
