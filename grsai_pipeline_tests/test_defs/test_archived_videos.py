"""Archived videos (SPEC 8): every succeeded video copied from its expiring URL to
GRSAI_ARCHIVE_URL by the batch's own run, whole, with its size and SHA-256 on the row; a URL
that expired fails ``videos_archived_in_time`` naming the task and changes no money.

The simulator serves real bytes at its result URLs over loopback HTTP; the S3 case talks to
moto's standalone server over HTTP through s3fs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grsai_pipeline.config import load_settings
from grsai_pipeline.dev.simulator import FaultRule, SimulatorServer
from grsai_pipeline.store.archives import archive_state
from grsai_pipeline.videos.archiver import archive_videos
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows
from grsai_pipeline_tests.test_defs.dagster_helpers import (
    check_results,
    materializations,
    run_batch,
)

MIXED = [
    {"prompt": "a red kite", "model": "sora-2"},
    {"prompt": "a blue kite", "model": "veo-flash"},
    {"prompt": "a green kite", "model": "veo-pro"},
    {"prompt": "flagged [sim:input_moderation]", "model": "sora-2"},
    {"prompt": "", "model": "sora-2"},
]


def succeeded(engine) -> list[dict]:
    return rows(engine, "SELECT * FROM video_tasks WHERE status = 'succeeded' ORDER BY batch_index")


def test_a_mixed_batch_archives_every_succeeded_video_in_the_default_folder(
    pipeline_env, engine, simulator: SimulatorServer, instance, tmp_path
) -> None:
    batch_id = new_batch(engine, MIXED)

    result = run_batch(instance, batch_id)

    assert result.success
    videos = succeeded(engine)
    assert len(videos) == 3
    for task in videos:
        path = tmp_path / "videos" / batch_id / f"{task['id']}.mp4"  # ./videos: the default
        body = path.read_bytes()
        assert task["archived_url"] == f"file://{path}"
        assert task["video_bytes"] == len(body) == simulator.simulator.state.config.video_bytes
        assert task["video_sha256"] == hashlib.sha256(body).hexdigest()
        assert body[4:8] == b"ftyp" and task["archived_at"] is not None
        assert task["video_url"].startswith(simulator.base_url)  # the upstream URL is kept
    assert sorted(p.name for p in (tmp_path / "videos" / batch_id).iterdir()) == sorted(
        f"{t['id']}.mp4" for t in videos
    )
    archived = materializations(result)["archived_videos"]
    assert (archived["videos_archived"], archived["videos_expired_before_archive"]) == (3, 0)
    assert check_results(result)["videos_archived_in_time"] is True


def test_an_expired_url_leaves_the_task_charged_and_fails_the_check_naming_it(
    pipeline_env, engine, simulator: SimulatorServer, instance
) -> None:
    batch_id = new_batch(engine, [{"prompt": "gone too soon", "model": "sora-2"}])
    simulator.simulator.state.config.video_ttl_s = 0.0  # expired the moment it finished

    result = run_batch(instance, batch_id)

    assert result.success
    (task,) = succeeded(engine)
    assert task["archived_url"] is None and task["archive_error"].startswith("EXPIRED: HTTP 404")
    assert ledger_kinds(engine, batch_id) == {"reserve": 1, "charge": 1}
    assert check_results(result)["videos_archived_in_time"] is False
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "videos_archived_in_time"
    ]
    assert task["id"] in str(evaluation.metadata["expired_videos"].value)
    # Not tried again: an expired URL never comes back.
    before = simulator.simulator.stats()["video_requests"]
    assert archive_videos(engine, load_settings(), budget_s=5).archived == 0
    assert simulator.simulator.stats()["video_requests"] == before
    assert_ledger_invariants(engine)


def test_a_download_that_fails_its_budget_is_tried_again_by_the_next_pass(
    pipeline_env, engine, simulator: SimulatorServer, instance
) -> None:
    batch_id = new_batch(engine, [{"prompt": "flaky cdn", "model": "sora-2"}])
    simulator.simulator.add_fault(FaultRule(endpoint="video", status=503))

    assert run_batch(instance, batch_id).success
    (task,) = succeeded(engine)
    assert task["archived_url"] is None and task["archive_error"].startswith("DOWNLOAD_FAILED")
    assert archive_state(engine, [batch_id])[batch_id].waiting == [0]

    simulator.simulator.clear_faults()
    report = archive_videos(engine, load_settings(), budget_s=10)

    assert (report.archived, report.failed) == (1, 0)
    (task,) = succeeded(engine)
    assert task["archived_url"] is not None and task["archive_error"] is None


# --- S3 through s3fs, against moto's standalone server over HTTP (conftest.s3_server) ---------


def test_videos_archive_to_an_s3_compatible_server_through_s3fs(
    pipeline_env, engine, simulator: SimulatorServer, instance, s3_server, monkeypatch
) -> None:
    import s3fs

    monkeypatch.setenv("GRSAI_ARCHIVE_URL", "s3://archive-bucket/videos")
    batch_id = new_batch(engine, MIXED[:2])

    assert run_batch(instance, batch_id).success

    s3 = s3fs.S3FileSystem(anon=False)
    for task in succeeded(engine):
        assert task["archived_url"] == f"s3://archive-bucket/videos/{batch_id}/{task['id']}.mp4"
        body = s3.cat_file(task["archived_url"])
        assert hashlib.sha256(body).hexdigest() == task["video_sha256"]
        assert len(body) == task["video_bytes"]
    assert not [p for p in s3.find("archive-bucket") if ".partial-" in p]


# --- memory --------------------------------------------------------------------------------

BIG = 200 * 1024 * 1024
ARCHIVE_ONE = """
import resource, sys
from grsai_pipeline.config import load_settings
from grsai_pipeline.store.db import get_engine
from grsai_pipeline.videos.archiver import archive_videos
settings = load_settings()
report = archive_videos(get_engine(settings.database_url), settings, budget_s=120)
assert report.archived == 1, report
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _archive_in_a_process(env: dict[str, str], cwd: Path) -> int:
    """Peak RSS (MiB) of a process that archives the one waiting video."""
    done = subprocess.run(
        [sys.executable, "-c", ARCHIVE_ONE],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_a_200_mib_video_archives_in_bounded_memory(
    pipeline_env, engine, simulator: SimulatorServer, instance, tmp_path, record_property
) -> None:
    config = simulator.simulator.state.config
    peaks = []
    for size in (64 * 1024, BIG):
        config.video_bytes = size
        batch_id = new_batch(engine, [{"prompt": f"a video of {size} bytes", "model": "sora-2"}])
        assert run_batch(instance, batch_id, budget_s=None).success
        # Undo what the run archived, so that the measuring process does the copy.
        (task,) = [t for t in succeeded(engine) if t["batch_job_id"] == batch_id]
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE video_tasks SET archived_url = NULL, archived_at = NULL,"
                f" video_bytes = NULL, video_sha256 = NULL WHERE id = '{task['id']}'"
            )
        started = time.monotonic()
        peaks.append(_archive_in_a_process(pipeline_env, tmp_path))
        took = time.monotonic() - started
        (task,) = [t for t in succeeded(engine) if t["batch_job_id"] == batch_id]
        assert task["video_bytes"] == size
    growth = peaks[1] - peaks[0]
    record_property("figures", f"200 MiB video: peak RSS {peaks[1]} MiB vs {peaks[0]} MiB "
                    f"for 64 KiB (+{growth} MiB), copied in {took:.1f} s")  # fmt: skip
    assert growth < 50, peaks
