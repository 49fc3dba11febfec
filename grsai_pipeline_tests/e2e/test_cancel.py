"""``batch cancel`` on a batch a real `grsai-pipeline run` is working on (SPEC 1): tasks not yet
sent fail at once and are refunded in one transaction, tasks at the API finish and settle as
usual, and nothing of the batch reaches the API after the cancel (the simulator's own log)."""

from __future__ import annotations

import time

import pytest

from grsai_pipeline.cli import main
from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.e2e.runner import start_runner
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows

pytestmark = pytest.mark.slow

CONCURRENCY = 2
TASKS = 40


def test_cancel_a_running_batch_refunds_the_unsent_and_lets_the_sent_finish(
    database_url, engine, simulator: SimulatorServer, tmp_path, monkeypatch, capsys
) -> None:
    env = e2e_settings(database_url, simulator.base_url, tmp_path) | {
        "GRSAI_MAX_CONCURRENCY": str(CONCURRENCY),
        "GRSAI_POLL_INTERVAL_S": "0.2",
    }
    prompts = [f"cancel me {i}" for i in range(TASKS)]
    batch_id = new_batch(engine, [{"prompt": p, "model": "sora-2"} for p in prompts])
    # A slow API (0.2 s a request, two at a time: ten seconds to send them all), so that the
    # batch is half-way when the cancel comes.
    simulator.simulator.state.config.latency_s = (0.2, 0.25)
    simulator.simulator.state.config.generation_s = (1.0, 1.5)
    log = tmp_path / "runner.log"
    runner = start_runner(batch_id, env, log)
    wait_for(lambda: len(simulator.simulator.submit_times()) >= 4, 60, "a few submits", log)

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", "cancel", batch_id])
    cancelled_at = time.time()
    assert exit_info.value.code == 0
    said = capsys.readouterr().out
    assert f"batch {batch_id} cancelled:" in said

    assert runner.wait(timeout=120) == 0, log.read_text(errors="replace")[-3000:]
    tasks = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    cancelled = [t for t in tasks if (t["error_message"] or "").startswith("CANCELLED:")]
    finished = [t for t in tasks if t["status"] == "succeeded"]
    assert cancelled and finished, "the cancel came half-way"
    assert len(cancelled) + len(finished) == TASKS
    sent = simulator.simulator.submit_times()
    # Not one cancelled task reached the API; whatever arrived after the cancel returned was
    # on the wire already (a claim of the live runner): at most one per concurrency slot.
    assert not {t["prompt"] for t in cancelled} & set(sent)
    late = [p for p, times in sent.items() if max(times) > cancelled_at]
    assert len(late) <= CONCURRENCY, late
    assert sorted(len(times) for times in sent.values()) == [1] * len(finished)
    # The unsent were refunded at once, in one journal transaction; the rest settled.
    refunds = rows(
        engine,
        "SELECT DISTINCT transaction_id FROM credit_ledger WHERE batch_job_id = :b"
        " AND kind = 'refund'",
        b=batch_id,
    )
    assert len(refunds) == 1
    batch = rows(engine, "SELECT * FROM batch_jobs WHERE id = :b", b=batch_id)[0]
    assert batch["status"] == "settled" and batch["cancelled_at"] is not None
    assert batch["charged_credits"] == sum(t["price"] for t in finished)
    assert batch["refunded_credits"] == sum(t["price"] for t in cancelled)
    assert_ledger_invariants(engine)

    # A second run (a backfill, the schedule) submits nothing of a cancelled batch.
    before = simulator.simulator.stats()["submit_requests"]
    with pytest.raises(SystemExit):
        main(["batch", "cancel", batch_id])
    assert "nothing to cancel" in capsys.readouterr().out
    runner = start_runner(batch_id, env, log)
    assert runner.wait(timeout=120) == 0
    assert simulator.simulator.stats()["submit_requests"] == before
