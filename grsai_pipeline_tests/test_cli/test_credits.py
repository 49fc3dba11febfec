"""``credits grant USER AMOUNT`` and ``credits show USER [--json]`` (SPEC 1 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.helpers import assert_ledger_invariants, rows, table_snapshot
from grsai_pipeline_tests.test_cli.cli_helpers import (
    assert_error,
    call_main,
    row_counts,
    run_cli,
    use_settings,
)

BIGINT_MAX = 2**63 - 1


@pytest.mark.slow
def test_grant_then_show_json_reports_balance_and_held(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}

    granted = run_cli(["credits", "grant", "alice", "120"], cwd=tmp_path, settings=settings)
    shown = run_cli(["credits", "show", "alice", "--json"], cwd=tmp_path, settings=settings)

    assert granted.code == 0, granted
    assert "120" in granted.out
    assert shown.code == 0, shown
    assert len(shown.out_lines) == 1, shown
    account = json.loads(shown.out)
    assert {"user_id", "balance", "held"} <= set(account)
    assert (account["user_id"], account["balance"], account["held"]) == ("alice", 120, 0)
    assert rows(engine, "SELECT user_id, kind, amount, reservation FROM credit_ledger") == [
        {"user_id": "alice", "kind": "grant", "amount": 120, "reservation": None}
    ]
    assert_ledger_invariants(engine)


def test_grants_add_up_and_show_as_text(
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})

    for amount in ("5", "7"):
        assert call_main(["credits", "grant", "bob", amount], capsys).code == 0
    text = call_main(["credits", "show", "bob"], capsys)
    as_json = call_main(["credits", "show", "bob", "--json"], capsys)

    assert text.code == 0, text
    assert "bob" in text.out and "12" in text.out
    assert json.loads(as_json.out)["balance"] == 12
    assert [r["amount"] for r in rows(engine, "SELECT amount FROM credit_ledger ORDER BY id")] == [
        5,
        7,
    ]
    assert_ledger_invariants(engine)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # both: in-process below
@pytest.mark.parametrize(
    ("amount", "words"),
    [("abc", ["AMOUNT", "abc"]), ("0", ["AMOUNT", "0"])],
)
def test_a_bad_amount_exits_2_on_one_line_and_writes_nothing(
    amount: str, words: list[str], database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}

    result = run_cli(["credits", "grant", "alice", amount], cwd=tmp_path, settings=settings)

    assert_error(result, 2, *words)
    assert result.out == ""
    assert set(row_counts(engine).values()) == {0}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["credits", "grant", "alice", "0"], ["AMOUNT", "0"]),
        (["credits", "grant", "alice", "abc"], ["AMOUNT", "abc"]),
        (["credits", "grant", "alice", "--", "-5"], ["AMOUNT", "-5"]),
        (["credits", "grant", "alice", "-5"], ["-5"]),
        (["credits", "grant", "alice", "1.5"], ["AMOUNT", "1.5"]),
        (["credits", "grant", "alice", ""], ["AMOUNT"]),
        (["credits", "grant", "alice"], ["AMOUNT"]),
        (["credits", "grant", "  ", "10"], ["USER"]),
        (["credits", "show"], ["USER"]),
    ],
)
def test_bad_usage_of_credits_exits_2_and_writes_nothing(
    argv: list[str],
    words: list[str],
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    assert call_main(["credits", "grant", "carol", "9"], capsys).code == 0
    before = table_snapshot(engine)

    result = call_main(argv, capsys)

    assert_error(result, 2, *words)
    assert result.out == ""
    assert table_snapshot(engine) == before


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_show_of_an_unknown_user_exits_2_naming_the_user(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    settings = {"GRSAI_DATABASE_URL": database_url}

    result = run_cli(["credits", "show", "nobody", "--json"], cwd=tmp_path, settings=settings)

    assert_error(result, 2, "nobody")
    assert result.out == ""
    assert row_counts(engine)["credit_accounts"] == 0


def test_an_amount_too_large_to_store_is_bad_input(
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})

    result = call_main(["credits", "grant", "alice", str(10**20)], capsys)

    assert_error(result, 2, "AMOUNT")
    assert row_counts(engine)["credit_ledger"] == 0


def test_a_grant_that_would_overflow_the_balance_is_refused_and_changes_nothing(
    database_url: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(monkeypatch, {"GRSAI_DATABASE_URL": database_url})
    assert call_main(["credits", "grant", "alice", "100"], capsys).code == 0

    # Storable alone in a 64-bit column, but not added to the balance.
    result = call_main(["credits", "grant", "alice", str(BIGINT_MAX - 50)], capsys)
    shown = call_main(["credits", "show", "alice", "--json"], capsys)

    assert result.code in (1, 2), result
    assert len(result.err_lines) == 1, result
    balance = json.loads(shown.out)["balance"]
    assert balance == 100 and isinstance(balance, int), shown
    assert [r["amount"] for r in rows(engine, "SELECT amount FROM credit_ledger")] == [100]
    assert_ledger_invariants(engine)
