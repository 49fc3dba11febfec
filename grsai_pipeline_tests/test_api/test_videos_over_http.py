"""Video links that open (issue 24, 5): a settled batch's archived videos, read back over a
served API with the bearer token, or without one through the signed link the batch's own run
wrote into its Dagster metadata; on the local default archive and on moto's S3, both databases.

Acceptance: "A video link on a settled batch's page, opened in the browser, returns the archived
bytes (sha256 equal to video_sha256), on the local default and on moto's S3".
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline.domain.links import VideoLinks, link_signature
from grsai_pipeline_tests.helpers import new_batch, rows
from grsai_pipeline_tests.test_api.api_support import ServedApi, served_api
from grsai_pipeline_tests.test_defs.dagster_helpers import materializations, run_batch

pytestmark = pytest.mark.slow

SECRET = "video-links-secret-5b1e0c77d2a94f38"
LINK_SETTINGS = {"GRSAI_LINK_SECRET": SECRET}
OTHER_SECRET = "not-the-secret-of-this-server"
PROBLEM = "application/problem+json"
KITES = [
    {"prompt": "a red kite", "model": "sora-2"},
    {"prompt": "a blue kite", "model": "veo-flash"},
]
BIG = 96 * 1024 * 1024
# A Markdown link's target: [text](url)
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as made:
        yield made


def succeeded(engine: sa.Engine, batch_id: str) -> list[dict[str, Any]]:
    return rows(
        engine,
        "SELECT * FROM video_tasks WHERE batch_job_id = :b AND status = 'succeeded'"
        " ORDER BY batch_index",
        b=batch_id,
    )


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def refused(answer: httpx.Response, status: int, slug: str) -> str:
    """A problem answer of ``status`` and type ``slug``; its detail."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert (problem["status"], problem["type"]) == (status, f"urn:grsai-pipeline:problem:{slug}")
    return str(problem["detail"])


def settle_with_links(
    api: ServedApi, engine: sa.Engine, instance: dg.DagsterInstance, monkeypatch: Any
) -> tuple[str, str]:
    """A batch settled and archived by its own run, which signs links on ``api``; the batch id
    and its ``archived_videos`` materialization's ``videos`` text."""
    monkeypatch.setenv("GRSAI_API_PUBLIC_URL", api.base_url)
    monkeypatch.setenv("GRSAI_LINK_SECRET", SECRET)
    batch_id = new_batch(engine, KITES)
    result = run_batch(instance, batch_id)
    assert result.success
    return batch_id, str(materializations(result)["archived_videos"]["videos"])


