"""Helpers of the callback tests: tasks the real engine submitted, and callbacks about them
shaped exactly like SPEC 3's poll answers."""

from __future__ import annotations

import math
from typing import Any

import httpx
import sqlalchemy as sa

from grsai_pipeline.config import load_settings
from grsai_pipeline.domain.callbacks import CALLBACK_PATH, callback_token
from grsai_pipeline.engine.loop import Until
from grsai_pipeline.engine.work import batch_worker
from grsai_pipeline_tests.helpers import new_batch
from grsai_pipeline_tests.test_store.store_support import tasks_of

SECRET = "callback-secret-for-tests"
SORA = {"prompt": "A lighthouse at dawn", "model": "sora-2"}
VEO = {"prompt": "A paper boat", "model": "veo-flash"}


def submitted(engine: sa.Engine, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A new batch whose tasks the real engine has sent to the simulator, and not polled yet:
    the callbacks the tests post are the first answers about them."""
    batch_id = new_batch(engine, tasks)
    settings = load_settings().model_copy(update={"poll_interval_s": 3600.0})

    with batch_worker(engine, settings, "test-submit", batch_id) as worker:
        report = worker.run(Until.SUBMITTED, math.inf)

    assert (report.accepted, report.polls) == (len(tasks), 0)
    found = tasks_of(engine, batch_id)
    assert [t["status"] for t in found] == ["processing"] * len(tasks)
    return found


def post(client: httpx.Client, task: dict[str, Any], body: Any, **params: str) -> httpx.Response:
    """A callback to the task's signed URL (``params`` override the query)."""
    query = {"task_id": task["id"], "token": callback_token(SECRET, task["id"])} | params
    return client.post(CALLBACK_PATH, params=query, json=body)


def answer(task: dict[str, Any], **data: Any) -> dict[str, Any]:
    """A poll-shaped answer about the task's current remote task."""
    return {"code": 0, "msg": "success", "data": {"id": task["grsai_task_id"], **data}}


def sora_success(task: dict[str, Any]) -> dict[str, Any]:
    url = f"https://videos.example.com/{task['id']}.mp4"
    return answer(task, status="succeeded", progress=100, results=[{"url": url}])
