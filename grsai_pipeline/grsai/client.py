"""The async Grsai client: submit, poll, retries with backoff, rate limits, bounded concurrency.

One :class:`GrsaiClient` per event loop. Every request holds one of ``max_concurrency`` slots
while it is on the wire; a 429 pauses every request of the client until ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final

import httpx
from pydantic import SecretStr, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from grsai_pipeline import __version__
from grsai_pipeline.domain.states import RemoteResult
from grsai_pipeline.domain.tasks import TaskSpec
from grsai_pipeline.errors import (
    ApiAccessDenied,
    ApiUnavailable,
    RateLimited,
    UpstreamCreditsExhausted,
)
from grsai_pipeline.grsai.transport import GrsaiTransport
from grsai_pipeline.grsai.wire import POLL_PATH, PollResponse, SubmitResponse, submit_request

# The API's words for "the account behind this key has no credits" (HTTP 200, code -1).
_NO_CREDITS_PHRASES: Final = ("insufficient credit", "insufficient balance", "余额不足", "积分不足")


@dataclass
class ApiStats:
    """What the client did, for run metadata: requests sent, retries, 429 answers."""

    calls: int = 0
    retries: int = 0
    rate_limited: int = 0


@dataclass(frozen=True)
class RetrySettings:
    """Bounds of the retry loop of one request."""

    budget_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 10.0


@dataclass(frozen=True)
class SubmitAnswer:
    """The API's answer to a submit: ``task_id`` when accepted, else its code and message."""

    code: int
    msg: str
    task_id: str | None = None
    # Earlier tries of this submit whose answer was lost: each may have created a remote task.
    uncertain_tries: int = 0

    @property
    def accepted(self) -> bool:
        return self.code == 0 and bool(self.task_id)


@dataclass
class _Tries:
    """Per request: failed tries after which the server may still have acted (answer lost)."""

    uncertain: int = 0


class _Transient(Exception):
    """One failed try that is worth another (5xx, timeout, connection, not JSON)."""


