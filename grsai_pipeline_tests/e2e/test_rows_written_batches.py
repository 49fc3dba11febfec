"""Batches a web app writes as rows (SPEC 1, issue 21), through the doors users use: the rows
written with plain SQL, `grsai-pipeline run` and Dagster's own `dagster job execute` as real
processes, the simulator over loopback HTTP. Every task sent is paid for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.e2e.runner import SCRIPT, run_to_the_end, start_runner
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    rows,
    write_rows_batch,
)

pytestmark = pytest.mark.slow

# As the seed's web app writes them: sora-2, no duration (10 s by default), no price.
TASKS = [{"prompt": f"a kite over the dunes, take {i}", "model": "sora-2"} for i in range(3)]


@pytest.fixture
def env(database_url: str, simulator: SimulatorServer, tmp_path: Path) -> dict[str, str]:
    return e2e_settings(database_url, simulator.base_url, tmp_path)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def balance(engine, user: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    (account,) = rows(
        engine, "SELECT balance, held FROM credit_accounts WHERE user_id = :u", u=user
    )
    return account["balance"], account["held"]


def test_a_batch_written_as_rows_is_reserved_charged_and_verified(
    env, engine, simulator, tmp_path
) -> None:
    assert cli(env, "credits", "grant", "erin", "100").returncode == 0
    batch_id = write_rows_batch(engine, "erin", TASKS)

    run_to_the_end(batch_id, env, tmp_path / "run.log")

    tasks = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert {(t["status"], t["price"]) for t in tasks} == {("succeeded", 10)}
    reserves = rows(
        engine,
        "SELECT reservation, transaction_id FROM credit_ledger"
        " WHERE batch_job_id = :b AND kind = 'reserve'",
        b=batch_id,
    )
    assert [r["reservation"] for r in reserves] == [1, 1, 1]
    assert len({r["transaction_id"] for r in reserves}) == 1
    assert ledger_kinds(engine, batch_id) == {"reserve": 3, "charge": 3}
    (batch,) = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)
    assert (batch["status"], batch["reserved_credits"], batch["charged_credits"]) == (
        "settled",
        30,
        30,
    )
    assert balance(engine, "erin") == (70, 0)
    verified = cli(env, "db", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_ledger_invariants(engine)


def test_a_batch_the_balance_cannot_cover_sends_nothing_and_writes_no_ledger_entry(
    env, engine, simulator, tmp_path
) -> None:
    assert cli(env, "credits", "grant", "frank", "25").returncode == 0
    batch_id = write_rows_batch(engine, "frank", TASKS)

    run_to_the_end(batch_id, env, tmp_path / "run.log")

    assert simulator.simulator.stats().get("submit_requests", 0) == 0
    assert simulator.simulator.stats()["submits_by_prompt"] == {}
    tasks = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert {t["status"] for t in tasks} == {"failed"}
    assert all(t["error_message"].startswith("INSUFFICIENT_CREDITS:") for t in tasks), tasks
    assert ledger_kinds(engine, batch_id) == {}
    (batch,) = rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id)
    assert batch["status"] == "settled"
    assert balance(engine, "frank") == (25, 0)
    assert cli(env, "db", "verify").returncode == 0


def test_three_overlapping_runs_reserve_each_task_of_a_row_batch_once(
    env, engine, simulator, tmp_path
) -> None:
    import httpx

    # Videos take a few seconds: the three runs are all up while the batch is still open.
    httpx.post(
        f"{simulator.base_url}/_sim/config", json={"generation_s": [4.0, 5.0]}
    ).raise_for_status()
    assert cli(env, "credits", "grant", "gina", "1000").returncode == 0
    tasks = [{"prompt": f"overlapping rows {i}", "model": "sora-2"} for i in range(12)]
    batch_id = write_rows_batch(engine, "gina", tasks)
    # The instance's tables exist before three processes use it (Dagster migrates on first use);
    # the sensor adds the batch's partition before its run, as here.
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        instance.add_dynamic_partitions("batches", [batch_id])
    repoll_config = tmp_path / "repoll.yaml"
    repoll_config.write_text(
        json.dumps({"ops": {"repoll_open_batches_op": {"config": {"budget_s": 20}}}})
    )
    dagster = Path(sys.executable).with_name("dagster")
    location = ["-m", "grsai_pipeline.definitions"]
    partition = json.dumps({"dagster/partition": batch_id})
    logs = [tmp_path / f"{name}.log" for name in ("sensor-run", "cli-run", "repoll-run")]

    def dagster_job(log: Path, *args: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [str(dagster), "job", "execute", *location, *args],
                env=env,
                cwd=tmp_path,  # the default GRSAI_ARCHIVE_URL, ./videos, lands here
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    runs = [
        # The run new_batches_sensor launches: batch_pipeline for the batch's partition.
        dagster_job(logs[0], "-j", "batch_pipeline", "--tags", partition),
        start_runner(batch_id, env, logs[1]),
        dagster_job(logs[2], "-j", "repoll_open_batches", "-c", str(repoll_config)),
    ]
    codes = [run.wait(timeout=180) for run in runs]

    assert codes == [0, 0, 0], [log.read_text(errors="replace")[-2000:] for log in logs]
    reserves = rows(
        engine,
        "SELECT video_task_id FROM credit_ledger WHERE batch_job_id = :b AND kind = 'reserve'",
        b=batch_id,
    )
    assert len(reserves) == 12 and len({r["video_task_id"] for r in reserves}) == 12
    sent = simulator.simulator.stats()["submits_by_prompt"]
    assert sorted(sent[t["prompt"]] for t in tasks) == [1] * 12, "each task submitted once"
    assert ledger_kinds(engine, batch_id) == {"reserve": 12, "charge": 12}
    assert balance(engine, "gina") == (880, 0)
    assert_ledger_invariants(engine)
