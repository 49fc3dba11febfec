"""Crash safety (SPEC 7): killing a runner at any moment loses no task, never charges or refunds
twice, and duplicates at most the submits that were in flight, each counted and reported.

Runners are real `grsai-pipeline run` processes killed with SIGKILL; the simulator lives in the
test process, so it remembers every submit across the kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from grsai_pipeline.cli import main
from grsai_pipeline.dev.simulator import FaultRule, SimulatorServer
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.e2e.runner import run_to_the_end, start_runner
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows

pytestmark = pytest.mark.slow


@pytest.fixture
def crash_env(database_url, simulator: SimulatorServer, tmp_path) -> dict[str, str]:
    """Settings for runner processes: short leases, so a dead runner's claims expire fast."""
    return e2e_settings(database_url, simulator.base_url, tmp_path) | {
        "GRSAI_CLAIM_LEASE_S": "1",
        "GRSAI_POLL_INTERVAL_S": "0.2",
        "GRSAI_HTTP_TIMEOUT_S": "5",
    }


def in_flight(engine, batch_id: str) -> int:
    """Tasks claimed by a runner that has not recorded their submit: in doubt after a kill."""
    return rows(
        engine,
        "SELECT COUNT(*) AS n FROM video_tasks WHERE batch_job_id = :b"
        " AND status IN ('pending', 'queued') AND claimed_by IS NOT NULL",
        b=batch_id,
    )[0]["n"]


def reported_duplicates(engine, batch_id: str) -> int:
    return rows(
        engine,
        "SELECT COALESCE(SUM(possible_duplicates), 0) AS n FROM video_tasks"
        " WHERE batch_job_id = :b",
        b=batch_id,
    )[0]["n"]


def api_requests(simulator: SimulatorServer) -> int:
    stats = simulator.simulator.stats()
    return int(stats.get("submit_requests", 0) + stats.get("poll_requests", 0))


def actual_duplicates(simulator: SimulatorServer, prompts: list[str]) -> int:
    sent = simulator.simulator.stats()["submits_by_prompt"]
    return sum(max(0, sent.get(p, 0) - 1) for p in prompts)


def test_a_kill_between_accepted_upstream_and_id_recorded(
    crash_env, engine, simulator, tmp_path, monkeypatch, capsys
) -> None:
    prompt = "a lantern in the snow"
    batch_id = new_batch(engine, [{"prompt": prompt, "model": "sora-2"}])
    # The API accepts the submit at once but holds its answer back: the runner is waiting.
    simulator.simulator.add_fault(FaultRule(endpoint="submit", delay_s=30, times=1))
    log = tmp_path / "runner.log"
    runner = start_runner(batch_id, crash_env, log)

    wait_for(lambda: simulator.simulator.stats().get("submits_accepted") == 1, 30,
             "the API to accept the submit", log)  # fmt: skip
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)

    task = rows(engine, "SELECT * FROM video_tasks")[0]
    assert task["status"] == "pending" and task["grsai_task_id"] is None
    assert task["claimed_by"] is not None  # the dead runner's claim: the submit is in doubt
    time.sleep(1.2)  # past GRSAI_CLAIM_LEASE_S
    run_to_the_end(batch_id, crash_env, log)

    task = rows(engine, "SELECT * FROM video_tasks")[0]
    assert task["status"] == "succeeded" and task["possible_duplicates"] == 1
    assert simulator.simulator.stats()["submits_by_prompt"][prompt] == 2
    assert ledger_kinds(engine, batch_id) == {"reserve": 1, "charge": 1}
    assert_ledger_invariants(engine)
    for name, value in crash_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        main(["batch", "status", batch_id, "--json"])
    status = json.loads(capsys.readouterr().out)
    assert status["possible_duplicates"] == 1
    assert status["tasks"][0]["possible_duplicates"] == 1