class _TooManyRequests(_Transient):
    def __init__(self, retry_after_s: float | None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__("HTTP 429 Too Many Requests")


@dataclass
class _StopAtDeadline(stop_base):
    """Stop retrying when the next sleep would pass an absolute deadline (monotonic)."""

    deadline: float | None = field(default=None)

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.deadline is None:
            return False
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline


class GrsaiClient:
    """Async client of SPEC 3. Use as ``async with GrsaiClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        max_concurrency: int = 10,
        timeout_s: float = 30.0,
        retry: RetrySettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._secret = api_key.get_secret_value()
        self._retry = retry or RetrySettings()
        self._backoff = wait_exponential_jitter(
            multiplier=self._retry.backoff_base_s,
            max=self._retry.backoff_max_s,
            jitter=self._retry.backoff_base_s,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._paused_until = 0.0
        self.stats = ApiStats()
        limits = httpx.Limits(
            max_connections=max_concurrency, max_keepalive_connections=max_concurrency
        )
        # Requests go straight to the transport: httpx.AsyncClient's auth flow, redirects and
        # cookie jar, none of which this API uses, cost more CPU than the wire (issue 9).
        self._transport = transport or GrsaiTransport(limits=limits)
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self._headers = httpx.Headers(
            {
                "Authorization": f"Bearer {self._secret}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"grsai-pipeline/{__version__}",
            }
        )
        self._extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}

    async def __aenter__(self) -> GrsaiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def submit(
        self, task: TaskSpec, *, webhook: str = "-1", deadline: float | None = None
    ) -> SubmitAnswer:
        """Submit one task. Raises RunStopped, ApiUnavailable or RateLimited (see ``errors``)."""
        path, body = submit_request(task, webhook)
        tries = _Tries()
        payload = await self._post(path, body, deadline, tries)
        try:
            answer = SubmitResponse.model_validate(payload)
        except ValidationError:
            raise ApiUnavailable(
                "submit answer is not in the documented shape", tries.uncertain + 1
            ) from None
        if answer.code != 0:
            self._stop_if_out_of_credits(answer.msg)
            msg = answer.msg or f"code {answer.code}"
            return SubmitAnswer(code=answer.code, msg=msg, uncertain_tries=tries.uncertain)
        if answer.data is None or not answer.data.id:
            msg = "submit answer carries no task id"
            return SubmitAnswer(code=answer.code, msg=msg, uncertain_tries=tries.uncertain)
        return SubmitAnswer(0, answer.msg, answer.data.id, uncertain_tries=tries.uncertain)

    async def poll(
        self, task_id: str, *, is_sora: bool, deadline: float | None = None
    ) -> RemoteResult:
        """Fetch one task's state. Raises RunStopped, ApiUnavailable or RateLimited."""
        payload = await self._post(POLL_PATH, {"id": task_id}, deadline, _Tries())
        try:
            answer = PollResponse.model_validate(payload)
        except ValidationError:
            raise ApiUnavailable("poll answer is not in the documented shape") from None
        if answer.code != 0:
            self._stop_if_out_of_credits(answer.msg)
        return answer.to_result(is_sora=is_sora)

    def _stop_if_out_of_credits(self, msg: str) -> None:
        lowered = (msg or "").lower()
        if any(phrase in lowered for phrase in _NO_CREDITS_PHRASES):
            raise UpstreamCreditsExhausted(self._redact(msg))

    async def _post(
        self, path: str, body: dict[str, Any], deadline: float | None, tries: _Tries
    ) -> Any:
        # One limit for every wait of this request: the retry budget, or the caller's deadline.
        limit = time.monotonic() + self._retry.budget_s
        if deadline is not None:
            limit = min(limit, deadline)
        # The first try goes without the retry machinery, whose set-up costs more CPU than a
        # request (profile, issue 9); tenacity takes over from its failure.
        try:
            return await self._post_once(path, body, limit, tries)
        except _Transient as failure:
            first: list[_Transient] = [failure]
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            stop=_StopAtDeadline(limit),
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first:
                        raise first.pop()  # the try already made: tenacity judges it
                    return await self._post_once(path, body, limit, tries)
        except _TooManyRequests:
            raise RateLimited(f"HTTP 429 on {path} until the retry deadline") from None
        except _Transient as exc:
            raise ApiUnavailable(self._redact(f"{exc} on {path}"), tries.uncertain) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post_once(self, path: str, body: dict[str, Any], limit: float, tries: _Tries) -> Any:
        resume_at = self._paused_until
        if resume_at > limit:
            raise RateLimited(f"paused by a Retry-After past the deadline before {path}")
        if resume_at > time.monotonic():
            await asyncio.sleep(resume_at - time.monotonic())
        request = httpx.Request(
            "POST",
            self._url(path),
            headers=self._headers,
            content=json.dumps(body, ensure_ascii=False).encode(),
            extensions=self._extensions,
        )
        async with self._slots:
            self.stats.calls += 1
            try:
                response = await self._transport.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise _Transient(f"connection error ({type(exc).__name__})") from None
            except httpx.TimeoutException as exc:
                tries.uncertain += 1
                raise _Transient(f"timeout ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                # The request went out; the server may have acted on it before the answer was lost.
                tries.uncertain += 1
                raise _Transient(f"connection error ({type(exc).__name__}: {exc})") from None
            try:
                await response.aread()
            except httpx.TransportError as exc:
                # The answer had begun: the request certainly arrived.
                tries.uncertain += 1
                kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
                raise _Transient(f"{kind} ({type(exc).__name__}) reading the answer") from None
            finally:
                await response.aclose()
        return self._read(response, tries)

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self._base_url + path)
        return url

    def _read(self, response: httpx.Response, tries: _Tries) -> Any:
        status = response.status_code
        if status in (401, 403):
            raise ApiAccessDenied(status)
        if status == 429:
            self.stats.rate_limited += 1
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if retry_after is not None:
                self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
            raise _TooManyRequests(retry_after)
        if status >= 500 or status == 408:
            raise _Transient(f"HTTP {status}")
        try:
            # Whatever the API says back (an echoed key in a message, say) is redacted first.
            payload = json.loads(self._redact(response.content.decode()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            tries.uncertain += 1
            raise _Transient(f"HTTP {status} with a body that is not JSON") from None
        if status >= 400:
            # Other 4xx: the API refused this request itself; answer like a business error.
            msg = payload.get("msg") if isinstance(payload, dict) else None
            return {"code": -status, "msg": self._redact(f"HTTP {status}: {msg or 'refused'}")}
        return payload

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _TooManyRequests) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return float(self._backoff(retry_state))

    def _count_retry(self, retry_state: RetryCallState) -> None:
        self.stats.retries += 1

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds, from either of its two forms (delay or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
