"""Under `dagster dev` with an empty DAGSTER_HOME, a batch made with the command line is picked
up by the sensor and settles, with no manual launch, and so does a batch a web app writes as rows
(on PostgreSQL, by examples/webapp in Node.js); a backfill of the first batch's partition from
Dagster then retries its retryable failure with a new reservation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from grsai_pipeline_tests.e2e.conftest import WORKSPACE, dagster_process, free_port, wait_for
from grsai_pipeline_tests.e2e.runner import cli
from grsai_pipeline_tests.e2e.webapp import write_batch_with_the_example
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    rows,
    write_rows_batch,
)

pytestmark = pytest.mark.slow


FLAKY = "a kite over dunes [sim:error,error,error,succeeded]"


def test_sensor_picks_up_a_new_batch_it_settles_and_a_backfill_retries_it(
    pipeline_env, engine, simulator, tmp_path
) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent))
    assert dagster
    log = tmp_path / "dagster-dev.log"
    args = [dagster, "dev", "-w", str(WORKSPACE), "-p", str(free_port()), "-h", "127.0.0.1"]

    with dagster_process(args, env, tmp_path, log):
        cli("credits", "grant", "carol", "1000", env=env)
        batch_file = tmp_path / "batch.json"
        batch_file.write_text(
            json.dumps(
                [
                    {"prompt": "a lighthouse at dawn", "model": "sora-2"},
                    {"prompt": "a red kite [sim:input_moderation]", "model": "veo-flash"},
                    {"prompt": "waves", "model": "veo-pro"},
                    {"prompt": FLAKY, "model": "sora-2"},
                ]
            )
        )
        batch_id = cli("batch", "create", str(batch_file), "--user", "carol", env=env).strip()

        def batch_settled(some_batch: str) -> bool:
            found = rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=some_batch)
            return bool(found) and found[0]["status"] == "settled"

        def settled() -> bool:
            return batch_settled(batch_id)

        wait_for(settled, 150, "the batch to settle under dagster dev", log)
        assert ledger_kinds(engine, batch_id) == {"reserve": 4, "charge": 2, "refund": 2}
        assert_ledger_invariants(engine)

        # A batch a web app writes as rows (on PostgreSQL: examples/webapp, Node.js and pg):
        # the sensor picks it up, it is reserved, settles and is charged, nobody launches it.
        prompts = ["rows at dawn", "rows at dusk"]
        # Written 3 s before the schedule's tick (every minute, on the minute), so the
        # re-polling run may well submit and settle it before the sensor sees it (SPEC 4).
        time.sleep((57 - time.time() % 60) % 60)
        if engine.dialect.name == "postgresql":
            rows_batch, final, done = write_batch_with_the_example(
                engine.url.render_as_string(hide_password=False), "carol", prompts, wait_s=150
            )
            assert done.returncode == 0, done.stdout + done.stderr + log.read_text()[-3000:]
            assert final is not None and final["status"] == "settled"
            assert (final["reserved_credits"], final["charged_credits"]) == (20, 20)
            assert [t["status"] for t in final["tasks"]] == ["succeeded", "succeeded"]
            assert all(t["video_url"] for t in final["tasks"]), final
        else:
            tasks = [{"prompt": p, "model": "sora-2"} for p in prompts]
            rows_batch = write_rows_batch(engine, "carol", tasks)
            wait_for(lambda: batch_settled(rows_batch), 150, "the rows batch to settle", log)
        assert ledger_kinds(engine, rows_batch) == {"reserve": 2, "charge": 2}
        assert_ledger_invariants(engine)

        def rows_batch_run() -> bool:
            # Another engine may settle the batch before the sensor's next tick (every 5 s):
            # the sensor still gives it its one run.
            with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as seen:
                found = seen.get_run_records(dg.RunsFilter(tags={"batch_id": rows_batch}))
                return bool(found) and all(r.dagster_run.is_finished for r in found)

        wait_for(rows_batch_run, 90, "the sensor's run of the batch written as rows", log)

        backfill = [dagster, "job", "backfill", "-w", str(WORKSPACE), "-j", "batch_pipeline",
                    "--partitions", batch_id, "--noprompt"]  # fmt: skip
        launched = subprocess.run(backfill, env=env, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
        assert launched.returncode == 0, launched.stdout + launched.stderr

        def retried() -> bool:
            return ledger_kinds(engine, batch_id).get("charge") == 3 and settled()

        wait_for(retried, 150, "the backfill to retry the failed task", log)

    # Reservation 2 of the flaky task was charged; moderation stayed refunded once.
    assert ledger_kinds(engine, batch_id) == {"reserve": 5, "charge": 3, "refund": 2}
    assert_ledger_invariants(engine)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        # The daemon's run and the backfill's alike carry the batch and its user.
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"batch_id": batch_id}))
        assert [r.dagster_run.tags["grsai/trigger"] for r in runs] == ["backfill", "sensor"]
        assert {r.dagster_run.tags["user_id"] for r in runs} == {"carol"}
        assert {r.dagster_run.job_name for r in runs} == {"batch_pipeline"}
        backfills = instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/partition": batch_id})
        )
        assert any("dagster/backfill" in r.dagster_run.tags for r in backfills)
        assert batch_id in instance.get_dynamic_partitions("batches")
        # The batch written as rows has exactly one run, the sensor's, whoever settled it.
        (own,) = instance.get_run_records(filters=dg.RunsFilter(tags={"batch_id": rows_batch}))
        assert own.dagster_run.tags["grsai/trigger"] == "sensor"
        assert own.dagster_run.tags["user_id"] == "carol"
        assert own.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert ledger_kinds(engine, rows_batch) == {"reserve": 2, "charge": 2}
