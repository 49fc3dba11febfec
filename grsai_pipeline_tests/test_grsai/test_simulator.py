"""The local Grsai-compatible simulator over real loopback HTTP: strict about the wire format,
directives for every outcome, fault injection and stats. Also the client against it."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from grsai_pipeline.dev.generation import (
    REALISTIC_DURATIONS,
    REALISTIC_PROGRESS_MIX,
    draw_duration,
    draw_progress,
)
from grsai_pipeline.dev.server import BackgroundServer
from grsai_pipeline.dev.simulator import DEFAULT_MIX, SimulatorConfig, SimulatorServer
from grsai_pipeline.domain.states import normalise
from grsai_pipeline.domain.tasks import validate_task
from grsai_pipeline.errors import (
    ApiAccessDenied,
    ApiUnavailable,
    RateLimited,
    UpstreamCreditsExhausted,
)
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings
from grsai_pipeline_tests.conftest import TEST_API_KEY

SORA = "/v1/video/sora-video"
VEO = "/v1/video/veo"
POLL = "/v1/draw/result"
FINAL_WITHIN_S = 5.0
FAST = RetrySettings(budget_s=1.0, backoff_base_s=0.005, backoff_max_s=0.02)


def sora_body(prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    return {
        "model": "sora-2",
        "prompt": prompt,
        "aspectRatio": "9:16",
        "duration": 10,
        "size": "small",
        **extra,
        "webHook": "-1",
        "shutProgress": False,
    }


def veo_body(prompt: str = "a cat", model: str = "veo3.1-fast", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "aspectRatio": "16:9",
        **extra,
        "webHook": "-1",
        "shutProgress": False,
    }


# The conftest ``simulator`` fixture starts a server per test, and stopping uvicorn costs about
# 0.15 s; with ~90 cases here, one server for the module, reset through its own control API
# before each test, keeps this module fast. Tests of the fixture itself use ``simulator``.
BASELINE = SimulatorConfig(
    api_key=TEST_API_KEY,
    latency_s=(0.001, 0.005),
    generation_s=(0.05, 0.1),
    mix={"succeeded": 1.0},
    seed=1234,
)


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(BASELINE) as server:
        yield server


@pytest.fixture(scope="module")
def module_http(shared_simulator: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=shared_simulator.base_url,
        headers={"Authorization": f"Bearer {TEST_API_KEY}"},
        timeout=5,
    ) as client:
        yield client


@pytest.fixture
def http(module_http: httpx.Client, shared_simulator: SimulatorServer) -> httpx.Client:
    """Plain HTTP with the right key, to a simulator with no tasks, faults or stats, and
    generations of 50-100 ms."""
    assert module_http.post("/_sim/reset").json() == {"reset": True}
    config = module_http.post("/_sim/config", json=BASELINE.model_dump())
    assert config.status_code == 200
    assert config.json()["generation_s"] == [0.05, 0.1]
    assert shared_simulator.simulator.stats() == {"tasks": 0, "submits_by_prompt": {}}
    return module_http


@pytest.fixture
def sim(http: httpx.Client, shared_simulator: SimulatorServer) -> SimulatorServer:
    """The same fresh simulator, for tests that drive it with ``GrsaiClient``."""
    return shared_simulator


def submit_id(http: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["code"] == 0 and answer["msg"] == "success", answer
    return str(answer["data"]["id"])


def poll_until_final(http: httpx.Client, task_id: str) -> dict[str, Any]:
    """Poll until the answer is final (succeeded, failed, or code != 0), within a deadline."""
    deadline = time.monotonic() + FINAL_WITHIN_S
    while time.monotonic() < deadline:
        response = http.post(POLL, json={"id": task_id})
        assert response.status_code == 200, response.text
        answer = response.json()
        if answer["code"] != 0 or answer["data"]["status"] in ("succeeded", "failed"):
            return answer
        assert answer["data"]["status"] == "running"
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish within {FINAL_WITHIN_S} s")


def stats(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/_sim/stats")
    assert response.status_code == 200
    return response.json()


def add_faults(http: httpx.Client, *rules: dict[str, Any]) -> None:
    response = http.post("/_sim/faults", json=list(rules))
    assert response.status_code == 200, response.text


def run_client(sim: SimulatorServer, call: Any, *, key: str = TEST_API_KEY, **kwargs: Any) -> Any:
    """Run ``call(client)`` with a GrsaiClient against the simulator; return (result, stats)."""
    kwargs.setdefault("retry", FAST)

    async def go() -> Any:
        async with GrsaiClient(sim.base_url, SecretStr(key), **kwargs) as client:
            return await call(client), client.stats

    return asyncio.run(go())


async def client_until_final(client: GrsaiClient, spec: Any) -> tuple[Any, Any]:
    """Submit ``spec`` and poll it with the client until its normalised outcome is final."""
    answer = await client.submit(spec)
    assert answer.accepted, answer
    deadline = time.monotonic() + FINAL_WITHIN_S
    while time.monotonic() < deadline:
        result = await client.poll(answer.task_id, is_sora=spec.is_sora)
        outcome = normalise(result)
        if outcome.state in ("succeeded", "failed"):
            return result, outcome
        await asyncio.sleep(0.02)
    raise AssertionError("the task did not finish in time")


# --- authentication ------------------------------------------------------------------------


def test_request_without_the_key_gets_401(simulator: SimulatorServer) -> None:
    bodies = {SORA: sora_body(), VEO: veo_body(), POLL: {"id": "x"}}
    headers_without_the_key = (
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": TEST_API_KEY},
        {"Authorization": f"Bearer {TEST_API_KEY}x"},
    )
    with httpx.Client(base_url=simulator.base_url, timeout=5) as anonymous:
        for path, body in bodies.items():
            for headers in headers_without_the_key:
                response = anonymous.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["code"] == 401
    assert simulator.simulator.stats()["tasks"] == 0
    assert simulator.simulator.stats()["unauthorized"] == 12


def test_fixture_simulator_accepts_the_key_and_plain_prompts_succeed(
    simulator: SimulatorServer,
) -> None:
    spec = validate_task({"prompt": "a plain cat", "model": "veo-pro"})
    (result, outcome), api_stats = run_client(simulator, lambda c: client_until_final(c, spec))
    assert outcome.state == "succeeded"
    assert result.video_url and result.video_url.startswith("http")
    assert api_stats.retries == 0


def test_client_with_a_wrong_key_stops_with_access_denied(sim: SimulatorServer) -> None:
    spec = validate_task({"prompt": "a cat", "model": "sora-2"})
    with pytest.raises(ApiAccessDenied) as info:
        run_client(sim, lambda c: c.submit(spec), key="sk-wrong-key-123456")
    assert info.value.status_code == 401
    assert "sk-wrong-key-123456" not in str(info.value)


def test_unauthenticated_request_does_not_use_up_a_fault(http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "status": 503, "times": 1})
    anonymous = httpx.post(f"{http.base_url}{SORA}", json=sora_body(), timeout=5)
    assert anonymous.status_code == 401
    assert http.post(SORA, json=sora_body()).status_code == 503
    assert http.post(SORA, json=sora_body()).status_code == 200


# --- strict wire format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (SORA, sora_body()),
        (SORA, sora_body(url="https://example.com/ref.jpg")),
        (SORA, {**sora_body(), "duration": 15, "aspectRatio": "16:9"}),
        (VEO, veo_body()),
        (VEO, veo_body(model="veo3.1-pro")),
        (
            VEO,
            veo_body(
                firstFrameUrl="https://example.com/f.jpg",
                lastFrameUrl="https://example.com/l.jpg",
                urls=["https://example.com/1.jpg"] * 3,
            ),
        ),
    ],
)
def test_documented_bodies_are_accepted(http: httpx.Client, path: str, body: dict) -> None:
    assert submit_id(http, path, body).startswith("sim-")


BAD_BODIES = {
    "sora-extra-key": (SORA, sora_body(seed=1)),
    "sora-camelcase-typo": (SORA, sora_body(aspect_ratio="9:16")),
    "veo-extra-key": (VEO, veo_body(duration=10)),
    "sora-missing-size": (SORA, {k: v for k, v in sora_body().items() if k != "size"}),
    "sora-missing-webhook": (SORA, {k: v for k, v in sora_body().items() if k != "webHook"}),
    "sora-missing-shutprogress": (
        SORA,
        {k: v for k, v in sora_body().items() if k != "shutProgress"},
    ),
    "sora-missing-prompt": (SORA, {k: v for k, v in sora_body().items() if k != "prompt"}),
    "sora-missing-duration": (SORA, {k: v for k, v in sora_body().items() if k != "duration"}),
    "veo-missing-aspect": (VEO, {k: v for k, v in veo_body().items() if k != "aspectRatio"}),
    "veo-missing-shutprogress": (
        VEO,
        {k: v for k, v in veo_body().items() if k != "shutProgress"},
    ),
    "sora-empty-url": (SORA, sora_body(url="")),
    "sora-null-url": (SORA, sora_body(url=None)),
    "veo-empty-urls": (VEO, veo_body(urls=[])),
    "veo-empty-first-frame": (VEO, veo_body(firstFrameUrl="")),
    "veo-null-last-frame": (VEO, veo_body(lastFrameUrl=None)),
    "veo-four-urls": (VEO, veo_body(urls=["https://example.com/1.jpg"] * 4)),
    "sora-wrong-model": (SORA, {**sora_body(), "model": "sora-1"}),
    "veo-our-model-name": (VEO, veo_body(model="veo-flash")),
    "sora-body-on-veo-path": (VEO, sora_body()),
    "sora-duration-as-string": (SORA, {**sora_body(), "duration": "10"}),
    "sora-shutprogress-as-string": (SORA, {**sora_body(), "shutProgress": "false"}),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_body_off_the_documented_shape_gets_400(http: httpx.Client, case: str) -> None:
    path, body = BAD_BODIES[case]
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["code"] == 400
    assert response.json()["msg"].startswith("bad request")
    after = stats(http)
    assert after["bad_requests"] == 1
    assert after["tasks"] == 0
    assert after["submits_by_prompt"] == {}


def test_submit_that_is_not_json_gets_400(http: httpx.Client) -> None:
    response = http.post(SORA, content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("body", [{}, {"id": "x", "extra": 1}, {"id": 5}, ["x"]])
def test_poll_body_other_than_id_gets_400(http: httpx.Client, body: Any) -> None:
    assert http.post(POLL, json=body).status_code == 400


# --- outcomes by directive -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["veo3.1-fast", "veo3.1-pro"])
def test_succeeded_veo_video_is_at_data_url(http: httpx.Client, model: str) -> None:
    task_id = submit_id(http, VEO, veo_body("a cat [sim:succeeded]", model=model))
    answer = poll_until_final(http, task_id)
    data = answer["data"]
    assert answer["code"] == 0
    assert data["id"] == task_id
    assert data["status"] == "succeeded"
    assert data["progress"] == 100
    assert data["url"].startswith("http")
    assert "results" not in data


def test_succeeded_sora_video_is_at_results_0_url(http: httpx.Client) -> None:
    task_id = submit_id(http, SORA, sora_body("a cat [sim:succeeded]"))
    data = poll_until_final(http, task_id)["data"]
    assert data["status"] == "succeeded"
    assert data["progress"] == 100
    assert data["results"][0]["url"].startswith("http")
    assert "url" not in data


def test_running_answers_carry_growing_progress(http: httpx.Client) -> None:
    http.post("/_sim/config", json={"generation_s": [0.4, 0.4]})
    task_id = submit_id(http, SORA, sora_body("slow cat [sim:succeeded]"))
    seen = []
    deadline = time.monotonic() + FINAL_WITHIN_S
    while time.monotonic() < deadline:
        data = http.post(POLL, json={"id": task_id}).json()["data"]
        if data["status"] != "running":
            break
        seen.append(data["progress"])
        time.sleep(0.05)
    assert len(seen) >= 2
    assert seen == sorted(seen)
    assert all(0 <= p < 100 for p in seen)
    assert data["status"] == "succeeded"


@pytest.mark.parametrize(
    "outcome", ["input_moderation", "output_moderation", "error"], ids=lambda o: o
)
@pytest.mark.parametrize("path", [SORA, VEO])
def test_failure_directives_fail_with_their_reason(
    http: httpx.Client, outcome: str, path: str
) -> None:
    body = sora_body if path == SORA else veo_body
    task_id = submit_id(http, path, body(f"a cat [sim:{outcome}]"))
    data = poll_until_final(http, task_id)["data"]
    assert data["status"] == "failed"
    assert data["failure_reason"] == outcome
    assert data["error"]
    assert not data.get("url")
    assert not data.get("results")


@pytest.mark.parametrize("path", [SORA, VEO])
def test_no_url_directive_succeeds_without_a_video(http: httpx.Client, path: str) -> None:
    body = sora_body if path == SORA else veo_body
    task_id = submit_id(http, path, body("a cat [sim:no_url]"))
    data = poll_until_final(http, task_id)["data"]
    assert data["status"] == "succeeded"
    assert not data.get("url")
    assert not data.get("results")


@pytest.mark.parametrize("path", [SORA, VEO])
def test_api_error_directive_rejects_the_submit(http: httpx.Client, path: str) -> None:
    body = sora_body if path == SORA else veo_body
    response = http.post(path, json=body("a cat [sim:api_error]"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["code"] != 0
    assert answer["msg"]
    assert "data" not in answer or not answer["data"]
    assert stats(http)["tasks"] == 0


def test_lost_directive_answers_minus_22_forever(http: httpx.Client) -> None:
    task_id = submit_id(http, VEO, veo_body("a cat [sim:lost]"))
    # Well past the longest generation (0.1 s).
    until = time.monotonic() + 0.3
    answers = []
    while time.monotonic() < until:
        answers.append(http.post(POLL, json={"id": task_id}).json())
        time.sleep(0.03)
    assert len(answers) >= 5
    assert all(a == {"code": -22, "msg": "task not found"} for a in answers)


def test_unknown_task_id_answers_minus_22(http: httpx.Client) -> None:
    answer = http.post(POLL, json={"id": "sim-does-not-exist"}).json()
    assert answer["code"] == -22


def test_not_found_window_answers_minus_22_right_after_submit(http: httpx.Client) -> None:
    http.post("/_sim/config", json={"not_found_window_s": 0.2})
    task_id = submit_id(http, SORA, sora_body("a cat [sim:succeeded]"))
    assert http.post(POLL, json={"id": task_id}).json()["code"] == -22
    time.sleep(0.25)
    answer = poll_until_final(http, task_id)
    assert answer["code"] == 0 and answer["data"]["status"] == "succeeded"


def test_comma_list_applies_per_submission_of_the_same_prompt(http: httpx.Client) -> None:
    prompt = "a dog [sim:error,api_error,succeeded]"
    first = submit_id(http, VEO, veo_body(prompt))
    assert poll_until_final(http, first)["data"]["failure_reason"] == "error"
    second = http.post(VEO, json=veo_body(prompt)).json()
    assert second["code"] != 0
    third = submit_id(http, VEO, veo_body(prompt))
    assert poll_until_final(http, third)["data"]["status"] == "succeeded"
    # Past the end of the list, the last outcome repeats.
    fourth = submit_id(http, VEO, veo_body(prompt))
    assert poll_until_final(http, fourth)["data"]["status"] == "succeeded"
    # Another prompt has its own count.
    other = submit_id(http, VEO, veo_body("a dog [sim:error,succeeded] again"))
    assert poll_until_final(http, other)["data"]["failure_reason"] == "error"


@pytest.mark.parametrize(
    ("task", "state", "message"),
    [
        ({"model": "sora-2", "prompt": "x [sim:succeeded]"}, "succeeded", None),
        ({"model": "veo-flash", "prompt": "x [sim:succeeded]"}, "succeeded", None),
        ({"model": "veo-pro", "prompt": "x [sim:succeeded]"}, "succeeded", None),
        ({"model": "sora-2", "prompt": "x [sim:no_url]"}, "failed", "SUCCEEDED_WITHOUT_VIDEO_URL"),
        ({"model": "veo-pro", "prompt": "x [sim:no_url]"}, "failed", "SUCCEEDED_WITHOUT_VIDEO_URL"),
        (
            {"model": "veo-flash", "prompt": "x [sim:input_moderation]"},
            "failed",
            "input_moderation",
        ),
        ({"model": "sora-2", "prompt": "x [sim:output_moderation]"}, "failed", "output_moderation"),
        ({"model": "sora-2", "prompt": "x [sim:error]"}, "failed", "error"),
    ],
)
def test_client_follows_each_outcome_to_its_normalised_end(
    sim: SimulatorServer, task: dict[str, Any], state: str, message: str | None
) -> None:
    spec = validate_task(task)
    (result, outcome), api_stats = run_client(sim, lambda c: client_until_final(c, spec))
    assert outcome.state == state
    if state == "succeeded":
        assert outcome.video_url == result.video_url
        assert outcome.video_url is not None and outcome.video_url.startswith("http")
        assert outcome.progress == 100
    else:
        assert outcome.error_message is not None and message in outcome.error_message
    assert api_stats.calls >= 2
    assert api_stats.retries == 0


def test_client_submit_rejected_by_api_error_directive(sim: SimulatorServer) -> None:
    spec = validate_task({"model": "veo-pro", "prompt": "x [sim:api_error]"})
    answer, _ = run_client(sim, lambda c: c.submit(spec))
    assert not answer.accepted
    assert answer.msg == "prompt rejected by upstream policy"


def test_client_sends_unicode_and_sql_prompt_verbatim(sim: SimulatorServer) -> None:
    prompt = '一只猫 "cinematic" \'; DROP TABLE video_tasks; -- 🎬'
    spec = validate_task({"model": "sora-2", "prompt": prompt})
    answer, _ = run_client(sim, lambda c: c.submit(spec))
    assert answer.accepted
    assert sim.simulator.stats()["submits_by_prompt"] == {prompt: 1}


def test_client_polls_lost_task_as_not_found(sim: SimulatorServer) -> None:
    spec = validate_task({"model": "sora-2", "prompt": "x [sim:lost]"})

    async def call(client: GrsaiClient) -> list[str]:
        answer = await client.submit(spec)
        states = []
        for _ in range(4):
            states.append(normalise(await client.poll(answer.task_id, is_sora=True)).state)
            await asyncio.sleep(0.05)
        return states

    states, _ = run_client(sim, call)
    assert states == ["not_found"] * 4


# --- injected faults -----------------------------------------------------------------------


def test_fault_status_with_retry_after(http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "status": 429, "retry_after": "3", "times": 1})
    limited = http.post(SORA, json=sora_body())
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    assert http.post(SORA, json=sora_body()).status_code == 200


def test_client_waits_out_injected_429s(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "status": 429, "retry_after": "0", "times": 2})
    spec = validate_task({"model": "veo-flash", "prompt": "busy cat"})
    answer, api_stats = run_client(sim, lambda c: c.submit(spec))
    assert answer.accepted
    assert api_stats.rate_limited == 2
    assert api_stats.retries == 2
    assert api_stats.calls == 3
    assert stats(http)["submits_by_prompt"] == {"busy cat": 1}


def test_client_gives_up_on_endless_429(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "status": 429, "retry_after": "0"})
    spec = validate_task({"model": "sora-2", "prompt": "busy cat"})
    with pytest.raises(RateLimited):
        run_client(sim, lambda c: c.submit(spec), retry=RetrySettings(0.2, 0.005, 0.01))
    assert stats(http)["submits_by_prompt"] == {}


def test_fault_body_that_is_not_json(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "poll", "status": 502, "body": "<html>Bad Gateway</html>"})
    task_id = submit_id(http, SORA, sora_body())
    raw = http.post(POLL, json={"id": task_id})
    assert raw.status_code == 502
    assert raw.text == "<html>Bad Gateway</html>"
    with pytest.raises(ValueError):
        json.loads(raw.text)
    with pytest.raises(ApiUnavailable) as info:
        run_client(sim, lambda c: c.poll(task_id, is_sora=True), retry=RetrySettings(0.1, 0.005))
    assert "502" in str(info.value)


def test_client_retries_a_not_json_200_until_it_clears(
    sim: SimulatorServer, http: httpx.Client
) -> None:
    add_faults(http, {"endpoint": "submit", "status": 200, "body": "oops", "times": 2})
    spec = validate_task({"model": "sora-2", "prompt": "a cat"})
    answer, api_stats = run_client(sim, lambda c: c.submit(spec))
    assert answer.accepted
    assert api_stats.retries == 2


def test_fault_code_and_msg(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "code": -1, "msg": "insufficient credits", "times": 2})
    raw = http.post(VEO, json=veo_body())
    assert raw.status_code == 200
    assert raw.json() == {"code": -1, "msg": "insufficient credits"}
    spec = validate_task({"model": "veo-pro", "prompt": "a cat"})
    with pytest.raises(UpstreamCreditsExhausted):
        run_client(sim, lambda c: c.submit(spec))
    assert stats(http)["tasks"] == 0


def test_fault_delay_answers_late(http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "delay_s": 0.3, "times": 1})
    started = time.monotonic()
    slow = http.post(SORA, json=sora_body())
    assert time.monotonic() - started >= 0.3
    assert slow.status_code == 200 and slow.json()["code"] == 0
    started = time.monotonic()
    assert http.post(SORA, json=sora_body()).status_code == 200
    assert time.monotonic() - started < 0.3


def test_client_retries_a_timeout(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "poll", "delay_s": 0.5, "times": 1})
    task_id = submit_id(http, VEO, veo_body())
    result, api_stats = run_client(sim, lambda c: c.poll(task_id, is_sora=False), timeout_s=0.15)
    assert result.code == 0
    assert api_stats.retries == 1
    assert stats(http)["poll_requests"] == 2


def test_fault_times_then_normal(http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "submit", "status": 503, "times": 3})
    codes = [http.post(SORA, json=sora_body()).status_code for _ in range(5)]
    assert codes == [503, 503, 503, 200, 200]
    assert stats(http)["faults_submit"] == 3


def test_fault_prompt_contains(sim: SimulatorServer, http: httpx.Client) -> None:
    add_faults(
        http,
        {"endpoint": "any", "prompt_contains": "cursed", "status": 500},
    )
    assert http.post(SORA, json=sora_body("a cursed cat")).status_code == 500
    assert http.post(SORA, json=sora_body("a lucky cat")).status_code == 200
    # On poll, the polled task's prompt decides.
    http.delete("/_sim/faults")
    task_id = submit_id(http, SORA, sora_body("another cursed cat"))
    lucky_id = submit_id(http, SORA, sora_body("a lucky cat"))
    add_faults(http, {"endpoint": "poll", "prompt_contains": "cursed", "status": 503})
    assert http.post(POLL, json={"id": task_id}).status_code == 503
    assert http.post(POLL, json={"id": lucky_id}).status_code == 200


def test_fault_endpoint_filter(http: httpx.Client) -> None:
    add_faults(http, {"endpoint": "poll", "status": 500})
    task_id = submit_id(http, SORA, sora_body())
    assert http.post(POLL, json={"id": task_id}).status_code == 500


def test_delete_faults_clears_them(http: httpx.Client) -> None:
    add_faults(http, {"status": 503}, {"endpoint": "poll", "code": -9, "msg": "x"})
    assert http.post(VEO, json=veo_body()).status_code == 503
    assert http.post(VEO, json=veo_body()).status_code == 503
    cleared = http.delete("/_sim/faults")
    assert cleared.status_code == 200 and cleared.json() == {"faults": 0}
    task_id = submit_id(http, VEO, veo_body())
    assert http.post(POLL, json={"id": task_id}).json()["code"] == 0


@pytest.mark.parametrize(
    "rule",
    [{"endpoint": "everything"}, {"status": 99}, {"times": 0}, {"delay_s": -1}, {"bogus": 1}],
)
def test_invalid_fault_rule_is_refused(http: httpx.Client, rule: dict[str, Any]) -> None:
    response = http.post("/_sim/faults", json=rule)
    assert response.status_code == 422
    # Nothing was installed.
    assert http.post(SORA, json=sora_body()).status_code == 200


# --- stats ---------------------------------------------------------------------------------


def test_stats_count_submissions_per_prompt(http: httpx.Client) -> None:
    for _ in range(3):
        submit_id(http, SORA, sora_body("cat"))
    submit_id(http, VEO, veo_body("dog"))
    http.post(VEO, json=veo_body("fox [sim:api_error]"))
    http.post(VEO, json=veo_body("", urls=[]))  # refused: not a submission
    add_faults(http, {"endpoint": "submit", "status": 503, "times": 1})
    http.post(SORA, json=sora_body("cat"))  # answered by a fault: never reached the API
    counted = stats(http)
    assert counted["submits_by_prompt"] == {"cat": 3, "dog": 1, "fox [sim:api_error]": 1}
    assert counted["tasks"] == 4
    assert counted["submits_accepted"] == 4
    assert counted["submits_rejected"] == 1
    assert counted["bad_requests"] == 1
    assert counted["submit_requests"] == 7


def test_reset_forgets_everything(http: httpx.Client) -> None:
    task_id = submit_id(http, SORA, sora_body("cat"))
    add_faults(http, {"endpoint": "submit", "status": 503})
    assert http.post("/_sim/reset").json() == {"reset": True}
    assert stats(http) == {"tasks": 0, "submits_by_prompt": {}}
    assert http.post(POLL, json={"id": task_id}).json()["code"] == -22
    assert http.post(SORA, json=sora_body("cat")).status_code == 200


class _CallbackRecorder:
    """A receiver that keeps every callback body, over real HTTP."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

        async def record(request: Request) -> JSONResponse:
            self.bodies.append(await request.json())
            return JSONResponse({"ok": True})

        self.app = Starlette(routes=[Route("/cb", record, methods=["POST"])])


