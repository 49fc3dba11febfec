"""A failover of the application database (issue 26): a TCP proxy in front of PostgreSQL cuts
every connection and refuses new ones, for 10 s twice and once for 30 s, while a batch's run
(`grsai-pipeline run`, a real process) follows its tasks. The run rides it out and finishes
without a restart: nothing lost, nothing charged twice, every invariant holds, duplicate
submits at most what was in flight and each reported, and each outage said in the log."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline_tests.conftest import TEST_API_KEY, e2e_settings
from grsai_pipeline_tests.cutting_proxy import CuttingProxy
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.e2e.runner import start_runner
from grsai_pipeline_tests.e2e.test_crash_safety import actual_duplicates, reported_duplicates
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows

pytestmark = pytest.mark.slow

TASKS = 60
CUTS_S = (10.0, 10.0, 30.0)
BETWEEN_S = 6.0


def test_a_run_rides_out_three_failovers_of_the_application_database(
    database_url: str, tmp_path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a failover cuts a server's connections; SQLite is a file")
    engine = sa.create_engine(database_url)
    prompts = [f"failover {i}" for i in range(TASKS)]
    batch_id = new_batch(engine, [{"prompt": p, "model": "veo-flash"} for p in prompts])
    # Generations that outlast the three cuts (60 s of them, 12 s between), then end.
    config = SimulatorConfig(
        api_key=TEST_API_KEY, latency_s=(0.005, 0.02), generation_s=(70, 85),
        mix={"succeeded": 1.0}, seed=26,
    )  # fmt: skip
    url = sa.engine.make_url(database_url)
    with (
        SimulatorServer(config) as simulator,
        CuttingProxy(url.host or "", url.port or 5432) as proxy,
    ):
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = e2e_settings(proxied, simulator.base_url, tmp_path) | {
            "GRSAI_POLL_INTERVAL_S": "1",
            "GRSAI_POLL_BUDGET_S": "600",
            "GRSAI_HTTP_TIMEOUT_S": "5",
        }
        log = tmp_path / "run.log"
        runner = start_runner(batch_id, env, log, "--timeout", "300")
        wait_for(
            lambda: simulator.simulator.stats().get("submits_accepted", 0) >= TASKS // 2,
            60, "half the batch at the API", log,
        )  # fmt: skip
        for seconds in CUTS_S:
            proxy.cut(seconds)
            time.sleep(seconds + BETWEEN_S)
            assert runner.poll() is None, log.read_text(errors="replace")[-3000:]
        code = runner.wait(timeout=240)
        output = log.read_text(errors="replace")
        assert code == 0, output[-4000:]

    statuses = rows(engine, "SELECT status FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert [r["status"] for r in statuses] == ["succeeded"] * TASKS
    batch = rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id)[0]
    assert batch["status"] == "settled"
    kinds = ledger_kinds(engine, batch_id)
    assert kinds == {"reserve": TASKS, "charge": TASKS}, kinds
    assert_ledger_invariants(engine)
    # SPEC 7: a duplicate submit only for what was in flight at a cut, each one reported.
    assert actual_duplicates(simulator, prompts) <= reported_duplicates(engine, batch_id)
    # Each outage said once as it started and once as it ended, by the engine.
    assert output.count("the application database is unreachable") >= len(CUTS_S), output[-4000:]
    assert output.count("the application database is back after") >= len(CUTS_S), output[-4000:]
    engine.dispose()