@pytest.mark.parametrize("archive", ["local", "s3"])
def test_a_settled_batchs_video_links_open_in_a_browser_with_the_archived_bytes(
    archive: str,
    request: pytest.FixtureRequest,
    database_url: str,
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    simulator: SimulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if archive == "s3":
        request.getfixturevalue("s3_server")  # AWS_* in the environment, for the API too
        monkeypatch.setenv("GRSAI_ARCHIVE_URL", "s3://archive-bucket/videos")
    with served_api(database_url, tmp_path, settings=LINK_SETTINGS) as api:
        batch_id, text = settle_with_links(api, engine, instance, monkeypatch)
        tasks = succeeded(engine, batch_id)
        assert len(tasks) == 2
        scheme = "s3://archive-bucket/videos/" if archive == "s3" else f"file://{tmp_path}/videos/"
        assert all(task["archived_url"].startswith(scheme) for task in tasks)

        links = LINK.findall(text)
        # The links the page shows, in task order, to the API, not to the store.
        assert [link.split("?")[0] for link in links] == [
            f"{api.base_url}/v1/videos/{task['id']}" for task in tasks
        ]
        assert text.count("(archived copy)") == 2 and "signed links, valid until" in text
        for link, task in zip(links, tasks, strict=True):
            opened = httpx.get(link, timeout=30)  # a browser: no token
            assert opened.status_code == 200, opened.text
            assert opened.headers["content-type"] == "video/mp4"
            assert int(opened.headers["content-length"]) == task["video_bytes"]
            assert sha256(opened.content) == task["video_sha256"]
            assert opened.content[4:8] == b"ftyp"
            with api.client() as client:  # a back end: the bearer token, no signature
                fetched = client.get(f"/v1/videos/{task['id']}")
            assert fetched.status_code == 200
            assert sha256(fetched.content) == task["video_sha256"]
    log = api.log.read_text()
    signatures = [link.split("signature=")[1] for link in links]
    assert "GET /v1/videos/" in log and "signature=[hidden]" in log
    assert not [s for s in signatures if s in log] and SECRET not in log


def test_expired_forged_and_unsigned_requests_are_refused(
    database_url: str,
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    simulator: SimulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with served_api(database_url, tmp_path, settings=LINK_SETTINGS) as api:
        batch_id, text = settle_with_links(api, engine, instance, monkeypatch)
        task_id, other_id = (task["id"] for task in succeeded(engine, batch_id))
        link = LINK.findall(text)[0]
        expires = int(link.split("expires=")[1].split("&")[0])
        good = link.split("signature=")[1]
        path = f"{api.base_url}/v1/videos/{task_id}"

        def get(url: str, **params: Any) -> httpx.Response:
            return httpx.get(url, params=params or None, timeout=30)

        assert get(link).status_code == 200
        past = int(time.time()) - 5
        said = refused(
            get(path, expires=past, signature=link_signature(SECRET, task_id, past)),
            403,
            "link-expired",
        )
        assert "expired at" in said
        forged = [
            {"expires": expires, "signature": link_signature(OTHER_SECRET, task_id, expires)},
            {"expires": expires + 86_400, "signature": good},  # a longer life, the same signature
            {"expires": expires, "signature": good.upper()},
            {"expires": expires, "signature": "0" * 64},
            {"signature": good},
            {"expires": expires},
        ]  # fmt: skip
        for params in forged:
            refused(get(path, **params), 403, "bad-link-signature")
        # One video's link opens no other.
        refused(get(f"{api.base_url}/v1/videos/{other_id}", expires=expires, signature=good), 403,
                "bad-link-signature")  # fmt: skip
        # Neither a token nor a link: as every route.
        unsigned = get(path)
        refused(unsigned, 401, "not-authenticated")
        assert unsigned.headers["www-authenticate"] == "Bearer"
        wrong_token = httpx.get(path, headers={"Authorization": "Bearer gp_nope"}, timeout=30)
        refused(wrong_token, 401, "not-authenticated")

        # Unknown tasks and tasks without a copy: 404, with the token or a signed link.
        links = VideoLinks(api.base_url, SECRET, 60)
        pending = new_batch(engine, [{"prompt": "not sent yet", "model": "sora-2"}])
        (waiting,) = rows(engine, "SELECT id FROM video_tasks WHERE batch_job_id = :b", b=pending)
        with api.client() as client:
            said = refused(client.get("/v1/videos/no-such-task"), 404, "no-archived-video")
            assert "no such task" in said
            said = refused(client.get(f"/v1/videos/{waiting['id']}"), 404, "no-archived-video")
            assert "pending, not succeeded" in said
        said = refused(get(links.url("no-such-task", time.time())), 404, "no-archived-video")
        assert "no-such-task" in said

        # A copy the archive lost: 404 too, not a broken stream.
        (lost,) = [t for t in succeeded(engine, batch_id) if t["id"] == other_id]
        Path(lost["archived_url"].removeprefix("file://")).unlink()
        refused(get(links.url(other_id, time.time())), 404, "no-archived-video")
    assert good not in api.log.read_text()


def test_without_a_link_secret_only_the_token_opens_a_video(
    database_url: str,
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    simulator: SimulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    batch_id = new_batch(engine, KITES[:1])
    result = run_batch(instance, batch_id)  # no link settings: today's links
    assert result.success
    (task,) = succeeded(engine, batch_id)
    text = str(materializations(result)["archived_videos"]["videos"])
    assert f"]({task['archived_url']}) (archived copy)" in text
    assert "Set GRSAI_API_PUBLIC_URL and GRSAI_LINK_SECRET" in text

    with served_api(database_url, tmp_path) as api:
        signed = VideoLinks(api.base_url, SECRET, 60).url(task["id"], time.time())
        said = refused(httpx.get(signed, timeout=30), 403, "bad-link-signature")
        assert "GRSAI_LINK_SECRET is not set" in said
        with api.client() as client:
            fetched = client.get(f"/v1/videos/{task['id']}")
    assert fetched.status_code == 200
    assert sha256(fetched.content) == task["video_sha256"]


def peak_rss_mib(pid: int) -> int:
    """The process's peak resident memory so far (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) // 1024


@pytest.mark.parametrize("archive", ["local", "s3"])
def test_a_large_video_streams_in_bounded_memory(
    archive: str,
    request: pytest.FixtureRequest,
    database_url: str,
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    simulator: SimulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
) -> None:
    if database_url.startswith("postgresql"):
        pytest.skip("memory of the API's reads, the same on both databases")
    if archive == "s3":
        request.getfixturevalue("s3_server")
        monkeypatch.setenv("GRSAI_ARCHIVE_URL", "s3://archive-bucket/videos")
    small, task = [], {}
    for size in (64 * 1024, BIG):
        simulator.simulator.state.config.video_bytes = size
        batch_id = new_batch(engine, KITES[:1])
        assert run_batch(instance, batch_id).success
        (task,) = succeeded(engine, batch_id)
        assert task["video_bytes"] == size
        small.append(task["id"])

    with served_api(database_url, tmp_path) as api, api.client() as client:
        # Warmed up by a small video of the same archive (s3fs, botocore: tens of MiB loaded).
        assert client.get(f"/v1/videos/{small[0]}").status_code == 200
        before = peak_rss_mib(api.pid)
        digest, size = hashlib.sha256(), 0
        with client.stream("GET", f"/v1/videos/{task['id']}") as answer:
            assert answer.status_code == 200
            assert int(answer.headers["content-length"]) == BIG
            for chunk in answer.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        after = peak_rss_mib(api.pid)
    assert (size, digest.hexdigest()) == (BIG, task["video_sha256"])
    record_property("figures", f"{BIG >> 20} MiB video from {archive} over the API: server peak "
                    f"RSS {after} MiB after, {before} MiB before")  # fmt: skip
    assert after - before < 32, (before, after)
