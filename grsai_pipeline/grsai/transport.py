"""The HTTP transport under the client: httpx's types over aiohttp's connection pool.

httpcore's pool (httpx's default) walks every pooled connection on each request, so at 32
connections it spent most of a batch's CPU there (issue 9's profile). ``httpx-aiohttp`` sets
up aiohttp's connector (limits, keep-alive, TLS, proxies) under httpx's transport interface,
whose cost per request does not grow with the pool; tests keep httpx's MockTransport.

Two things differ from its own request path, both measured or needed:

- the answer is read whole here (the Grsai API answers small JSON bodies): streaming it through
  httpx's async byte-stream chain cost more CPU than the socket work itself;
- errors are mapped by what aiohttp saw. The library maps every aiohttp connection error to
  ``httpx.ConnectTimeout``; to us the difference matters: a request that never left may be
  retried freely, while one whose connection broke after it was sent may have created a
  remote task (a possible duplicate).
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class GrsaiTransport(AiohttpTransport):
    """:class:`AiohttpTransport` that reads answers whole and says whether a failed request
    may have been sent."""

    _timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        try:
            async with self.client.request(
                request.method,
                str(request.url),
                # Pairs: aiohttp copies a list in C, an httpx Headers mapping item by item.
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout_of(request),
                proxy=str(self.proxy.url) if self.proxy else None,
            ) as answer:
                body = await answer.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _what_happened(exc, request) from exc
        return httpx.Response(
            answer.status, headers=answer.raw_headers, content=body, request=request
        )

    def _timeout_of(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout", {})
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        if not hasattr(self, "_timeouts"):
            self._timeouts = {}
        if key not in self._timeouts:
            self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return self._timeouts[key]


def _what_happened(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS: nothing was sent.
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.ReadError(message, request=request)
    # Disconnected or reset once the connection was up: the request may have arrived.
    return httpx.RemoteProtocolError(message, request=request)