@pytest.mark.parametrize(
    ("prompt", "final"),
    [("a cat", "succeeded"), ("a cat [sim:error]", "failed")],
)
def test_a_webhook_submit_is_called_back_half_way_and_at_its_end(
    http: httpx.Client, prompt: str, final: str
) -> None:
    recorder = _CallbackRecorder()
    with BackgroundServer(recorder.app) as receiver:
        task_id = submit_id(http, SORA, sora_body(prompt) | {"webHook": f"{receiver.base_url}/cb"})
        deadline = time.monotonic() + FINAL_WITHIN_S
        while len(recorder.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)

    half_way, end = recorder.bodies
    assert half_way["code"] == 0 and half_way["data"]["id"] == task_id
    assert half_way["data"]["status"] == "running" and half_way["data"]["progress"] >= 50
    assert end["data"] == poll_until_final(http, task_id)["data"]
    assert end["data"]["status"] == final
    assert stats(http)["callbacks_sent"] == 2


def test_a_polling_submit_is_never_called_back(http: httpx.Client) -> None:
    poll_until_final(http, submit_id(http, SORA, sora_body()))

    assert "callbacks_sent" not in stats(http)


# --- realistic generations (issue 25) --------------------------------------------------------

MODELS = ("sora-2", "veo3.1-fast", "veo3.1-pro")
# Fractions of a duration at which a poller might look (0.0 to 0.99 in steps of 1 %).
FRACTIONS = [i / 100 for i in range(100)]


