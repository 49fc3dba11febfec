"""SPEC 3: the request bodies the client puts on the wire, key by key and in order.

Every body here is captured from the HTTP request ``GrsaiClient`` sends (through an
``httpx.MockTransport`` standing in for the real Grsai API), not from the builder function.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from grsai_pipeline.domain.tasks import validate_task
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings
from grsai_pipeline_tests.conftest import TEST_API_KEY

BASE_URL = "https://grsaiapi.com"
REF = "https://example.com/image.jpg"
FIRST = "https://example.com/first.jpg"
LAST = "https://example.com/last.jpg"
SQL_PROMPT = '一只猫 "cinematic" \'; DROP TABLE video_tasks; -- \\ 🎬 émoji\n second line'


@dataclass
class Sent:
    method: str
    path: str
    authorization: str
    content_type: str
    body: Any


def send(task: dict[str, Any], webhook: str = "-1") -> Sent:
    """Submit ``task`` through the client; return the one request that reached the wire."""
    sent: list[Sent] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(
            Sent(
                method=request.method,
                path=request.url.path,
                authorization=request.headers["authorization"],
                content_type=request.headers.get("content-type", ""),
                body=json.loads(request.content),
            )
        )
        return httpx.Response(200, json={"code": 0, "msg": "success", "data": {"id": "remote-1"}})

    async def go() -> None:
        client = GrsaiClient(
            BASE_URL,
            SecretStr(TEST_API_KEY),
            retry=RetrySettings(budget_s=1, backoff_base_s=0.01, backoff_max_s=0.02),
            transport=httpx.MockTransport(handler),
        )
        async with client:
            answer = await client.submit(validate_task(task), webhook=webhook)
        assert answer.accepted and answer.task_id == "remote-1"

    asyncio.run(go())
    assert len(sent) == 1
    request = sent[0]
    assert request.method == "POST"
    assert request.authorization == f"Bearer {TEST_API_KEY}"
    assert request.content_type.startswith("application/json")
    return request


def assert_body(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """The whole dict, and its keys in the documented order."""
    assert actual == expected
    assert list(actual) == list(expected)


# --- Sora ----------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [10, 15])
def test_sora_body_without_reference_url(duration: int) -> None:
    sent = send({"prompt": "A cinematic video", "model": "sora-2", "duration": duration})
    assert sent.path == "/v1/video/sora-video"
    assert_body(
        sent.body,
        {
            "model": "sora-2",
            "prompt": "A cinematic video",
            "aspectRatio": "9:16",
            "duration": duration,
            "size": "small",
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize("duration", [10, 15])
def test_sora_body_with_reference_url(duration: int) -> None:
    sent = send(
        {
            "prompt": "A cinematic video",
            "model": "sora-2",
            "reference_url": REF,
            "aspect_ratio": "16:9",
            "duration": duration,
        }
    )
    assert sent.path == "/v1/video/sora-video"
    assert_body(
        sent.body,
        {
            "model": "sora-2",
            "prompt": "A cinematic video",
            "aspectRatio": "16:9",
            "duration": duration,
            "size": "small",
            "url": REF,
            "webHook": "-1",
            "shutProgress": False,
        },
    )


def test_sora_defaults_are_sent_when_the_task_leaves_them_out() -> None:
    sent = send({"prompt": "A cinematic video", "model": "sora-2"})
    assert sent.body["aspectRatio"] == "9:16"
    assert sent.body["duration"] == 10
    assert type(sent.body["duration"]) is int
    assert sent.body["shutProgress"] is False


def test_sora_ignores_veo_meta() -> None:
    sent = send({"prompt": "p", "model": "sora-2", "meta": {"urls": [REF], "firstFrameUrl": FIRST}})
    assert set(sent.body) == {
        "model",
        "prompt",
        "aspectRatio",
        "duration",
        "size",
        "webHook",
        "shutProgress",
    }


# --- Veo -----------------------------------------------------------------------------------

VEO_MODELS = [("veo-flash", "veo3.1-fast"), ("veo-pro", "veo3.1-pro")]


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_nothing_optional(model: str, api_model: str) -> None:
    sent = send({"prompt": "A cinematic video", "model": model})
    assert sent.path == "/v1/video/veo"
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "A cinematic video",
            "aspectRatio": "16:9",
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_first_and_last_frame(model: str, api_model: str) -> None:
    sent = send(
        {
            "prompt": "A cinematic video",
            "model": model,
            "aspect_ratio": "9:16",
            "meta": {"firstFrameUrl": FIRST, "lastFrameUrl": LAST},
        }
    )
    assert sent.path == "/v1/video/veo"
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "A cinematic video",
            "aspectRatio": "9:16",
            "firstFrameUrl": FIRST,
            "lastFrameUrl": LAST,
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_first_frame_only(model: str, api_model: str) -> None:
    sent = send({"prompt": "p", "model": model, "meta": {"firstFrameUrl": FIRST}})
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "p",
            "aspectRatio": "16:9",
            "firstFrameUrl": FIRST,
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_everything(model: str, api_model: str) -> None:
    urls = ["https://example.com/ref1.jpg", "https://example.com/ref2.jpg", REF]
    sent = send(
        {
            "prompt": "A cinematic video",
            "model": model,
            "aspect_ratio": "16:9",
            "reference_url": "https://example.com/ignored.jpg",
            "meta": {"firstFrameUrl": FIRST, "lastFrameUrl": LAST, "urls": urls},
        }
    )
    assert sent.path == "/v1/video/veo"
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "A cinematic video",
            "aspectRatio": "16:9",
            "firstFrameUrl": FIRST,
            "lastFrameUrl": LAST,
            "urls": urls,
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_meta_urls(model: str, api_model: str) -> None:
    urls = ["https://example.com/ref1.jpg"]
    sent = send({"prompt": "p", "model": model, "meta": {"urls": urls}})
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "p",
            "aspectRatio": "16:9",
            "urls": urls,
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(("model", "api_model"), VEO_MODELS)
def test_veo_body_with_reference_url_only_sends_it_as_urls(model: str, api_model: str) -> None:
    sent = send({"prompt": "p", "model": model, "reference_url": REF})
    assert sent.path == "/v1/video/veo"
    assert_body(
        sent.body,
        {
            "model": api_model,
            "prompt": "p",
            "aspectRatio": "16:9",
            "urls": [REF],
            "webHook": "-1",
            "shutProgress": False,
        },
    )


@pytest.mark.parametrize(
    "meta",
    [{}, {"urls": []}, {"firstFrameUrl": None, "lastFrameUrl": None, "urls": None}],
    ids=["empty-meta", "empty-urls", "null-values"],
)
def test_veo_empty_optional_values_are_left_out(meta: dict[str, Any]) -> None:
    sent = send({"prompt": "p", "model": "veo-pro", "meta": meta})
    assert_body(
        sent.body,
        {
            "model": "veo3.1-pro",
            "prompt": "p",
            "aspectRatio": "16:9",
            "webHook": "-1",
            "shutProgress": False,
        },
    )


# --- prompt and webhook --------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sora-2", "veo-flash", "veo-pro"])
def test_prompt_with_unicode_quotes_and_sql_is_sent_verbatim(model: str) -> None:
    sent = send({"prompt": SQL_PROMPT, "model": model})
    assert sent.body["prompt"] == SQL_PROMPT


def test_prompt_of_4000_characters_is_sent_whole() -> None:
    prompt = "猫" * 4000
    assert send({"prompt": prompt, "model": "veo-flash"}).body["prompt"] == prompt


@pytest.mark.parametrize("model", ["sora-2", "veo-flash"])
def test_callback_webhook_is_sent_in_place_of_polling_mode(model: str) -> None:
    hook = "https://app.example.com/api/video/callback?task_id=t-1&token=abc"
    sent = send({"prompt": "p", "model": model}, webhook=hook)
    assert sent.body["webHook"] == hook
    assert list(sent.body)[-2:] == ["webHook", "shutProgress"]