def test_three_overlapping_runs_submit_each_task_once_and_settle_once(
    crash_env, engine, simulator, tmp_path
) -> None:
    prompts = [f"overlap {i}" for i in range(30)]
    tasks = [{"prompt": p, "model": "veo-flash"} for p in prompts[:28]]
    tasks += [{"prompt": prompts[28] + " [sim:input_moderation]", "model": "sora-2"}]
    tasks += [{"prompt": "", "model": "sora-2"}]
    batch_id = new_batch(engine, tasks)
    logs = [tmp_path / f"runner-{i}.log" for i in range(3)]
    # Dagster creates a new SQLite instance's tables on first use, and three processes doing
    # that at once trip over its migrations: the instance exists before the runs overlap.
    dg.DagsterInstance.from_ref(InstanceRef.from_dir(crash_env["DAGSTER_HOME"])).dispose()

    runners = [start_runner(batch_id, crash_env, log) for log in logs]
    codes = [runner.wait(timeout=120) for runner in runners]

    assert codes == [0, 0, 0], [log.read_text(errors="replace")[-2000:] for log in logs]
    sent = simulator.simulator.stats()["submits_by_prompt"]
    assert sorted(sent.values()) == [1] * 29, "every valid task submitted exactly once"
    assert ledger_kinds(engine, batch_id) == {"reserve": 29, "charge": 28, "refund": 1}
    batch = rows(engine, "SELECT * FROM batch_jobs")[0]
    assert batch["status"] == "settled"
    assert reported_duplicates(engine, batch_id) == 0
    assert_ledger_invariants(engine)


CHAOS_TASKS = 200
KILLS = 6


def test_chaos_kills_lose_nothing_and_duplicate_only_what_was_in_flight(
    crash_env, engine, simulator, tmp_path, record_property
) -> None:
    import httpx

    # Slow answers and few slots: the submit phase lasts ~15 s, so most kills land in it.
    httpx.post(
        f"{simulator.base_url}/_sim/config",
        json={"latency_s": [0.2, 0.4], "generation_s": [0.5, 2.0]},
    ).raise_for_status()
    env = crash_env | {"GRSAI_MAX_CONCURRENCY": "4"}
    rng = random.Random(20261122)
    prompts = [f"chaos {i}" for i in range(CHAOS_TASKS)]
    models = ["sora-2", "veo-flash", "veo-pro"]
    batch_id = new_batch(
        engine, [{"prompt": p, "model": models[i % 3]} for i, p in enumerate(prompts)]
    )
    log = tmp_path / "chaos.log"
    doubtful = 0  # tasks in flight at the kills

    for kill in range(KILLS):
        seen = api_requests(simulator)
        runner = start_runner(batch_id, env, log)
        wait_for(
            lambda: api_requests(simulator) > seen or runner.poll() is not None,  # noqa: B023
            60,
            f"runner {kill} to start talking to the API",
            log,
        )
        time.sleep(rng.uniform(0.2, 2.0))
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        doubtful += in_flight(engine, batch_id)
        time.sleep(1.1)  # past GRSAI_CLAIM_LEASE_S
    run_to_the_end(batch_id, env, log)

    statuses = rows(engine, "SELECT status, COUNT(*) AS n FROM video_tasks GROUP BY status")
    assert {s["status"]: s["n"] for s in statuses} == {"succeeded": CHAOS_TASKS}
    assert ledger_kinds(engine, batch_id) == {"reserve": CHAOS_TASKS, "charge": CHAOS_TASKS}
    assert rows(engine, "SELECT status FROM batch_jobs")[0]["status"] == "settled"
    assert_ledger_invariants(engine)
    actual, reported = actual_duplicates(simulator, prompts), reported_duplicates(engine, batch_id)
    record_property(
        "figures",
        f"chaos on {engine.dialect.name}: {KILLS} kills of a {CHAOS_TASKS}-task batch, {doubtful}"
        f" submits in flight at the kills, {reported} reported possible duplicates, {actual}"
        " actual duplicate submits",
    )
    assert actual <= reported <= doubtful
    assert doubtful <= KILLS * int(env["GRSAI_MAX_CONCURRENCY"])