def realistic_body(model: str, prompt: str) -> tuple[str, dict[str, Any]]:
    if model == "sora-2":
        return SORA, sora_body(prompt)
    return VEO, veo_body(prompt, model=model)


def task_records(http: httpx.Client) -> dict[str, dict[str, Any]]:
    response = http.get("/_sim/tasks")
    assert response.status_code == 200
    return response.json()


def by_prompt(http: httpx.Client) -> dict[str, tuple[str, float, str, str]]:
    return {
        r["prompt"]: (r["model"], r["duration_s"], r["progress_kind"], r["outcome"])
        for r in task_records(http).values()
    }


def test_realistic_durations_per_model_stay_in_their_ranges_over_many_seeds() -> None:
    for model in MODELS:
        shape = REALISTIC_DURATIONS[model]
        drawn = sorted(
            draw_duration(random.Random(seed), model, REALISTIC_DURATIONS) for seed in range(4000)
        )
        assert shape.low_s <= drawn[0] and drawn[-1] <= shape.high_s, model
        median = statistics.median(drawn)
        assert 0.9 * shape.median_s <= median <= 1.1 * shape.median_s, (model, median)
        # A long tail: the slowest 5 % take at least 1.6 times the median.
        assert drawn[int(0.95 * len(drawn))] >= 1.6 * median, model
    sora = [
        draw_duration(random.Random(seed), "sora-2", REALISTIC_DURATIONS) for seed in range(4000)
    ]
    assert 0.75 <= sum(1 for d in sora if 120 <= d <= 300) / len(sora) <= 0.87  # usually 2-5 min
    pro = [draw_duration(random.Random(s), "veo3.1-pro", REALISTIC_DURATIONS) for s in range(4000)]
    assert max(pro) > 12 * 60  # Veo at peak: up to 16 minutes
    # A model not in the table is drawn like Sora-2; the time scale divides.
    assert draw_duration(random.Random(3), "sora-3", REALISTIC_DURATIONS) == draw_duration(
        random.Random(3), "sora-2", REALISTIC_DURATIONS
    )
    assert draw_duration(random.Random(3), "veo3.1-pro", REALISTIC_DURATIONS, 10) == pytest.approx(
        draw_duration(random.Random(3), "veo3.1-pro", REALISTIC_DURATIONS) / 10
    )


