"""Crash safety of the archive (SPEC 8): a `grsai-pipeline run` killed with SIGKILL in the
middle of its downloads leaves no object under a final name that is not whole and no row that
claims a copy which does not exist; the next run archives every video once."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.e2e.runner import run_to_the_end, start_runner
from grsai_pipeline_tests.helpers import assert_ledger_invariants, new_batch, rows

pytestmark = pytest.mark.slow

VIDEO_BYTES = 4 * 1024 * 1024


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial-" in p.name]


def test_a_kill_mid_download_leaves_nothing_half_written_and_a_rerun_archives_all_once(
    database_url, engine, simulator: SimulatorServer, tmp_path
) -> None:
    archive = tmp_path / "archive"
    env = e2e_settings(database_url, simulator.base_url, tmp_path) | {
        "GRSAI_ARCHIVE_URL": str(archive)
    }
    config = simulator.simulator.state.config
    config.video_bytes = VIDEO_BYTES
    config.video_chunk_delay_s = 0.5  # four chunks: two seconds a video
    batch_id = new_batch(
        engine, [{"prompt": f"slow video {i}", "model": "sora-2"} for i in range(6)]
    )
    log = tmp_path / "runner.log"
    runner = start_runner(batch_id, env, log)

    wait_for(lambda: partials(archive), 60, "downloads under way", log)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)

    tasks = rows(engine, "SELECT * FROM video_tasks")
    for task in tasks:
        final = archive / batch_id / f"{task['id']}.mp4"
        if task["archived_url"] is not None:  # a row claims a copy: it is there, whole
            assert final.stat().st_size == task["video_bytes"] == VIDEO_BYTES
        if final.exists():  # an object under its final name is whole
            assert final.stat().st_size == VIDEO_BYTES
    assert partials(archive), "the kill came half-way through a download"

    config.video_chunk_delay_s = 0.0
    run_to_the_end(batch_id, env, log)

    tasks = rows(engine, "SELECT * FROM video_tasks")
    assert all(t["status"] == "succeeded" for t in tasks)
    for task in tasks:
        body = (archive / batch_id / f"{task['id']}.mp4").read_bytes()
        assert task["archived_url"] == f"file://{archive / batch_id / task['id']}.mp4"
        assert (len(body), hashlib.sha256(body).hexdigest()) == (
            task["video_bytes"],
            task["video_sha256"],
        )
    assert sorted(p.name for p in (archive / batch_id).iterdir()) == sorted(
        f"{t['id']}.mp4" for t in tasks
    ), "one object per video, nothing partial left"
    assert_ledger_invariants(engine)
