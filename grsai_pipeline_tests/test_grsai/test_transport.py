"""The real transport (aiohttp under httpx) over loopback: a failure says whether the request
may have reached the API, because a submit that may have arrived is a possible duplicate."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from pydantic import SecretStr

from grsai_pipeline.domain.tasks import validate_task
from grsai_pipeline.errors import ApiUnavailable
from grsai_pipeline.grsai.client import GrsaiClient, RetrySettings

TASK = validate_task({"prompt": "a lighthouse at dawn", "model": "sora-2"})
FAST = RetrySettings(budget_s=0.3, backoff_base_s=0.01, backoff_max_s=0.02)


async def _submit(base_url: str, timeout_s: float = 2.0) -> ApiUnavailable:
    async with GrsaiClient(base_url, SecretStr("sk-x"), retry=FAST, timeout_s=timeout_s) as client:
        with pytest.raises(ApiUnavailable) as caught:
            await client.submit(TASK)
    return caught.value


def test_a_refused_connection_sent_nothing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure = asyncio.run(_submit(f"http://127.0.0.1:{port}"))
    assert failure.uncertain_tries == 0
    assert "connection error" in str(failure)


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"])
def test_a_connection_dropped_after_the_request_may_have_created_a_task(answer: bytes) -> None:
    requests = 0

    async def scenario() -> ApiUnavailable:
        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal requests
            await reader.readuntil(b"\r\n\r\n")
            requests += 1
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await _submit(f"http://127.0.0.1:{port}")

    failure = asyncio.run(scenario())
    assert requests >= 1
    assert failure.uncertain_tries == requests


def test_a_read_timeout_may_have_created_a_task() -> None:
    async def scenario() -> ApiUnavailable:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await _submit(f"http://127.0.0.1:{port}", timeout_s=0.1)

    failure = asyncio.run(scenario())
    assert failure.uncertain_tries >= 1
    assert "timeout" in str(failure)


def test_a_request_on_the_wire_has_its_host_length_and_whole_body() -> None:
    """What an HTTP/1.1 server needs to read the request: Host, Content-Length, the JSON body."""
    seen: dict[str, str] = {}
    body = b""

    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal body
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            for line in head.split("\r\n")[1:]:
                if line:
                    name, value = line.split(":", 1)
                    seen[name.lower()] = value.strip()
            body = await reader.readexactly(int(seen["content-length"]))
            reply = b'{"code":0,"msg":"success","data":{"id":"remote-1"}}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, GrsaiClient(f"http://127.0.0.1:{port}", SecretStr("sk-x")) as client:
            accepted = await client.submit(TASK)
        assert accepted.task_id == "remote-1"
        assert seen["host"] == f"127.0.0.1:{port}"

    asyncio.run(scenario())
    assert seen["content-type"].startswith("application/json")
    assert json.loads(body)["prompt"] == "a lighthouse at dawn"
