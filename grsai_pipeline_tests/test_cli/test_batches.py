"""``batch create FILE --user USER`` and ``batch status BATCH_ID [--json]`` (SPEC 1, 2 and 6)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.store.accounts import grant_credits
from grsai_pipeline_tests.helpers import (
    assert_ledger_invariants,
    ledger_kinds,
    new_batch,
    rows,
    table_snapshot,
)
from grsai_pipeline_tests.test_cli.cli_helpers import (
    assert_error,
    call_main,
    row_counts,
    run_cli,
    use_settings,
    write_json,
)

GOOD_TASKS: list[dict[str, Any]] = [
    {
        "prompt": "A cinematic video",
        "model": "sora-2",
        "reference_url": "https://example.com/image.jpg",
        "aspect_ratio": "9:16",
        "duration": 10,
    },
    {
        "prompt": "一只猫在雨中漫步",
        "model": "veo-flash",
        "aspect_ratio": "16:9",
        "meta": {
            "firstFrameUrl": "https://example.com/first.jpg",
            "lastFrameUrl": "https://example.com/last.jpg",
            "urls": ["https://example.com/ref1.jpg"],
        },
    },
]
STATUS_KEYS = {
    "batch_id",
    "status",
    "counts",
    "reserved_credits",
    "charged_credits",
    "refunded_credits",
    "settled_at",
    "tasks",
}
TASK_KEYS = {"id", "batch_index", "status", "video_url", "error_message", "attempts"}


def _the_batch_id(stdout: str) -> str:
    """The batch id printed alone on stdout, as a script reads it."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    assert str(uuid.UUID(lines[0])) == lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_create_prints_the_id_alone_reserves_and_status_json_shows_the_batch(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}
    grant_credits(engine, "alice", 100)
    batch_file = write_json(tmp_path / "batch.json", GOOD_TASKS)

    created = run_cli(
        ["batch", "create", str(batch_file), "--user", "alice"], cwd=tmp_path, settings=settings
    )
    assert created.code == 0, created
    batch_id = _the_batch_id(created.out)
    status = run_cli(["batch", "status", batch_id, "--json"], cwd=tmp_path, settings=settings)

    assert status.code == 0, status
    assert len(status.out_lines) == 1, status
    shown = json.loads(status.out)
    assert set(shown) >= STATUS_KEYS
    assert shown["batch_id"] == batch_id
    assert shown["status"] == "pending"
    assert shown["settled_at"] is None
    assert shown["counts"]["pending"] == 2
    assert sum(shown["counts"].values()) == 2
    assert {"pending", "processing", "succeeded", "failed"} <= set(shown["counts"])
    prices = rows(
        engine,
        "SELECT batch_index, price FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )
    reserved = sum(p["price"] for p in prices)
    assert reserved > 0
    assert (shown["reserved_credits"], shown["charged_credits"], shown["refunded_credits"]) == (
        reserved,
        0,
        0,
    )
    assert [t["batch_index"] for t in shown["tasks"]] == [0, 1]
    for task in shown["tasks"]:
        assert set(task) >= TASK_KEYS
        assert (task["status"], task["video_url"], task["error_message"], task["attempts"]) == (
            "pending",
            None,
            None,
            0,
        )
    stored_ids = rows(
        engine,
        "SELECT id FROM video_tasks WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )
    assert [t["id"] for t in shown["tasks"]] == [r["id"] for r in stored_ids]
    # The reservation of SPEC 1: one reserve per task, balance moved to held.
    assert ledger_kinds(engine, batch_id) == {"reserve": 2}
    assert rows(engine, "SELECT balance, held FROM credit_accounts") == [
        {"balance": 100 - reserved, "held": reserved}
    ]
    stored = rows(engine, "SELECT prompt, meta FROM video_tasks WHERE batch_index = 1")[0]
    assert stored["prompt"] == "一只猫在雨中漫步"  # stored exactly as given
    meta = stored["meta"]  # raw SQL: JSON text on SQLite, decoded on PostgreSQL
    assert (json.loads(meta) if isinstance(meta, str) else meta) == GOOD_TASKS[1]["meta"]
    assert_ledger_invariants(engine)


def test_text_status_shows_the_batch_its_credits_and_every_task(
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    batch_id = new_batch(engine, [*GOOD_TASKS, {"prompt": "x", "model": "sora-3"}], credits=500)

    result = call_main(["batch", "status", batch_id], capsys)

    assert result.code == 0, result
    assert batch_id in result.out
    assert "pending" in result.out and "failed" in result.out
    assert "INVALID_INPUT: model" in result.out
    reserved = rows(engine, "SELECT reserved_credits FROM batch_jobs")[0]["reserved_credits"]
    assert str(reserved) in result.out


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_status_of_an_unknown_batch_exits_2_naming_it(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    unknown = str(uuid.uuid4())

    result = run_cli(
        ["batch", "status", unknown, "--json"],
        cwd=tmp_path,
        settings={"GRSAI_DATABASE_URL": database_url},
    )

    assert_error(result, 2, unknown)
    assert result.out == ""


def _not_json(path: Path) -> None:
    path.write_text('[{"prompt": "a", "model": "sora-2"},', encoding="utf-8")


def _an_object(path: Path) -> None:
    write_json(path, GOOD_TASKS[0])


def _not_objects(path: Path) -> None:
    write_json(path, [1, "x"])


def _some_not_objects(path: Path) -> None:
    write_json(path, [GOOD_TASKS[0], None])


def _empty_list(path: Path) -> None:
    write_json(path, [])


def _not_utf8(path: Path) -> None:
    path.write_bytes('[{"prompt": "café", "model": "sora-2"}]'.encode("latin-1"))


def _missing(path: Path) -> None:
    pass


def _nan(path: Path) -> None:
    # Python's json reads NaN; JSON has no such value (PostgreSQL refused it half way).
    path.write_text(
        '[{"prompt": "a", "model": "veo-flash", "meta": {"urls": '
        '["https://example.com/a.jpg"], "weight": NaN}}]',
        encoding="utf-8",
    )


BAD_FILES = {
    "not-json": (_not_json, "JSON"),
    "an-object": (_an_object, "list"),
    "not-objects": (_not_objects, "item 0"),
    "some-not-objects": (_some_not_objects, "item 1"),
    "empty-list": (_empty_list, "empty"),
    "not-utf8": (_not_utf8, "UTF-8"),
    "missing": (_missing, "cannot be read"),
    "nan": (_nan, "JSON"),
}


# Every bad file, on both databases, is also refused in-process below.
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", ["not-json", "an-object", "not-objects", "not-utf8"])
def test_a_bad_batch_file_is_refused_whole_with_exit_2(
    case: str, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}
    grant_credits(engine, "alice", 100)
    before = table_snapshot(engine)
    make, words = BAD_FILES[case]
    path = tmp_path / f"{case}.json"
    make(path)

    result = run_cli(
        ["batch", "create", str(path), "--user", "alice"], cwd=tmp_path, settings=settings
    )

    assert_error(result, 2, "FILE", words)
    assert result.out == ""
    assert table_snapshot(engine) == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_batch_file_writes_nothing_on_either_database(
    case: str,
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    make, words = BAD_FILES[case]
    path = tmp_path / f"{case}.json"
    make(path)

    result = call_main(["batch", "create", str(path), "--user", "newcomer"], capsys)

    assert_error(result, 2, "FILE", str(path), words)
    assert result.out == ""
    assert set(row_counts(engine).values()) == {0}


def test_a_task_with_a_bad_field_fails_alone_and_reserves_nothing(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}
    grant_credits(engine, "alice", 100)
    tasks = [
        GOOD_TASKS[0],
        {"prompt": "A square video", "model": "veo-pro", "aspect_ratio": "4:3"},
        {"prompt": "   ", "model": "sora-2"},
        {"prompt": "ok", "model": "sora-2", "reference_url": "ftp://example.com/a.jpg"},
    ]
    batch_file = write_json(tmp_path / "mixed.json", tasks)

    created = run_cli(
        ["batch", "create", str(batch_file), "--user", "alice"], cwd=tmp_path, settings=settings
    )

    assert created.code == 0, created
    batch_id = _the_batch_id(created.out)
    stored = rows(
        engine,
        "SELECT batch_index, status, error_message, price FROM video_tasks"
        " WHERE batch_job_id = :b ORDER BY batch_index",
        b=batch_id,
    )
    assert [t["status"] for t in stored] == ["pending", "failed", "failed", "failed"]
    for task, field in zip(stored[1:], ("aspect_ratio", "prompt", "reference_url"), strict=True):
        assert task["error_message"].startswith("INVALID_INPUT:"), task
        assert field in task["error_message"], task
        assert task["price"] == 0
    reserve = rows(engine, "SELECT amount FROM credit_ledger WHERE kind = 'reserve'")
    assert [r["amount"] for r in reserve] == [stored[0]["price"]]
    assert rows(engine, "SELECT total_tasks, reserved_credits FROM batch_jobs") == [
        {"total_tasks": 4, "reserved_credits": stored[0]["price"]}
    ]
    assert_ledger_invariants(engine)


@pytest.mark.slow
def test_a_batch_the_balance_cannot_cover_exits_1_and_writes_nothing(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}
    grant_credits(engine, "alice", 11)
    before = table_snapshot(engine)
    batch_file = write_json(tmp_path / "batch.json", GOOD_TASKS)  # 10 + 20 credits

    result = run_cli(
        ["batch", "create", str(batch_file), "--user", "alice"], cwd=tmp_path, settings=settings
    )

    assert_error(result, 1, "alice", "11")
    assert result.out == ""  # no batch id for a script to pick up
    assert table_snapshot(engine) == before


def test_a_user_without_an_account_gets_no_account_from_a_refused_batch(
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    batch_file = write_json(tmp_path / "batch.json", GOOD_TASKS)

    result = call_main(["batch", "create", str(batch_file), "--user", "stranger"], capsys)

    assert_error(result, 1, "stranger")
    assert set(row_counts(engine).values()) == {0}


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_create_reads_the_batch_from_stdin_with_a_dash(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}
    grant_credits(engine, "alice", 100)

    created = run_cli(
        ["batch", "create", "-", "--user", "alice"],
        cwd=tmp_path,
        settings=settings,
        stdin=json.dumps(GOOD_TASKS[:1]).encode(),
    )

    assert created.code == 0, created
    batch_id = _the_batch_id(created.out)
    assert rows(engine, "SELECT id, total_tasks FROM batch_jobs") == [
        {"id": batch_id, "total_tasks": 1}
    ]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["batch", "create", "batch.json"], ["--user"]),
        (["batch", "create", "batch.json", "--user", " "], ["--user"]),
        (["batch", "create", ".", "--user", "alice"], ["FILE"]),
        (["batch", "status"], ["BATCH_ID"]),
    ],
)
def test_bad_usage_of_batch_exits_2_and_writes_nothing(
    argv: list[str],
    words: list[str],
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    write_json(tmp_path / "batch.json", GOOD_TASKS)

    result = call_main(argv, capsys)

    assert_error(result, 2, *words)
    assert set(row_counts(engine).values()) == {0}
