"""Helpers for tests that start Dagster's own processes (`dagster dev`, the daemon)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from grsai_pipeline_tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# `dagster dev` and `dagster code-server start` stay up past SIGTERM: each of them in a suite run
# took the whole 30 s this helper used to wait (six stops, 3 minutes of the suite). Dagster's own
# tests give them 10 s and then kill (dagster-io/dagster#29165); a test reads nothing that a
# stopping process writes.
STOP_GRACE_S = 10.0


@contextmanager
def dagster_process(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a Dagster command in its own process group; stop the whole group afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_S)
            # Whatever of the group outlived it goes too: when `dagster dev` exited in time, a
            # code server and the re-polling run it had launched were left running, orphaned,
            # for the rest of the suite (found 11 minutes after test_ui_second_day).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, log: Path | None = None
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tail}")


WORKSPACE = REPO_ROOT / "workspace.yaml"
