"""The HTTP transport under the client: httpx's API over aiohttp's connection pool.

httpcore's pool (httpx's default) walks every pooled connection on each request, so at 32
connections it spent most of a batch's CPU there (issue 9's profile). ``httpx-aiohttp`` keeps
httpx's request and response types, timeouts and MockTransport for tests, and hands the wire
to aiohttp's connector, which costs the same per request at any pool size.

Its error mapping is coarse (every aiohttp connection error becomes ``httpx.ConnectTimeout``),
and the difference matters to us: a request that never left may be retried freely, while one
whose connection broke after it was sent may have created a remote task (a possible duplicate).
So errors are mapped here again, by what aiohttp actually saw.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class GrsaiTransport(AiohttpTransport):
    """:class:`AiohttpTransport` whose errors say whether the request may have been sent."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _what_happened(exc, request) from exc.__cause__


def _what_happened(exc: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    cause = exc.__cause__
    message = str(cause or exc)
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(cause, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS: nothing was sent.
        return httpx.ConnectError(message, request=request)
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(cause, aiohttp.ClientPayloadError):
        return httpx.ReadError(message, request=request)
    if isinstance(cause, aiohttp.ClientConnectionError):
        # Disconnected or reset once the connection was up: the request may have arrived.
        return httpx.RemoteProtocolError(message, request=request)
    return exc
