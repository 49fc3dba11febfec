"""``grsai-pipeline api serve`` as a user starts it: its own process on a loopback port, with
a token made by ``api token create``, and its log kept for the tests that read it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from grsai_pipeline_tests.e2e.conftest import free_port, wait_for
from grsai_pipeline_tests.test_cli.cli_helpers import cli_path, command_env, run_cli


@dataclass(frozen=True)
class ServedApi:
    base_url: str
    token: str
    log: Path
    settings: dict[str, str]
    pid: int = 0

    def client(self, token: str | None = None) -> httpx.Client:
        """A client sending ``token`` (default: the live one made at start)."""
        bearer = self.token if token is None else token
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {bearer}"}, timeout=60
        )

    def cli(self, *args: str) -> str:
        """A command against the same database; its stdout."""
        done = run_cli(list(args), cwd=self.log.parent, settings=self.settings)
        assert done.code == 0, done.err
        return done.out


@contextmanager
def served_api(
    database_url: str,
    workdir: Path,
    token_name: str = "tests",
    settings: Mapping[str, str] | None = None,
) -> Iterator[ServedApi]:
    """The API over ``database_url`` (and ``settings`` besides) until the block ends; stopped
    with SIGTERM."""
    settings = {"GRSAI_DATABASE_URL": database_url, **(settings or {})}
    made = run_cli(["api", "token", "create", token_name], cwd=workdir, settings=settings)
    assert made.code == 0, made.err
    port = free_port()
    log = workdir / "api.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [cli_path(), "api", "serve", "--port", str(port)],
            cwd=workdir,
            env=command_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _answers(base_url, server), 30, "api serve to answer /healthz", log)
            yield ServedApi(base_url, made.out.strip(), log, settings, server.pid)
        finally:
            server.terminate()
            server.wait(timeout=15)


def _answers(base_url: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "api serve exited"
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
