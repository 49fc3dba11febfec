"""examples/webapp's HTTP path (SPEC 9, issue 23): ``http-client.ts``, a TypeScript client
typed from the API's own /openapi.json (``openapi-typescript``, ``openapi-fetch``), against
``grsai-pipeline api serve`` as a web app would use it, on SQLite and on PostgreSQL.

It creates a batch with an Idempotency-Key, sends the very same request again (the answer must
be a replay of the first), follows the batch while ``grsai-pipeline run --until-settled``
settles it against the simulator, then reads the batch's ledger entries page by page. The
committed ``api-schema.d.ts`` must be what the live server's /openapi.json makes today, and the
client must pass ``tsc --noEmit`` against it, so the contract cannot drift unseen.

Without Node.js and npm these tests skip, unless ``GRSAI_REQUIRE_NODE=1`` (CI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from grsai_pipeline.dev.simulator import SimulatorServer
from grsai_pipeline_tests.conftest import TEST_API_KEY, pipeline_settings
from grsai_pipeline_tests.e2e.conftest import wait_for
from grsai_pipeline_tests.e2e.webapp import (
    WEBAPP,
    generate_api_types,
    http_client_args,
    run_http_client,
    start_http_client,
    typecheck_example,
)
from grsai_pipeline_tests.test_api.api_support import served_api
from grsai_pipeline_tests.test_cli.cli_helpers import quiet_dagster_home, run_cli

pytestmark = pytest.mark.slow

PRICE = 10  # a 10 s sora-2 task at the default prices
GRANTED = 100


def _grant(base_url: str, token: str, user: str, amount: int) -> None:
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        granted = client.post(f"/v1/users/{user}/grants", json={"amount": amount})
    assert granted.status_code == 201, granted.text
    assert granted.json()["balance"] == amount


def _first_line(path: Path) -> str | None:
    """The first line once it is whole."""
    text = path.read_text(encoding="utf-8")
    return text.split("\n", 1)[0] if "\n" in text else None


def test_http_client_creates_once_replays_and_reads_the_settled_batch_and_its_ledger(
    database_url: str, simulator: SimulatorServer, tmp_path: Path
) -> None:
    prompts = ["a lighthouse at dawn", "waves on a pebble beach", "gulls over a harbour"]
    settings = pipeline_settings(database_url, simulator.base_url) | {
        "DAGSTER_HOME": str(quiet_dagster_home(tmp_path / "dagster_home"))
    }
    out, err = tmp_path / "client.out", tmp_path / "client.err"
    with served_api(database_url, tmp_path) as api:
        _grant(api.base_url, api.token, "dana", GRANTED)
        # Page size 2: the batch's 6 ledger entries come in 3 pages, so next_cursor is followed.
        args = http_client_args(api.base_url, "dana", prompts, wait_s=90, page_size=2)
        with out.open("w") as out_file, err.open("w") as err_file:
            client = start_http_client(args, api.token, out_file, err_file)
            try:
                # The pipeline starts once the client has the batch, as the sensor would.
                first = wait_for(lambda: _first_line(out) or client.poll() is not None, 60,
                                 "the client's first line", err)  # fmt: skip
                assert isinstance(first, str) and first.startswith("batch "), (
                    out.read_text() + err.read_text()
                )
                batch_id = first.removeprefix("batch ")
                ran = run_cli(["run", batch_id, "--until-settled", "--timeout", "60"],
                              cwd=tmp_path, settings=settings)  # fmt: skip
                assert ran.code == 0, ran
                assert TEST_API_KEY not in ran.out + ran.err
                code = client.wait(timeout=60)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        assert api.token not in api.log.read_text(errors="replace")

    lines = out.read_text(encoding="utf-8").splitlines()
    assert code == 0, out.read_text() + err.read_text()
    assert err.read_text() == ""
    # The retry with the same key and body answered 200, the same batch, Idempotent-Replayed.
    assert lines[:2] == [f"batch {batch_id}", f"replayed {batch_id}"]
    final: dict[str, Any] = json.loads(lines[-1])
    assert final["replay"] == {"status": 200, "idempotent_replayed": "true", "batch_id": batch_id}

    batch = final["batch"]
    assert (batch["batch_id"], batch["user_id"], batch["status"]) == (batch_id, "dana", "settled")
    assert batch["total_tasks"] == len(prompts)
    tasks = batch["tasks"]
    assert [t["status"] for t in tasks] == ["succeeded"] * len(prompts)
    assert all(t["video_url"].startswith("http") for t in tasks), tasks
    succeeded = sum(t["status"] == "succeeded" for t in tasks)
    assert batch["charged_credits"] == PRICE * succeeded
    assert (batch["reserved_credits"], batch["refunded_credits"]) == (PRICE * len(prompts), 0)
    # What the client showed: one line per task once settled, each with its video's URL.
    for task in tasks:
        assert f"#{task['batch_index']} succeeded {task['video_url']}" in lines

    # The batch's ledger, read page by page: a reserve and a charge for each task, oldest first.
    ledger = final["ledger"]
    assert final["ledger_pages"] == 3
    assert {e["batch_job_id"] for e in ledger} == {batch_id}
    assert sorted((e["kind"], e["batch_index"]) for e in ledger) == sorted(
        (kind, t["batch_index"]) for t in tasks for kind in ("reserve", "charge")
    )
    assert all(e["amount"] == PRICE for e in ledger)
    assert [e["id"] for e in ledger] == sorted(e["id"] for e in ledger)
    assert ledger[-1]["held"] == 0
    assert final["credits"]["balance"] == GRANTED - batch["charged_credits"]
    assert final["credits"]["held"] == 0
    assert ledger[-1]["balance"] == final["credits"]["balance"]


def test_http_client_prints_the_problem_detail_of_an_error_answer_and_exits_1(
    database_url: str, tmp_path: Path
) -> None:
    with served_api(database_url, tmp_path) as api:
        # No credits: 402, and nothing written.
        args = http_client_args(api.base_url, "nobody", ["a cat", "a dog"], wait_s=5)
        short = run_http_client(args, api.token, 60)
        # A token that is not one: 401.
        args = http_client_args(api.base_url, "dana", ["a cat"], wait_s=5)
        unknown = run_http_client(args, "not-a-token", 60)
        with api.client() as client:
            listed = client.get("/v1/batches", params={"user_id": "nobody"})

    assert short.returncode == 1, short.stdout + short.stderr
    assert short.stdout == ""
    assert short.stderr == (
        "http-client: POST /v1/batches: 402 user 'nobody' has 0 credits but the batch needs 20;"
        " nothing was written\n"
    )
    assert listed.json()["batches"] == []
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert unknown.stdout == ""
    assert unknown.stderr.startswith("http-client: POST /v1/batches: 401 Authorization must be")


def test_committed_api_types_are_what_the_live_openapi_document_makes_and_typecheck(
    sqlite_template: Path, tmp_path: Path
) -> None:
    database = tmp_path / "app.db"
    shutil.copyfile(sqlite_template, database)
    with served_api(f"sqlite:///{database}", tmp_path) as api:
        made = generate_api_types(api.base_url, api.token, tmp_path / "api-schema.d.ts")
        refused = generate_api_types(api.base_url, "not-a-token", tmp_path / "refused.d.ts")

    assert made.returncode == 0, made.stdout + made.stderr
    committed = (WEBAPP / "api-schema.d.ts").read_text(encoding="utf-8")
    assert (tmp_path / "api-schema.d.ts").read_text(encoding="utf-8") == committed, (
        "examples/webapp/api-schema.d.ts is not what the API's /openapi.json makes now: "
        "regenerate it (examples/webapp/README.md, `npm run types`) and review the change"
    )
    # The document is behind the token like every route but /healthz.
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused.d.ts").exists()

    checked = typecheck_example()
    assert checked.returncode == 0, checked.stdout + checked.stderr