def test_realistic_progress_kinds_come_in_their_shares() -> None:
    rng = random.Random(25)
    kinds = Counter(draw_progress(rng, REALISTIC_PROGRESS_MIX).kind for _ in range(6000))
    for kind, share in REALISTIC_PROGRESS_MIX.items():
        assert abs(kinds[kind] / 6000 - share) < 0.03, (kind, kinds)


def test_realistic_progress_rises_noisily_sticks_or_steps() -> None:
    curves: dict[str, list[list[int]]] = {kind: [] for kind in REALISTIC_PROGRESS_MIX}
    for seed in range(2000):
        curve = draw_progress(random.Random(seed), REALISTIC_PROGRESS_MIX)
        curves[curve.kind].append([curve.at(f) for f in FRACTIONS])
    for kind, seen in curves.items():
        assert seen, kind
        assert all(0 <= p <= 99 for values in seen for p in values), kind
        assert all(values[0] == 0 for values in seen), kind

    def went_back(values: list[int]) -> bool:
        return any(b < a for a, b in itertools.pairwise(values))

    noisy = curves["noisy"]
    # Rises with time: late answers above early ones, near the top at the end ...
    assert all(v[90] > v[50] > v[10] for v in noisy)
    assert statistics.median(v[99] for v in noisy) >= 95
    # ... but noisily: many tasks go back now and then, never far.
    assert sum(map(went_back, noisy)) / len(noisy) > 0.3
    assert all(b - a > -15 for v in noisy for a, b in itertools.pairwise(v))
    # Stuck: the last 15-45 % of the duration at one value of 90-99.
    for values in curves["stuck"]:
        assert 90 <= values[99] <= 99
        assert len(set(values[85:])) == 1
    stuck_for = [sum(1 for p in v if p == v[99]) for v in curves["stuck"]]
    assert min(stuck_for) >= 15 and max(stuck_for) >= 35
    # Coarse: only whole steps, and every step shows up.
    assert {p for v in curves["coarse_25"] for p in v} == {0, 25, 50, 75}
    thirds = {p for v in curves["coarse_33"] for p in v}
    assert {0, 33, 66} <= thirds <= {0, 33, 66, 99}
    # Flat: never moves until the end.
    assert {p for v in curves["flat"] for p in v} == {0}


