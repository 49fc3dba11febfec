"""The callback receiver of SPEC 5, over real HTTP, on both databases.

Tasks reach ``processing`` through the real submit step against the simulator; the callbacks
are then posted by the test, shaped exactly like SPEC 3's poll answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline.dev.server import BackgroundServer
from grsai_pipeline.domain.callbacks import CALLBACK_PATH, callback_token, callback_url
from grsai_pipeline.domain.states import RetryPolicy
from grsai_pipeline.webhook.app import MAX_BODY_BYTES, create_app
from grsai_pipeline_tests.cutting_proxy import CuttingProxy
from grsai_pipeline_tests.helpers import table_snapshot
from grsai_pipeline_tests.test_store.store_support import task_row
from grsai_pipeline_tests.test_webhook.webhook_support import (
    SECRET,
    SORA,
    VEO,
    answer,
    post,
    sora_success,
    submitted,
)


@pytest.fixture
def receiver(engine: sa.Engine) -> Iterator[httpx.Client]:
    """The receiver on a loopback port, and a client for it."""
    app = create_app(engine, SECRET, RetryPolicy(max_task_retries=2))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as client:
        yield client


def test_the_signed_url_the_submit_carries_is_the_one_the_receiver_accepts(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client
) -> None:
    (task,) = submitted(engine, [SORA])
    url = callback_url(str(receiver.base_url), SECRET, task["id"])

    response = receiver.post(url, json=sora_success(task))

    assert response.status_code == 200, response.text
    assert response.json() == {"task_id": task["id"], "result": "applied", "status": "succeeded"}


@pytest.mark.parametrize(
    ("spec", "data", "video_url"),
    [
        (
            SORA,
            {"results": [{"url": "https://v.example.com/s.mp4"}]},
            "https://v.example.com/s.mp4",
        ),
        (VEO, {"url": "https://v.example.com/v.mp4"}, "https://v.example.com/v.mp4"),
    ],
)
def test_a_success_callback_finishes_the_task_with_its_video(
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    receiver: httpx.Client,
    spec: dict[str, Any],
    data: dict[str, Any],
    video_url: str,
) -> None:
    (task,) = submitted(engine, [spec])

    response = post(receiver, task, answer(task, status="succeeded", progress=100, **data))

    assert response.status_code == 200, response.text
    row = task_row(engine, task["id"])
    assert (row["status"], row["video_url"], row["progress"]) == ("succeeded", video_url, 100)


def test_a_bare_data_body_is_accepted_too(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client
) -> None:
    (task,) = submitted(engine, [VEO])
    body = {"id": task["grsai_task_id"], "status": "succeeded", "url": "https://v.example.com/b"}

    assert post(receiver, task, body).json()["status"] == "succeeded"
    assert task_row(engine, task["id"])["video_url"] == "https://v.example.com/b"


def test_a_progress_callback_stores_the_progress_and_the_task_goes_on(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client
) -> None:
    (task,) = submitted(engine, [SORA])

    response = post(receiver, task, answer(task, status="running", progress=40))

    assert response.json() == {"task_id": task["id"], "result": "applied", "status": "processing"}
    row = task_row(engine, task["id"])
    assert (row["status"], row["progress"]) == ("processing", 40)


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"status": "failed", "failure_reason": "input_moderation", "error": "policy"}, 0,
         "input_moderation: policy"),
        ({"status": "succeeded", "results": []}, 0, "SUCCEEDED_WITHOUT_VIDEO_URL"),
        ({}, 1002, "upstream said no"),
    ],
)  # fmt: skip
def test_failures_are_normalised_as_a_poll_would(
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    receiver: httpx.Client,
    data: dict[str, Any],
    code: int,
    message: str,
) -> None:
    (task,) = submitted(engine, [SORA])
    body = answer(task, **data) | {"code": code, "msg": "upstream said no" if code else "ok"}

    assert post(receiver, task, body).json()["status"] == "failed"
    row = task_row(engine, task["id"])
    assert (row["status"], row["error_message"]) == ("failed", message)


def test_the_same_callback_twice_changes_nothing_the_second_time(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client
) -> None:
    (task,) = submitted(engine, [SORA])
    assert post(receiver, task, sora_success(task)).json()["result"] == "applied"
    before = table_snapshot(engine)

    again = post(receiver, task, sora_success(task))

    assert again.status_code == 200
    assert again.json() == {"task_id": task["id"], "result": "unchanged", "status": "succeeded"}
    assert table_snapshot(engine) == before


@pytest.mark.parametrize(
    "late",
    [
        {"status": "running", "progress": 10},
        {"status": "failed", "failure_reason": "output_moderation", "error": "late"},
    ],
)
def test_a_late_callback_never_moves_a_final_task_back(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client, late: dict[str, Any]
) -> None:
    (task,) = submitted(engine, [SORA])
    post(receiver, task, sora_success(task))
    before = table_snapshot(engine)

    response = post(receiver, task, answer(task, **late))

    assert response.json()["result"] == "unchanged"
    assert table_snapshot(engine) == before
    assert task_row(engine, task["id"])["status"] == "succeeded"


def test_a_generation_error_with_attempts_left_goes_back_for_a_new_attempt(
    pipeline_env: dict[str, str], engine: sa.Engine, receiver: httpx.Client
) -> None:
    (task,) = submitted(engine, [SORA])
    error = answer(task, status="failed", failure_reason="error", error="gpu lost")

    assert post(receiver, task, error).json()["status"] == "pending"
    row = task_row(engine, task["id"])
    assert (row["status"], row["grsai_task_id"], row["attempts"]) == ("pending", None, 1)
    before = table_snapshot(engine)
    # The same callback again is about an attempt that is over: refused, nothing changes.
    assert post(receiver, task, error).status_code == 409
    assert table_snapshot(engine) == before


def _oversized(task: dict[str, Any]) -> dict[str, Any]:
    return answer(task, status="running", error="x" * MAX_BODY_BYTES)


# (what is wrong, how to send it, expected status)
REFUSED = [
    ("no token", lambda c, t, o: post(c, t, sora_success(t), token=""), 400),
    ("no task id", lambda c, t, o: c.post(CALLBACK_PATH, json=sora_success(t)), 400),
    ("a forged token", lambda c, t, o: post(c, t, sora_success(t), token="0" * 64), 403),
    ("another task's token",
     lambda c, t, o: post(c, t, sora_success(t), token=callback_token(SECRET, o["id"])), 403),
    ("a token under another secret",
     lambda c, t, o: post(c, t, sora_success(t), token=callback_token("other", t["id"])), 403),
    ("a non-ASCII token", lambda c, t, o: post(c, t, sora_success(t), token="é" * 64), 403),
    ("an unknown task",
     lambda c, t, o: post(c, t, sora_success(t), task_id="no-such-task",
                          token=callback_token(SECRET, "no-such-task")), 404),
    ("a body that is not JSON",
     lambda c, t, o: c.post(CALLBACK_PATH, params={"task_id": t["id"],
                            "token": callback_token(SECRET, t["id"])}, content=b"<html>"), 400),
    ("a body not shaped like an answer",
     lambda c, t, o: post(c, t, {"code": "zero", "data": {"id": t["grsai_task_id"]}}), 422),
    ("data that is a list", lambda c, t, o: post(c, t, [1, 2]), 422),
    ("no data.id", lambda c, t, o: post(c, t, {"code": 0, "data": {"status": "succeeded"}}), 400),
    ("another task's remote id", lambda c, t, o: post(c, t, sora_success(o)), 409),
    ("a body over 64 KiB", lambda c, t, o: post(c, t, _oversized(t)), 413),
    ("GET", lambda c, t, o: c.get(CALLBACK_PATH, params={"task_id": t["id"]}), 405),
    ("another path", lambda c, t, o: c.post("/api/video/other", json=sora_success(t)), 404),
]  # fmt: skip


@pytest.mark.parametrize(("send", "status"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_anything_else_gets_a_4xx_and_changes_nothing(
    pipeline_env: dict[str, str],
    engine: sa.Engine,
    receiver: httpx.Client,
    send: Any,
    status: int,
) -> None:
    task, other = submitted(engine, [SORA, VEO])
    before = table_snapshot(engine)

    response = send(receiver, task, other)

    assert response.status_code == status, response.text
    assert table_snapshot(engine) == before


def test_a_callback_rides_out_a_short_failover_and_answers_503_past_it(
    pipeline_env: dict[str, str], engine: sa.Engine, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Issue 26: the receiver's database behind a proxy that cuts every connection. A cut
    shorter than its patience is waited out and the callback applied; a longer one gets 503
    with Retry-After (the sender may send again; the backstop poll tells the end too)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a failover cuts a server's connections; SQLite is a file")
    monkeypatch.setattr("grsai_pipeline.webhook.app.OUTAGE_TOLERANCE_S", 2.0)
    first, second = submitted(engine, [SORA, SORA])
    url = sa.engine.make_url(database_url)
    with CuttingProxy(url.host or "", url.port or 5432) as proxy:
        proxied = sa.create_engine(url.set(host="127.0.0.1", port=proxy.port))
        app = create_app(proxied, SECRET, RetryPolicy(max_task_retries=2))
        with BackgroundServer(app) as server, httpx.Client(base_url=server.base_url) as client:
            assert post(client, first, answer(first, status="running", progress=5)).is_success
            proxy.cut(1.0)
            assert post(client, first, sora_success(first)).status_code == 200
            proxy.cut(30.0)
            refused = post(client, second, sora_success(second))
        proxied.dispose()
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "10"
    assert task_row(engine, first["id"])["status"] == "succeeded"
    assert task_row(engine, second["id"])["status"] == "processing"
