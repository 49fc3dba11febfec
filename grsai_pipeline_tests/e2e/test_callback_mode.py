"""Callback mode end to end (SPEC 3, 5): with ``APP_URL`` set, submits carry signed callback
URLs, the simulator calls them back, and the receiver alone brings every task to its end; a run
settles the batch without a single poll."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.dev.server import BackgroundServer
from grsai_pipeline.dev.simulator import SimulatorConfig, SimulatorServer
from grsai_pipeline.webhook.app import create_app
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows
from grsai_pipeline_tests.test_defs.dagster_helpers import run_batch
from grsai_pipeline_tests.test_store.store_support import batch_row, tasks_of

SECRET = "e2e-callback-secret"
TASKS = [
    *({"prompt": f"Sora {n}", "model": "sora-2"} for n in range(4)),
    *({"prompt": f"Veo {n}", "model": m} for n, m in enumerate(["veo-flash", "veo-pro"])),
    {"prompt": "flagged [sim:input_moderation]", "model": "sora-2"},
    {"prompt": "nothing came out [sim:no_url]", "model": "veo-flash"},
    {"prompt": "bad video [sim:output_moderation]", "model": "veo-pro"},
]


def all_final(engine: sa.Engine, batch_id: str) -> bool:
    return all(t["status"] in ("succeeded", "failed") for t in tasks_of(engine, batch_id))


@pytest.mark.slow
def test_callbacks_alone_finish_a_batch_which_then_settles(
    monkeypatch: pytest.MonkeyPatch, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    config = SimulatorConfig(
        api_key=TEST_API_KEY, latency_s=(0.001, 0.005), generation_s=(0.3, 0.8),
        mix={"succeeded": 1.0}, seed=7,
    )  # fmt: skip
    receiver_app = create_app(engine, SECRET, load_settings().retry_policy)
    with SimulatorServer(config) as sim, BackgroundServer(receiver_app) as receiver:
        env = pipeline_settings(database_url, sim.base_url) | {
            "APP_URL": receiver.base_url,
            "GRSAI_WEBHOOK_SECRET": SECRET,
            # No task is due for a poll within the test: only callbacks can finish them.
            "GRSAI_POLL_INTERVAL_S": "3600",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        batch_id = new_batch(engine, TASKS)
        with dg.instance_for_test() as instance:
            assert run_batch(instance, batch_id, budget_s=0).success
            wait_for(lambda: all_final(engine, batch_id), 30, "callbacks to finish every task")
            assert run_batch(instance, batch_id, budget_s=0).success
        stats = sim.simulator.stats()

    assert stats.get("poll_requests", 0) == 0
    assert stats["callbacks_sent"] >= len(TASKS)
    refused = {k: v for k, v in stats.items() if k.startswith("callbacks_refused")}
    assert set(refused) <= {"callbacks_refused_409"}, refused  # 409: before the id was recorded
    statuses = {t["prompt"]: (t["status"], t["error_message"]) for t in tasks_of(engine, batch_id)}
    succeeded = [prompt for prompt, (status, _) in statuses.items() if status == "succeeded"]
    assert succeeded == [t["prompt"] for t in TASKS[:6]]
    assert statuses["flagged [sim:input_moderation]"][1].startswith("input_moderation")
    assert statuses["nothing came out [sim:no_url]"][1] == "SUCCEEDED_WITHOUT_VIDEO_URL"
    assert statuses["bad video [sim:output_moderation]"][1].startswith("output_moderation")
    assert batch_row(engine, batch_id)["status"] == "settled"
    assert ledger_kinds(engine, batch_id) == {"reserve": 9, "charge": 6, "refund": 3}
    assert rows(engine, "SELECT COUNT(*) AS n FROM video_tasks WHERE video_url IS NULL"
                " AND status = 'succeeded'") == [{"n": 0}]  # fmt: skip
    assert_ledger_invariants(engine)