def test_a_killed_runners_tasks_are_taken_over_within_a_minute_and_a_half(
    engine, simulator, tmp_path, database_url
) -> None:
    """Default lease (GRSAI_CLAIM_LEASE_S): the dead runner's heartbeat stops, and another
    runner takes its claims over once it is stale, not after a fixed five-minute lease."""
    env = e2e_settings(database_url, simulator.base_url, tmp_path)
    prompts = [f"takeover {i}" for i in range(30)]
    batch_id = new_batch(engine, [{"prompt": p, "model": "sora-2"} for p in prompts])
    # The first eight submits are accepted at once but answered 20 s late: the runner waits.
    simulator.simulator.add_fault(FaultRule(endpoint="submit", delay_s=20, times=8))
    log = tmp_path / "takeover.log"
    runner = start_runner(batch_id, env, log)
    wait_for(lambda: simulator.simulator.stats().get("submits_accepted", 0) >= 8, 60,
             "the API to accept eight submits", log)  # fmt: skip
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    killed_at = time.monotonic()
    doubtful = in_flight(engine, batch_id)

    run_to_the_end(batch_id, env, log)
    took = time.monotonic() - killed_at

    assert took < 90, f"the tasks took {took:.0f} s to finish after the kill"
    statuses = rows(engine, "SELECT status, COUNT(*) AS n FROM video_tasks GROUP BY status")
    assert {s["status"]: s["n"] for s in statuses} == {"succeeded": len(prompts)}
    actual, reported = actual_duplicates(simulator, prompts), reported_duplicates(engine, batch_id)
    assert actual <= reported <= doubtful <= 8
    assert ledger_kinds(engine, batch_id) == {"reserve": len(prompts), "charge": len(prompts)}
    assert_ledger_invariants(engine)


def test_a_killed_re_polling_run_holds_neither_the_schedule_nor_its_tasks(
    crash_env, engine, simulator, tmp_path, monkeypatch
) -> None:
    """kill -9 of a re-polling run's process: Dagster still sees the run as started, yet once
    its engine's heartbeat is stale (and its start-up grace over) the schedule asks for the next
    run, which polls the tasks again within 90 s of the kill. With the default lease (30 s) and a
    tick a minute, a dead run is replaced within half a lease (the schedule's view of a live
    run) + a minute + a run's start-up; any other live engine takes its tasks sooner, once their
    poll holds end (store/polls.py)."""
    import httpx

    from grsai_pipeline.defs.runs import START_GRACE_S
    from grsai_pipeline_tests.test_defs.dagster_helpers import schedule_tick
    from grsai_pipeline_tests.test_defs.test_repolling import repoll

    # Videos that take minutes: the tasks stay at the API for the whole test.
    httpx.post(
        f"{simulator.base_url}/_sim/config", json={"generation_s": [600, 600], "log_polls": True}
    ).raise_for_status()
    batch_id = new_batch(
        engine, [{"prompt": f"long video {i}", "model": "veo-flash"} for i in range(3)]
    )
    for name, value in crash_env.items():
        monkeypatch.setenv(name, value)
    home = crash_env["DAGSTER_HOME"]
    config = tmp_path / "repoll.yaml"
    config.write_text(
        json.dumps({"ops": {"repoll_open_batches_op": {"config": {"budget_s": 300}}}})
    )
    dagster = Path(sys.executable).with_name("dagster")
    log = tmp_path / "repoll-run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [str(dagster), "job", "execute", "-m", "grsai_pipeline.definitions",
             "-j", "repoll_open_batches", "-c", str(config)],
            env={**os.environ, **crash_env}, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def polled_at_api() -> bool:
        at_api = rows(engine, "SELECT COUNT(*) AS n FROM video_tasks WHERE status = 'processing'")
        return at_api[0]["n"] == 3 and bool(simulator.simulator.state.polls)

    wait_for(polled_at_api, 90, "the re-polling run to submit and poll the tasks", log)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    killed_at = time.time()
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        (dead,) = instance.get_run_records(dg.RunsFilter(job_name="repoll_open_batches"))
        assert dead.dagster_run.status == dg.DagsterRunStatus.STARTED  # Dagster does not know
        # Past GRSAI_CLAIM_LEASE_S (1 s here) since its last heartbeat, and past the grace a
        # started run has before its engine's first one.
        started = dead.start_time or dead.create_timestamp.timestamp()
        time.sleep(max(1.5, started + START_GRACE_S + 0.5 - time.time()))

        requests, skipped = schedule_tick(instance)
        assert skipped is None and len(requests) == 1, skipped

        assert repoll(instance, budget_s=5).success
    latest = max(t for times in simulator.simulator.state.polls.values() for t in times)
    assert latest - killed_at < 90
    assert latest > killed_at, "the tasks were polled again after the kill"
    assert rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id) == [
        {"status": "running"}
    ]
