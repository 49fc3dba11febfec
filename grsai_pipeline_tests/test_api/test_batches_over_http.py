"""The web app's HTTP door (SPEC 9): batches, credits and the ledger through a served API,
on both databases, as a web app's back end calls it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, rows
from grsai_pipeline_tests.test_api.api_support import ServedApi, served_api
from grsai_pipeline_tests.test_cli.cli_helpers import row_counts

SORA = {"prompt": "a heron at dawn", "model": "sora-2"}
PROBLEM = "application/problem+json"


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[ServedApi]:
    with served_api(database_url, tmp_path) as served:
        yield served


@pytest.fixture
def client(api: ServedApi) -> Iterator[httpx.Client]:
    with api.client() as made:
        yield made


def grant(client: httpx.Client, user: str, amount: int) -> None:
    assert client.post(f"/v1/users/{user}/grants", json={"amount": amount}).status_code == 201


def refused(answer: httpx.Response, status: int, field: str) -> dict[str, Any]:
    """A problem-details answer with ``status`` whose detail and ``field`` name ``field``
    (when one is to blame)."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["status"] == status
    assert problem["type"].startswith("urn:grsai-pipeline:problem:")
    if field:
        assert problem["field"] == field and field in problem["detail"], problem
    return dict(problem)


def test_a_batch_made_over_http_is_reserved_and_reads_as_batch_status_json(
    api: ServedApi, client: httpx.Client, engine: sa.Engine
) -> None:
    grant(client, "ada", 100)
    tasks = [SORA, SORA | {"duration": 15}, {"prompt": "x", "model": "sora-3"}]

    made = client.post("/v1/batches", json={"user_id": "ada", "tasks": tasks})

    assert made.status_code == 201 and "Idempotent-Replayed" not in made.headers
    batch = made.json()
    assert [t["status"] for t in batch["tasks"]] == ["pending", "pending", "failed"]
    assert batch["tasks"][2]["error_message"].startswith("INVALID_INPUT: model")
    # The price table's prices (sora-2 10 s: 10, 15 s: 15), held from the balance.
    assert batch["reserved_credits"] == 25
    assert client.get("/v1/users/ada/credits").json() | {"updated_at": None} == {
        "user_id": "ada", "balance": 75, "held": 25, "updated_at": None,
    }  # fmt: skip
    # The same object as `batch status --json`, field for field.
    read = client.get(f"/v1/batches/{batch['batch_id']}").json()
    assert read == json.loads(api.cli("batch", "status", batch["batch_id"], "--json"))
    assert ledger_kinds(engine, batch["batch_id"]) == {"reserve": 2}
    assert_ledger_invariants(engine)


def test_a_repeated_key_replays_the_batch_and_another_body_with_it_is_refused(
    client: httpx.Client, engine: sa.Engine
) -> None:
    grant(client, "ada", 100)
    body = {"user_id": "ada", "tasks": [SORA]}
    key = {"Idempotency-Key": "order-17"}

    first = client.post("/v1/batches", json=body, headers=key)
    again = client.post("/v1/batches", json=body, headers=key)
    other = client.post("/v1/batches", json=body | {"tasks": [SORA, SORA]}, headers=key)

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["batch_id"] == first.json()["batch_id"]
    refused(other, 409, "Idempotency-Key")
    assert row_counts(engine)["batch_jobs"] == 1
    assert ledger_kinds(engine, first.json()["batch_id"]) == {"reserve": 1}


def test_two_posts_at_once_with_one_key_make_one_batch_and_both_carry_its_id(
    api: ServedApi, engine: sa.Engine
) -> None:
    with api.client() as client:
        grant(client, "ada", 10_000)
    tasks = [SORA | {"prompt": f"heron {i}"} for i in range(20)]
    for attempt in range(5):
        body = {"user_id": "ada", "tasks": tasks}
        answers = at_once(api, 2, body, {"Idempotency-Key": f"race-{attempt}"})

        assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
        ids = {a.json()["batch_id"] for a in answers}
        assert len(ids) == 1
        assert ledger_kinds(engine, ids.pop()) == {"reserve": 20}
    assert row_counts(engine)["batch_jobs"] == 5
    per_task = rows(
        engine, "SELECT video_task_id, COUNT(*) AS n FROM credit_ledger GROUP BY video_task_id"
    )
    assert {r["n"] for r in per_task if r["video_task_id"]} == {1}
    assert_ledger_invariants(engine)


def at_once(
    api: ServedApi, count: int, body: dict[str, Any], headers: dict[str, str]
) -> list[httpx.Response]:
    """``count`` clients post ``body`` to /v1/batches together (a barrier before each)."""
    start = threading.Barrier(count)
    answers: list[httpx.Response] = []

    def post() -> None:
        with api.client() as client:
            start.wait()
            answers.append(client.post("/v1/batches", json=body, headers=headers))

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_every_refusal_names_its_field_and_writes_nothing(
    client: httpx.Client, engine: sa.Engine
) -> None:
    grant(client, "ada", 10)
    before = row_counts(engine)

    refused(client.post("/v1/batches", json={"user_id": "ada", "tasks": [SORA, SORA]}), 402, "")
    refused(client.post("/v1/batches", json={"user_id": "ada", "tasks": "a cat"}), 422, "tasks")
    refused(
        client.post("/v1/batches", json={"user_id": "ada", "tasks": [SORA, 7]}), 422, "tasks[1]"
    )
    refused(client.post("/v1/batches", json={"user_id": "ada", "tasks": []}), 422, "tasks")
    refused(client.post("/v1/batches", json={"tasks": [SORA]}), 422, "user_id")
    refused(client.post("/v1/batches", json={"user_id": " ", "tasks": [SORA]}), 422, "user_id")
    refused(
        client.post("/v1/batches", json={"user_id": "ada", "tasks": [SORA], "price": 0}),
        422,
        "price",
    )
    refused(
        client.post("/v1/batches", json={"user_id": "ada", "tasks": [{}] * 10_001}), 422, "tasks"
    )
    refused(
        client.post(
            "/v1/batches", content=b"{not json", headers={"content-type": "application/json"}
        ),
        422,
        "body",
    )
    long_key = {"Idempotency-Key": "k" * 256}
    refused(
        client.post("/v1/batches", json={"user_id": "ada", "tasks": [SORA]}, headers=long_key),
        422,
        "Idempotency-Key",
    )
    refused(client.post("/v1/users/ada/grants", json={"amount": 0}), 422, "amount")
    refused(client.post("/v1/users/ada/grants", json={"amount": "5"}), 422, "amount")
    refused(client.get("/v1/batches", params={"limit": 0}), 422, "limit")
    refused(client.get("/v1/batches", params={"status": "done"}), 422, "status")

    assert row_counts(engine) == before