def test_realistic_progress_is_reproducible_from_its_generator() -> None:
    first = draw_progress(random.Random(9), REALISTIC_PROGRESS_MIX)
    again = draw_progress(random.Random(9), REALISTIC_PROGRESS_MIX)
    other = draw_progress(random.Random(10), REALISTIC_PROGRESS_MIX)
    assert first == again
    assert [first.at(f) for f in FRACTIONS] == [again.at(f) for f in FRACTIONS]
    assert first != other


def test_realistic_mode_over_http_draws_per_model_and_scales_time(http: httpx.Client) -> None:
    scale = 1000.0
    http.post("/_sim/config", json={"realistic": True, "time_scale": scale, "seed": 1})
    for n in range(60):
        submit_id(http, *realistic_body(MODELS[n % 3], f"cat {n}"))
    records = task_records(http)
    assert len(records) == 60
    kinds = Counter(r["progress_kind"] for r in records.values())
    assert set(kinds) <= set(REALISTIC_PROGRESS_MIX) and len(kinds) >= 3
    for record in records.values():
        shape = REALISTIC_DURATIONS[record["model"]]
        assert shape.low_s / scale <= record["duration_s"] <= shape.high_s / scale
        assert record["ended"] == pytest.approx(record["made"] + record["duration_s"])
        assert record["told"] is None  # never polled
        assert record["outcome"] == "succeeded"
    by_model = {
        model: statistics.median(r["duration_s"] for r in records.values() if r["model"] == model)
        for model in MODELS
    }
    assert by_model["veo3.1-fast"] < by_model["sora-2"] < by_model["veo3.1-pro"]


