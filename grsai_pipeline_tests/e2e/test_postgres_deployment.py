"""Production shape: the application database and the Dagster instance (the root
``dagster.yaml``: dagster-postgres storage, queued runs, pools, run monitoring) on PostgreSQL.
Under ``dagster-daemon``, a new batch is picked up by the sensor, queued, launched and settled.

Both live in one PostgreSQL database here, which also proves that our migrations and Dagster's
keep out of each other's way (Dagster owns ``alembic_version``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from grsai_pipeline_tests.conftest import REPO_ROOT
from grsai_pipeline_tests.e2e.conftest import WORKSPACE, dagster_process, wait_for
from grsai_pipeline_tests.e2e.runner import cli
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, rows

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_daemon_on_postgres_picks_up_and_settles_a_batch(
    pipeline_env, database_url, engine, simulator, tmp_path, monkeypatch
) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", database_url)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    daemon = shutil.which("dagster-daemon", path=str(Path(sys.executable).parent))
    assert daemon
    log = tmp_path / "daemon.log"

    with dagster_process([daemon, "run", "-w", str(WORKSPACE)], env, tmp_path, log):
        cli("credits", "grant", "pat", "500", env=env)
        batch_file = tmp_path / "batch.json"
        batch_file.write_text(
            json.dumps(
                [
                    {"prompt": "a bridge in fog", "model": "sora-2", "duration": 15},
                    {"prompt": "neon rain [sim:output_moderation]", "model": "veo-pro"},
                ]
            )
        )
        batch_id = cli("batch", "create", str(batch_file), "--user", "pat", env=env).strip()

        def settled() -> bool:
            found = rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id)
            return found[0]["status"] == "settled"

        wait_for(settled, 180, "the batch to settle under the daemon", log)
        # The batch settles inside the run's last step; let the run finish before the daemon
        # (and the run worker it launched) is stopped.
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:

            def finished() -> list[dg.RunRecord]:
                found = instance.get_run_records(dg.RunsFilter(tags={"batch_id": batch_id}))
                return [r for r in found if r.dagster_run.is_finished]

            wait_for(finished, 60, "the sensor's run to finish", log)

    assert ledger_kinds(engine, batch_id) == {"reserve": 2, "charge": 1, "refund": 1}
    assert_ledger_invariants(engine)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_run_records(filters=dg.RunsFilter(tags={"batch_id": batch_id}))
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        assert runs[0].dagster_run.tags["grsai/trigger"] == "sensor"
    tables = {r["table_name"] for r in rows(
        engine, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )}  # fmt: skip
    assert {"runs", "event_logs", "alembic_version"} <= tables  # Dagster's
    assert {"video_tasks", "credit_ledger", "grsai_schema_version"} <= tables  # ours
