"""The production topology as separate processes on this machine (issue 26, SPEC 10): the root
``dagster.yaml`` on PostgreSQL, the code location served by ``dagster code-server start``, and
``dagster-webserver`` and ``dagster-daemon run`` on a workspace that points at that gRPC server;
the application database on PostgreSQL too, a database of its own.

A batch a web app writes as rows is picked up by the engines at work: the stand-by re-polling
run and the run the sensor starts for it. The run holding most of its tasks at the API is
killed with SIGKILL: the daemon's run monitoring sees its worker gone and fails the run,
another engine (a re-polling run, or the batch's own) polls its tasks within 90 s of the kill,
and the batch settles with every invariant holding and every task submitted once.

The one change to the shipped instance is its run launcher: production's starts each run in a
container (Docker, Kubernetes), which this machine cannot run; ``process_launcher.py`` starts
each run in a process of its own and answers run monitoring's health checks from it, as the
container does. The lease, the poll interval, the max gap between polls and the run's poll
budget keep their defaults: the takeover within 90 s is asked of them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import ListRepositoriesResponse
from dagster._serdes import deserialize_value

from grsai_pipeline_tests.conftest import REPO_ROOT, PostgresDatabases, pipeline_settings
from grsai_pipeline_tests.e2e.conftest import WORKSPACE, dagster_process, free_port, wait_for
from grsai_pipeline_tests.e2e.process_launcher import WORKER_PID_TAG
from grsai_pipeline_tests.e2e.runner import cli
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    rows,
    write_rows_batch,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

USER = "hana"
TASKS = [{"prompt": f"a harbour at night, take {i}", "model": "sora-2"} for i in range(3)] + [
    {"prompt": "a harbour in a storm [sim:output_moderation]", "model": "veo-flash"}
]
# Videos of about a minute: the tasks are still at the API when their run is killed, and
# usually when another engine takes them over.
GENERATION_S = [50.0, 60.0]
TAKEOVER_S = 90.0
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


@pytest.fixture
def instance_database(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """An empty PostgreSQL database for the Dagster instance (Dagster makes its tables)."""
    url = postgres_databases.create(migrated=False)
    yield url
    postgres_databases.release(url)


def production_home(home: Path) -> Path:
    """A Dagster home holding the root dagster.yaml, its run launcher replaced (see above)."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    config["run_launcher"] = {
        "module": "grsai_pipeline_tests.e2e.process_launcher",
        "class": "ProcessRunLauncher",
    }
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def graphql(base: str, query: str, **variables: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{base}/graphql", json={"query": query, "variables": variables}, timeout=30
    )
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body
    return dict(body["data"])


LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus displayMetadata { key value }
  locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } } }
} } } }"""
RUN_STATUS = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def code_server_loaded(port: int) -> bool:
    """Whether the code server answers with its definitions (not a load error)."""
    try:
        answer = DagsterGrpcClient(port=port, host=HOST).list_repositories()
    except Exception:  # not listening yet
        return False
    return isinstance(deserialize_value(answer), ListRepositoriesResponse)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_production_topology_takes_over_a_killed_runs_tasks_and_settles_a_rows_batch(
    database_url, engine, simulator, instance_database, tmp_path, monkeypatch, record_property
) -> None:
    httpx.post(
        f"{simulator.base_url}/_sim/config", json={"generation_s": GENERATION_S, "log_polls": True}
    ).raise_for_status()
    home = production_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_PG_URL", instance_database)
    settings = pipeline_settings(database_url, simulator.base_url)
    for name in ("GRSAI_POLL_INTERVAL_S", "GRSAI_POLL_BUDGET_S"):  # the defaults: 5 s, 300 s
        del settings[name]
    env = {
        **os.environ,
        **settings,
        "DAGSTER_HOME": str(home),
        # Every process that loads the instance imports the test's run launcher.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }

    def instance() -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))

    # Dagster makes the instance's tables on first use: here, before three processes race to.
    with instance() as made:
        assert type(made.run_storage).__name__ == "PostgresRunStorage"
        monitoring_s = made.run_monitoring_poll_interval_seconds
        assert made.run_monitoring_enabled

    (shipped,) = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    location = shipped["python_module"]
    grpc_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    grpc_server = {"host": HOST, "port": grpc_port, "location_name": location["location_name"]}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": grpc_server}]}))
    web = f"http://{HOST}:{web_port}"
    commands = {
        "code-server": [
            "dagster", "code-server", "start", "-m", location["module_name"],
            "-a", location["attribute"], "--location-name", location["location_name"],
            "-h", HOST, "-p", str(grpc_port),
            # Runs start as `<this python> -m dagster`, whatever PATH holds.
            "--use-python-environment-entry-point",
        ],
        "webserver": ["dagster-webserver", "-w", str(workspace), "-h", HOST, "-p", str(web_port)],
        "daemon": ["dagster-daemon", "run", "-w", str(workspace)],
    }  # fmt: skip
    logs = {name: tmp_path / f"{name}.log" for name in commands}

    started = time.monotonic()
    with ExitStack() as processes:
        for name, (command, *args) in commands.items():
            processes.enter_context(
                dagster_process([str(BIN / command), *args], env, tmp_path, logs[name])
            )
            if name == "code-server":  # the others load the code location from it
                wait_for(lambda: code_server_loaded(grpc_port), 90, name, logs[name])

        def location_served() -> dict[str, Any] | None:
            try:
                (entry,) = graphql(web, LOCATIONS)["workspaceOrError"]["locationEntries"]
            except httpx.HTTPError:
                return None
            return entry if entry["loadStatus"] == "LOADED" else None

        entry = wait_for(location_served, 90, "the webserver", logs["webserver"])
        up_s = time.monotonic() - started
        assert entry["name"] == location["location_name"]
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        shown = {m["key"]: m["value"] for m in entry["displayMetadata"]}
        assert (shown["host"], shown["port"]) == (HOST, str(grpc_port)), shown

        cli("credits", "grant", USER, "1000", env=env)
        batch_id = write_rows_batch(engine, USER, TASKS)
        written_at = time.time()

        with instance() as dagster:

            def at_the_api_held_by_a_run() -> tuple[dg.DagsterRun, list[dict[str, Any]]] | None:
                # Its own run or the stand-by re-polling run (defs/standby.py), whichever
                # engine holds most of its tasks: the run to kill.
                tasks = rows(
                    engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id
                )
                holders = Counter(t["polled_by"] for t in tasks if t["polled_by"])
                if not holders or not all(t["status"] == "processing" for t in tasks):
                    return None
                run = dagster.get_run_by_id(holders.most_common(1)[0][0])
                if run is None or run.status != dg.DagsterRunStatus.STARTED:
                    return None
                return run, [t for t in tasks if t["polled_by"] == run.run_id]

            run, held = wait_for(
                at_the_api_held_by_a_run,
                120,
                "a run to hold its tasks at the API",
                logs["daemon"],
            )
            # The run worker says its pid in the event log; its engine, in the runners table.
            (worker,) = [
                e.dagster_event
                for e in dagster.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                if e.dagster_event and e.message.startswith("Started process for run")
            ]
            pid = int(worker.event_specific_data.metadata["pid"].value)
            (runner,) = rows(
                engine, "SELECT pid FROM pipeline_runners WHERE runner_id = :r", r=run.run_id
            )
            assert pid == runner["pid"] == int(run.tags[WORKER_PID_TAG])

            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            grsai_ids = {t["grsai_task_id"] for t in held}

            def polled_again() -> dict[str, float] | None:
                # Received a second after the kill: no poll of the dead process is that late.
                polls = simulator.simulator.state.polls
                first = {
                    g: min((p for p in polls.get(g, []) if p > killed_at + 1), default=None)
                    for g in grsai_ids
                }
                return first if all(first.values()) else None

            first_polls = wait_for(
                polled_again, TAKEOVER_S + 10, "another engine to poll the tasks", logs["daemon"]
            )
            taken_over_s = max(first_polls.values()) - killed_at

            def failed() -> bool:
                status = graphql(web, RUN_STATUS, id=run.run_id)["runOrError"]["status"]
                return status == "FAILURE"

            wait_for(failed, monitoring_s + 30, "run monitoring to fail the run", logs["daemon"])
            (failure,) = dagster.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            seen_s = failure.timestamp - killed_at

            def settled() -> bool:
                found = rows(engine, "SELECT status FROM batch_jobs WHERE id = :b", b=batch_id)
                reported = dagster.get_materialized_partitions(dg.AssetKey("settled_ledger"))
                return found[0]["status"] == "settled" and batch_id in reported

            wait_for(settled, 120, "the batch to settle and be reported", logs["daemon"])
            settled_s = time.time() - written_at
            repolls = dagster.get_run_records(dg.RunsFilter(job_name="repoll_open_batches"))
            runs = dagster.get_run_records(dg.RunsFilter(tags={"batch_id": batch_id}))
        stopping = time.monotonic()
    stop_s, took = time.monotonic() - stopping, time.monotonic() - started

    record_property(
        "figures",
        f"production topology: processes up in {up_s:.0f} s; {run.job_name} killed"
        f" {killed_at - written_at:.0f} s after the batch was written, holding {len(held)} of"
        f" {len(TASKS)} tasks; polled by another engine {taken_over_s:.1f} s after the kill;"
        f" the run failed by run monitoring (every {monitoring_s} s) {seen_s:.1f} s after it;"
        f" settled {settled_s:.0f} s after written; processes stopped in {stop_s:.0f} s;"
        f" {took:.0f} s in all",
    )
    assert taken_over_s < TAKEOVER_S
    # The daemon's run monitoring failed it, from its worker's health (not the code server,
    # which never had the worker as a child).
    assert "Detected run worker status FAILED" in failure.message, failure.message
    assert "signal SIGKILL" in failure.message, failure.message
    # The batch's one run of its own, the sensor's; failed for good if it was the one killed
    # (a sensor's run retries nothing).
    (own,) = [r.dagster_run for r in runs]
    assert own.tags["grsai/trigger"] == "sensor" and own.tags["user_id"] == USER
    if run.job_name == "batch_pipeline":
        assert (own.run_id, own.status) == (run.run_id, dg.DagsterRunStatus.FAILURE)
    # Its tasks were taken over by another engine, which polled them to the end.
    takers = {r.dagster_run.run_id for r in [*repolls, *runs]} - {run.run_id}
    tasks = rows(engine, "SELECT * FROM video_tasks WHERE batch_job_id = :b", b=batch_id)
    assert {t["polled_by"] for t in tasks if t["grsai_task_id"] in grsai_ids} <= takers, tasks
    assert sorted(t["status"] for t in tasks) == ["failed", "succeeded", "succeeded", "succeeded"]
    assert all(t["possible_duplicates"] == 0 for t in tasks), tasks
    sent = simulator.simulator.stats()["submits_by_prompt"]
    assert sorted(sent[t["prompt"]] for t in TASKS) == [1] * len(TASKS), sent
    assert ledger_kinds(engine, batch_id) == {"reserve": 4, "charge": 3, "refund": 1}
    assert_ledger_invariants(engine)
    cli("db", "verify", env=env)
