"""The API key appears nowhere: not in output, logs, Dagster events, files or database rows.

The simulator refuses requests without the key, so every run here proves the key was sent;
then the test searches everything a person or a log shipper could ever read for it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster._serdes import serialize_value

from grsai_pipeline.dev.simulator import FaultRule
from grsai_pipeline_tests.conftest import TEST_API_KEY
from grsai_pipeline_tests.helpers import new_batch, table_snapshot
from grsai_pipeline_tests.test_defs.dagster_helpers import run_batch

TASKS = [
    {"prompt": "fine", "model": "sora-2"},
    {"prompt": "echo [sim:succeeded]", "model": "veo-pro"},
    {"prompt": "flagged [sim:input_moderation]", "model": "veo-flash"},
]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_key_is_in_no_output_log_event_file_or_row(
    pipeline_env, engine, simulator, tmp_path, capfd, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    # An API that echoes the key in an error body, and one that refuses it outright.
    simulator.simulator.add_fault(
        FaultRule(
            endpoint="submit",
            prompt_contains="echo",
            status=400,
            body=f'{{"code": 400, "msg": "bad request for key {TEST_API_KEY}"}}',
        )
    )
    batch_id = new_batch(engine, TASKS)
    with dg.instance_for_test() as instance:
        assert run_batch(instance, batch_id).success
        denied = new_batch(engine, [{"prompt": "denied", "model": "sora-2"}], user="bob")
        simulator.simulator.add_fault(FaultRule(endpoint="submit", status=401))
        assert not run_batch(instance, denied).success
        events: list[str] = []
        for record in instance.get_run_records():
            events += [serialize_value(e) for e in instance.all_logs(record.dagster_run.run_id)]
            events.append(serialize_value(record.dagster_run))
        instance_files = files_containing(Path(instance.root_directory), TEST_API_KEY.encode())

    stats = simulator.simulator.stats()
    assert stats["submit_requests"] >= 3 and stats.get("unauthorized", 0) == 0
    echo_task = [t for t in table_snapshot(engine)["video_tasks"] if t["prompt"].startswith("echo")]
    assert echo_task[0]["error_message"].startswith("HTTP 400")
    assert len(events) > 20
    assert not [e for e in events if TEST_API_KEY in e]
    assert instance_files == []
    assert TEST_API_KEY not in repr(table_snapshot(engine))
    assert TEST_API_KEY not in caplog.text
    captured = capfd.readouterr()
    assert TEST_API_KEY not in captured.out + captured.err
    if engine.dialect.name == "sqlite":
        assert files_containing(Path(engine.url.database).parent, TEST_API_KEY.encode()) == []


def test_the_key_is_not_printed_by_the_command_line(
    pipeline_env, engine, simulator, tmp_path
) -> None:
    batch_id = new_batch(engine, TASKS[:1])
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    script = Path(sys.executable).with_name("grsai-pipeline")

    ok = subprocess.run([script, "run", batch_id, "--until-settled", "--timeout", "60"],
                        env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    simulator.simulator.add_fault(FaultRule(endpoint="submit", status=401))
    other = new_batch(engine, TASKS[:1], user="bob")
    denied = subprocess.run([script, "run", other], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip

    assert ok.returncode == 0, ok.stderr
    assert denied.returncode == 1
    assert "401" in denied.stderr and "GRSAI_API_KEY" in denied.stderr
    for result in (ok, denied):
        assert TEST_API_KEY not in result.stdout + result.stderr
    assert files_containing(home, TEST_API_KEY.encode()) == []
