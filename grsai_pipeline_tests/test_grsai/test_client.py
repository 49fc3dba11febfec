"""SPEC 3: the client against a stand-in for the real Grsai API (``httpx.MockTransport``).

Answers are shaped exactly like SPEC 3. Retry budgets and backoffs are tiny so that every
test runs in well under a second.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from grsai_pipeline.domain.states import RemoteResult, normalise
from grsai_pipeline.domain.tasks import TaskSpec, validate_task
from grsai_pipeline.errors import (
    ApiAccessDenied,
    ApiUnavailable,
    GrsaiError,
    RateLimited,
    RunStopped,
    UpstreamCreditsExhausted,
)
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings, SubmitAnswer

BASE_URL = "https://grsaiapi.com"
# Distinctive so that a search for it in any message cannot miss.
KEY = "sk-live-Zq93LmX0pW7vT2kQ"
FAST = RetrySettings(budget_s=0.1, backoff_base_s=0.005, backoff_max_s=0.02)
SORA_TASK = validate_task({"prompt": "a cat on a roof", "model": "sora-2"})
VEO_TASK = validate_task({"prompt": "a cat on a roof", "model": "veo-flash"})
ACCEPTED = {"code": 0, "msg": "success", "data": {"id": "remote-1"}}

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class Api:
    """A scripted stand-in for the Grsai API: answers in turn, the last one repeats."""

    def __init__(self, *answers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request)

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def reply(status: int = 200, payload: Any = None, **kwargs: Any):
    def answer(request: httpx.Request) -> httpx.Response:
        if payload is None:
            return httpx.Response(status, **kwargs)
        return httpx.Response(status, json=payload, **kwargs)

    return answer


def raise_(exc_type: type[httpx.TransportError], message: str = "boom"):
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc_type(message, request=request)

    return answer


def client_for(handler: Handler, **kwargs: Any) -> GrsaiClient:
    kwargs.setdefault("retry", FAST)
    return GrsaiClient(BASE_URL, SecretStr(KEY), transport=httpx.MockTransport(handler), **kwargs)


def run(handler: Handler, call: Callable[[GrsaiClient], Awaitable[Any]], **kwargs: Any):
    """Run ``call`` with a fresh client; return its result and the client (for its stats)."""

    async def go() -> tuple[Any, GrsaiClient]:
        async with client_for(handler, **kwargs) as client:
            return await call(client), client

    return asyncio.run(go())


def submit(task: TaskSpec = SORA_TASK):
    return lambda client: client.submit(task)


def poll(task_id: str = "remote-1", *, is_sora: bool = True):
    return lambda client: client.poll(task_id, is_sora=is_sora)


def raised(handler: Handler, call: Callable[[GrsaiClient], Awaitable[Any]], **kwargs: Any):
    with pytest.raises(GrsaiError) as info:
        run(handler, call, **kwargs)
    return info.value


def assert_no_key(exc: BaseException) -> None:
    """Neither the message nor a printed traceback (as a log would show it) holds the key."""
    assert KEY not in str(exc)
    assert KEY not in repr(exc)
    assert KEY not in "".join(traceback.format_exception(exc))


# --- submit and poll answers ---------------------------------------------------------------


def test_accepted_submit_returns_the_remote_task_id() -> None:
    api = Api(reply(payload={"code": 0, "msg": "success", "data": {"id": "abc-123"}}))
    answer, client = run(api, submit())
    assert answer == SubmitAnswer(code=0, msg="success", task_id="abc-123")
    assert answer.accepted
    assert client.stats.calls == 1
    assert client.stats.retries == 0


def test_submit_with_code_not_zero_is_not_accepted_and_keeps_the_msg() -> None:
    api = Api(reply(payload={"code": -2, "msg": "prompt rejected by upstream policy"}))
    answer, client = run(api, submit())
    assert not answer.accepted
    assert answer.code == -2
    assert answer.msg == "prompt rejected by upstream policy"
    assert answer.task_id is None
    # A business answer is final: not retried.
    assert len(api.requests) == 1
    assert client.stats.retries == 0


def test_submit_answer_without_an_id_is_not_accepted() -> None:
    answer, _ = run(Api(reply(payload={"code": 0, "msg": "success", "data": None})), submit())
    assert not answer.accepted


def test_poll_sends_the_task_id_to_the_result_endpoint() -> None:
    api = Api(
        reply(payload={"code": 0, "msg": "success", "data": {"id": "t-9", "status": "running"}})
    )
    run(api, poll("t-9"))
    assert len(api.requests) == 1
    request = api.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/v1/draw/result"
    assert json.loads(request.content) == {"id": "t-9"}
    assert request.headers["authorization"] == f"Bearer {KEY}"


def test_poll_running_carries_progress() -> None:
    data = {"id": "t", "progress": 42, "status": "running", "failure_reason": "", "error": ""}
    result, _ = run(Api(reply(payload={"code": 0, "msg": "success", "data": data})), poll())
    assert result.status == "running"
    assert result.progress == 42
    assert normalise(result).state == "running"
    assert normalise(result).progress == 42


def test_sora_video_is_read_from_results_0_url() -> None:
    data = {
        "id": "t",
        "progress": 100,
        "status": "succeeded",
        "results": [{"url": "https://cdn.example.com/sora.mp4"}],
        "url": "https://cdn.example.com/wrong-place.mp4",
        "failure_reason": "",
        "error": "",
    }
    result, _ = run(
        Api(reply(payload={"code": 0, "msg": "success", "data": data})), poll(is_sora=True)
    )
    assert result.video_url == "https://cdn.example.com/sora.mp4"
    outcome = normalise(result)
    assert (outcome.state, outcome.video_url, outcome.progress) == (
        "succeeded",
        "https://cdn.example.com/sora.mp4",
        100,
    )


def test_veo_video_is_read_from_data_url() -> None:
    data = {
        "id": "t",
        "progress": 100,
        "status": "succeeded",
        "url": "https://cdn.example.com/veo.mp4",
        "results": [{"url": "https://cdn.example.com/wrong-place.mp4"}],
        "failure_reason": "",
        "error": "",
    }
    result, _ = run(
        Api(reply(payload={"code": 0, "msg": "success", "data": data})), poll(is_sora=False)
    )
    assert result.video_url == "https://cdn.example.com/veo.mp4"
    assert normalise(result).video_url == "https://cdn.example.com/veo.mp4"


@pytest.mark.parametrize(
    ("is_sora", "data"),
    [
        (True, {"status": "succeeded", "results": []}),
        (True, {"status": "succeeded", "url": "https://cdn.example.com/v.mp4"}),
        (False, {"status": "succeeded", "url": ""}),
        (False, {"status": "succeeded", "results": [{"url": "https://cdn.example.com/v.mp4"}]}),
    ],
    ids=["sora-empty-results", "sora-url-elsewhere", "veo-empty-url", "veo-url-elsewhere"],
)
def test_succeeded_without_url_in_its_place_is_succeeded_without_video_url(
    is_sora: bool, data: dict[str, Any]
) -> None:
    payload = {"code": 0, "msg": "success", "data": {"id": "t", "progress": 100, **data}}
    result, _ = run(Api(reply(payload=payload)), poll(is_sora=is_sora))
    outcome = normalise(result)
    assert outcome.state == "failed"
    assert outcome.error_message == "SUCCEEDED_WITHOUT_VIDEO_URL"


def test_poll_failed_carries_failure_reason_and_error() -> None:
    data = {
        "id": "t",
        "progress": 60,
        "status": "failed",
        "failure_reason": "output_moderation",
        "error": "the video broke the content policy",
    }
    result, _ = run(Api(reply(payload={"code": 0, "msg": "success", "data": data})), poll())
    assert result == RemoteResult(
        code=0,
        msg="success",
        status="failed",
        progress=60,
        failure_reason="output_moderation",
        error="the video broke the content policy",
        video_url=None,
    )


def test_poll_not_found_is_code_minus_22() -> None:
    result, _ = run(Api(reply(payload={"code": -22, "msg": "task not found"})), poll())
    assert result.code == -22
    assert normalise(result).state == "not_found"


# --- stopping the run ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("endpoint", ["submit", "poll"])
def test_access_denied_stops_at_once_naming_the_status_and_the_setting(
    status: int, endpoint: str
) -> None:
    api = Api(reply(status, payload={"code": status, "msg": f"invalid api key {KEY}"}))
    exc = raised(api, submit() if endpoint == "submit" else poll())
    assert isinstance(exc, ApiAccessDenied)
    assert isinstance(exc, RunStopped)
    assert exc.status_code == status
    assert str(status) in str(exc)
    assert "GRSAI_API_KEY" in str(exc)
    assert_no_key(exc)
    # A configuration error is not retried.
    assert len(api.requests) == 1


@pytest.mark.parametrize("endpoint", ["submit", "poll"])
def test_insufficient_credits_stops_the_run(endpoint: str) -> None:
    api = Api(reply(payload={"code": -1, "msg": "insufficient credits"}))
    exc = raised(api, submit() if endpoint == "submit" else poll())
    assert isinstance(exc, UpstreamCreditsExhausted)
    assert isinstance(exc, RunStopped)
    assert "insufficient credits" in str(exc)
    assert "GRSAI_API_KEY" in str(exc)
    assert len(api.requests) == 1


def test_insufficient_credits_echoing_the_key_does_not_show_it() -> None:
    api = Api(reply(payload={"code": -1, "msg": f"insufficient credits for key {KEY}"}))
    exc = raised(api, submit())
    assert isinstance(exc, UpstreamCreditsExhausted)
    assert_no_key(exc)


# --- 429 -----------------------------------------------------------------------------------


def test_429_with_retry_after_0_is_retried_then_succeeds() -> None:
    api = Api(
        reply(429, payload={"code": 429, "msg": "too many requests"}, headers={"Retry-After": "0"}),
        reply(payload=ACCEPTED),
    )
    answer, client = run(api, submit())
    assert answer.accepted and answer.task_id == "remote-1"
    assert len(api.requests) == 2
    assert api.bodies[0] == api.bodies[1]
    assert client.stats.rate_limited == 1
    assert client.stats.retries == 1
    assert client.stats.calls == 2


def test_429_waits_for_retry_after() -> None:
    api = Api(
        reply(429, payload={"code": 429, "msg": "slow down"}, headers={"Retry-After": "0.2"}),
        reply(payload=ACCEPTED),
    )
    started = time.monotonic()
    answer, _ = run(api, submit(), retry=RetrySettings(budget_s=2, backoff_base_s=0.001))
    assert answer.accepted
    assert time.monotonic() - started >= 0.19


def test_429_with_retry_after_as_a_past_http_date_is_retried_at_once() -> None:
    api = Api(
        reply(
            429,
            payload={"code": 429, "msg": "slow down"},
            headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
        ),
        reply(payload=ACCEPTED),
    )
    answer, client = run(api, submit())
    assert answer.accepted
    assert client.stats.rate_limited == 1
    assert len(api.requests) == 2


def test_429_without_retry_after_backs_off_and_succeeds() -> None:
    api = Api(reply(429, payload={"code": 429, "msg": "slow down"}), reply(payload=ACCEPTED))
    answer, client = run(api, submit())
    assert answer.accepted
    assert client.stats.rate_limited == 1


@pytest.mark.parametrize("endpoint", ["submit", "poll"])
def test_429_past_the_budget_raises_rate_limited(endpoint: str) -> None:
    api = Api(
        reply(429, payload={"code": 429, "msg": f"slow down {KEY}"}, headers={"Retry-After": "0"})
    )
    started = time.monotonic()
    exc = raised(api, submit() if endpoint == "submit" else poll())
    assert isinstance(exc, RateLimited)
    assert not isinstance(exc, RunStopped)
    assert time.monotonic() - started < 2
    assert len(api.requests) >= 2
    assert_no_key(exc)


# --- transient faults ----------------------------------------------------------------------

TRANSIENT = {
    "500": reply(500, payload={"code": 500, "msg": "internal error"}),
    "502": reply(502, content=b"<html>Bad Gateway</html>"),
    "503": reply(503, payload={"code": 503, "msg": "unavailable"}),
    "not-json": reply(200, content=b"<html>maintenance</html>"),
    "empty-body": reply(200, content=b""),
    "timeout": raise_(httpx.ReadTimeout),
    "connect-timeout": raise_(httpx.ConnectTimeout),
    "connection-refused": raise_(httpx.ConnectError, "connection refused"),
}


@pytest.mark.parametrize("fault", list(TRANSIENT))
@pytest.mark.parametrize("endpoint", ["submit", "poll"])
def test_transient_fault_is_retried_and_succeeds_when_it_clears(fault: str, endpoint: str) -> None:
    running = {"code": 0, "msg": "success", "data": {"id": "remote-1", "status": "running"}}
    good = reply(payload=ACCEPTED if endpoint == "submit" else running)
    api = Api(TRANSIENT[fault], TRANSIENT[fault], good)
    result, client = run(api, submit() if endpoint == "submit" else poll())
    if endpoint == "submit":
        assert result.accepted and result.task_id == "remote-1"
    else:
        assert result.status == "running"
    assert len(api.requests) == 3
    assert client.stats.calls == 3
    assert client.stats.retries == 2
    assert client.stats.rate_limited == 0


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_fault_past_the_budget_raises_api_unavailable(fault: str) -> None:
    api = Api(TRANSIENT[fault])
    started = time.monotonic()
    exc = raised(api, submit())
    assert isinstance(exc, ApiUnavailable)
    assert not isinstance(exc, RunStopped)
    assert "/v1/video/sora-video" in str(exc)
    assert len(api.requests) >= 2
    assert time.monotonic() - started < 2


def test_api_unavailable_says_what_the_last_failure_was() -> None:
    exc = raised(Api(reply(503, payload={"code": 503, "msg": "x"})), poll())
    assert "503" in str(exc)
    assert "/v1/draw/result" in str(exc)


def test_transport_error_echoing_the_key_does_not_show_it() -> None:
    exc = raised(Api(raise_(httpx.ConnectError, f"cannot reach with Bearer {KEY}")), submit())
    assert isinstance(exc, ApiUnavailable)
    assert_no_key(exc)


# --- the key never shows -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        reply(401, payload={"code": 401, "msg": f"bad key {KEY}"}),
        reply(403, payload={"code": 403, "msg": f"key {KEY} lacks access"}),
        reply(429, payload={"code": 429, "msg": f"key {KEY} is rate limited"}),
        reply(500, payload={"code": 500, "msg": f"crash while handling {KEY}"}),
        reply(503, content=f"<html>{KEY}</html>".encode()),
        reply(200, content=f"not json {KEY}".encode()),
        reply(200, payload={"code": -1, "msg": f"insufficient credits ({KEY})"}),
        raise_(httpx.ReadTimeout, f"timed out sending Bearer {KEY}"),
    ],
    ids=["401", "403", "429", "500", "503-html", "not-json", "no-credits", "timeout"],
)
@pytest.mark.parametrize("endpoint", ["submit", "poll"])
def test_key_never_appears_in_a_raised_exception(answer: Any, endpoint: str) -> None:
    exc = raised(Api(answer), submit() if endpoint == "submit" else poll())
    assert_no_key(exc)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_4xx_echoing_the_key_answers_without_it(status: int) -> None:
    api = Api(reply(status, payload={"code": status, "msg": f"bad request from {KEY}"}))
    answer, _ = run(api, submit())
    assert not answer.accepted
    assert str(status) in answer.msg
    assert "bad request from" in answer.msg
    assert KEY not in answer.msg
    result, _ = run(api, poll())
    assert normalise(result).state == "failed"
    assert KEY not in result.msg


def test_submit_business_error_echoing_the_key_answers_without_it() -> None:
    api = Api(reply(payload={"code": -1, "msg": f"apikey {KEY} is not valid"}))
    answer, _ = run(api, submit())
    assert not answer.accepted
    assert "is not valid" in answer.msg
    assert KEY not in answer.msg


def test_poll_business_error_echoing_the_key_answers_without_it() -> None:
    api = Api(reply(payload={"code": -1, "msg": f"apikey {KEY} is not valid"}))
    result, _ = run(api, poll())
    outcome = normalise(result)
    assert outcome.state == "failed"
    assert outcome.error_message is not None
    assert KEY not in outcome.error_message


# --- bounded concurrency -------------------------------------------------------------------


class InFlight:
    """An async handler that sleeps and records the most requests it ever held at once."""

    def __init__(self, delay_s: float = 0.03) -> None:
        self.delay_s = delay_s
        self.now = 0
        self.peak = 0
        self.total = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.now -= 1
        body = json.loads(request.content)
        return httpx.Response(
            200, json={"code": 0, "msg": "success", "data": {"id": f"id-{body['prompt']}"}}
        )


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_at_most_max_concurrency_requests_are_in_flight(max_concurrency: int) -> None:
    handler = InFlight()
    tasks = [validate_task({"prompt": f"p{i}", "model": "veo-pro"}) for i in range(12)]

    async def go() -> list[SubmitAnswer]:
        async with client_for(handler, max_concurrency=max_concurrency) as client:
            return await asyncio.gather(*(client.submit(t) for t in tasks))

    answers = asyncio.run(go())
    assert [a.task_id for a in answers] == [f"id-p{i}" for i in range(12)]
    assert handler.total == 12
    assert handler.peak == max_concurrency


def test_concurrency_bound_holds_through_retries() -> None:
    handler = InFlight(delay_s=0.02)
    failures = {"left": 6}

    async def flaky(request: httpx.Request) -> httpx.Response:
        response = await handler(request)
        if failures["left"] > 0:
            failures["left"] -= 1
            return httpx.Response(503, json={"code": 503, "msg": "busy"})
        return response

    tasks = [validate_task({"prompt": f"p{i}", "model": "sora-2"}) for i in range(12)]

    async def go() -> tuple[list[SubmitAnswer], GrsaiClient]:
        async with client_for(flaky, max_concurrency=3, retry=RetrySettings(2, 0.005, 0.01)) as c:
            return await asyncio.gather(*(c.submit(t) for t in tasks)), c

    answers, client = asyncio.run(go())
    assert all(a.accepted for a in answers)
    assert handler.total == 18
    assert client.stats.retries == 6
    assert handler.peak == 3