def test_realistic_running_answers_end_at_100(http: httpx.Client) -> None:
    # Sora at 1/600: 0.1-1.5 s; progress read as it runs, then the final answer.
    http.post("/_sim/config", json={"realistic": True, "time_scale": 600.0, "seed": 2})
    ids = [submit_id(http, SORA, sora_body(f"dog {n}")) for n in range(5)]
    for task_id in ids:
        seen = []
        deadline = time.monotonic() + FINAL_WITHIN_S
        while time.monotonic() < deadline:
            data = http.post(POLL, json={"id": task_id}).json()["data"]
            if data["status"] != "running":
                break
            seen.append(data["progress"])
            time.sleep(0.02)
        assert all(0 <= p <= 99 for p in seen)
        assert data["status"] == "succeeded" and data["progress"] == 100
    # When a poll first told each end: after it, and only once (a later poll changes nothing).
    told = {task_id: r["told"] for task_id, r in task_records(http).items()}
    http.post(POLL, json={"id": ids[0]})
    records = task_records(http)
    assert {task_id: r["told"] for task_id, r in records.items()} == told
    assert all(r["ended"] - 0.01 <= r["told"] <= r["ended"] + 1.0 for r in records.values())


def test_realistic_tasks_are_the_same_for_a_seed_whatever_the_order(http: httpx.Client) -> None:
    prompts = [(MODELS[n % 3], f"fox {n}") for n in range(30)]
    # The default outcome mix too: a rejected submit ([code -2]) is an outcome drawn like others.
    http.post("/_sim/config", json={"realistic": True, "seed": 11, "mix": DEFAULT_MIX})

    def submit_all(order: list[tuple[str, str]]) -> dict[str, tuple[str, float, str, str]]:
        rejected = {}
        for model, prompt in order:
            path, body = realistic_body(model, prompt)
            answer = http.post(path, json=body).json()
            if answer["code"] != 0:
                rejected[prompt] = (model, 0.0, "", "api_error")
        return by_prompt(http) | rejected

    first = submit_all(prompts)
    http.post("/_sim/reset")
    again = submit_all(prompts[::-1])
    assert first == again
    assert len({outcome for *_, outcome in first.values()}) >= 2  # the mix shows, reproducibly
    # A second submit of the same prompt is a new draw; another seed, other tasks.
    path, body = realistic_body(*prompts[0])
    http.post(path, json=body)
    durations = [r["duration_s"] for r in task_records(http).values() if r["prompt"] == "fox 0"]
    assert len(durations) == 2 and durations[0] != durations[1]
    http.post("/_sim/reset")
    http.post("/_sim/config", json={"seed": 12})
    other = submit_all(prompts)
    assert sum(1 for p in first if first[p][1] != other[p][1]) >= 25


def test_time_scale_divides_the_uniform_generation_times_too(http: httpx.Client) -> None:
    http.post("/_sim/config", json={"generation_s": [4.0, 8.0], "time_scale": 40.0})
    for n in range(20):
        submit_id(http, SORA, sora_body(f"owl {n}"))
    records = task_records(http).values()
    assert all(0.1 <= r["duration_s"] <= 0.2 for r in records)
    assert {r["progress_kind"] for r in records} == {"linear"}


def test_realistic_config_is_checked(http: httpx.Client) -> None:
    assert SimulatorConfig().realistic is False and SimulatorConfig().time_scale == 1.0
    unordered = {"median_s": 1, "sigma": 0.1, "low_s": 2, "high_s": 3}
    for bad in (
        {"progress_mix": {"wobbly": 1.0}},
        {"progress_mix": {"flat": 0.0}},
        {"time_scale": 0},
        {"durations": {"sora-2": unordered}},
    ):
        assert http.post("/_sim/config", json=bad).status_code == 422, bad
