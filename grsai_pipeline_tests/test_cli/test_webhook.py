"""``webhook serve`` (SPEC 5, 6): the receiver as a user starts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.e2e.conftest import free_port, wait_for
from grsai_pipeline_tests.test_cli.cli_helpers import (
    assert_error,
    cli_path,
    command_env,
    run_cli,
)
from grsai_pipeline_tests.test_store.store_support import task_row
from grsai_pipeline_tests.test_webhook.webhook_support import (
    SECRET,
    SORA,
    post,
    sora_success,
    submitted,
)


def test_serve_without_a_secret_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_cli(["webhook", "serve"], cwd=tmp_path)

    assert_error(result, 2, "GRSAI_WEBHOOK_SECRET")
    assert list(tmp_path.iterdir()) == []  # no database made


def test_serve_without_a_database_exits_1_and_says_to_run_db_init(tmp_path: Path) -> None:
    result = run_cli(["webhook", "serve"], cwd=tmp_path, settings={"GRSAI_WEBHOOK_SECRET": "s"})

    assert_error(result, 1, "db init")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_served_receiver_applies_a_signed_callback_and_refuses_a_forged_one(
    pipeline_env: dict[str, str], engine: sa.Engine, tmp_path: Path
) -> None:
    task, other = submitted(engine, [SORA, SORA | {"prompt": "another"}])
    port = free_port()
    settings = {"GRSAI_DATABASE_URL": pipeline_env["GRSAI_DATABASE_URL"],
                "GRSAI_WEBHOOK_SECRET": SECRET}  # fmt: skip
    log_path = tmp_path / "webhook.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [cli_path(), "webhook", "serve", "--port", str(port)],
        cwd=tmp_path, env=command_env(settings), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def forge(client: httpx.Client) -> httpx.Response | None:
        try:
            return post(client, other, sora_success(other), token="f" * 64)
        except httpx.ConnectError:
            return None  # not listening yet

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            forged = wait_for(lambda: forge(client), 30, "webhook serve to listen", log_path)
            applied = post(client, task, sora_success(task))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    assert forged.status_code == 403
    assert applied.status_code == 200, applied.text
    assert task_row(engine, task["id"])["status"] == "succeeded"
    assert task_row(engine, other["id"])["status"] == "processing"
    # Tokens are secrets of their own: the receiver's output never shows a callback URL.
    output = log_path.read_text()
    assert "token" not in output.replace("token does not verify", "")