def test_a_body_over_16_mib_gets_413_before_anything_is_read(client: httpx.Client) -> None:
    prompt = "p" * 1024
    body = {"user_id": "ada", "tasks": [{"prompt": prompt, "model": "sora-2"}] * 17_000}
    content = json.dumps(body).encode()
    assert len(content) > 16 * 1024 * 1024

    answer = client.post(
        "/v1/batches", content=content, headers={"content-type": "application/json"}
    )

    refused(answer, 413, "body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(content), 1 << 20):
            yield content[start : start + (1 << 20)]

    refused(client.post("/v1/batches", content=chunks()), 413, "body")


def test_unknown_batches_and_users_are_404_and_cancel_refunds_unsent_tasks(
    client: httpx.Client, engine: sa.Engine
) -> None:
    grant(client, "ada", 100)
    batch = client.post("/v1/batches", json={"user_id": "ada", "tasks": [SORA, SORA]}).json()

    assert client.get("/v1/batches/no-such-batch").json()["type"].endswith("unknown-batch")
    assert client.get("/v1/users/nobody/credits").status_code == 404
    assert client.get("/v1/users/nobody/ledger").status_code == 404
    assert client.post("/v1/batches/no-such-batch/cancel").status_code == 404

    done = client.post(f"/v1/batches/{batch['batch_id']}/cancel")
    again = client.post(f"/v1/batches/{batch['batch_id']}/cancel")

    assert done.status_code == 200
    assert done.json() | {"batch_id": None} == {
        "batch_id": None, "cancelled": True, "unchanged": None, "cancelled_tasks": 2,
        "refunded_credits": 20, "still_running": 0, "settled": True,
    }  # fmt: skip
    assert again.json()["cancelled"] is False and "already" in again.json()["unchanged"]
    assert client.get("/v1/users/ada/credits").json()["balance"] == 100
    assert_ledger_invariants(engine)


def test_pages_follow_next_cursor_to_the_end_and_a_forged_cursor_is_refused(
    client: httpx.Client,
) -> None:
    grant(client, "ada", 1000)
    grant(client, "bob", 1000)
    made = [
        client.post("/v1/batches", json={"user_id": user, "tasks": [SORA]}).json()["batch_id"]
        for user in ("ada", "bob", "ada", "ada", "bob")
    ]

    def every_page(path: str, key: str, **params: Any) -> list[list[Any]]:
        pages, cursor = [], None
        while True:
            answer = client.get(path, params=params | ({"cursor": cursor} if cursor else {}))
            assert answer.status_code == 200, answer.text
            pages.append(answer.json()[key])
            cursor = answer.json()["next_cursor"]
            if cursor is None:
                return pages

    pages = every_page("/v1/batches", "batches", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [b["batch_id"] for page in pages for b in page] == made[::-1]  # newest first
    ada = every_page("/v1/batches", "batches", limit=2, user_id="ada")
    assert [b["batch_id"] for page in ada for b in page] == [made[3], made[2], made[0]]

    ledger = every_page("/v1/users/ada/ledger", "entries", limit=2)
    entries = [entry for page in ledger for entry in page]
    assert [e["kind"] for e in entries] == ["grant", "reserve", "reserve", "reserve"]
    assert [e["balance"] for e in entries] == [1000, 990, 980, 970]
    one = every_page("/v1/users/ada/ledger", "entries", batch_id=made[2])
    assert [e["batch_job_id"] for page in one for e in page] == [made[2]]
    refused(client.get("/v1/users/ada/ledger", params={"batch_id": made[1]}), 422, "batch_id")

    forged = [
        "'; DROP TABLE batch_jobs; --",
        base64.urlsafe_b64encode(b'["b", "2026-01-01", "x\' OR 1=1"]').decode(),
        base64.urlsafe_b64encode(b'["l", 3]').decode(),  # a ledger cursor for batches
        base64.urlsafe_b64encode(b'{"after": 1}').decode(),
    ]
    for cursor in forged:
        refused(client.get("/v1/batches", params={"cursor": cursor}), 422, "cursor")
    refused(client.get("/v1/users/ada/ledger", params={"cursor": forged[3]}), 422, "cursor")
    assert len(every_page("/v1/batches", "batches", limit=200)[0]) == 5


def test_health_needs_no_token_and_readiness_reads_the_schema(api: ServedApi) -> None:
    assert httpx.get(f"{api.base_url}/healthz").json() == {"status": "ok"}
    with api.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
