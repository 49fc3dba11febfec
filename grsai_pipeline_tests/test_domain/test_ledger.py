"""SPEC 1: the four account rules, the entry that closes a reservation, and the invariants."""

from __future__ import annotations

import random

import pytest

from grsai_pipeline.domain.ledger import (
    AccountChange,
    EntryKind,
    LedgerEntry,
    LedgerTotals,
    OpenReservation,
    account_change,
    account_violations,
    closing_entry,
    settled_batch_violations,
)


def entry(kind: EntryKind, amount: int) -> LedgerEntry:
    return LedgerEntry(user_id="alice", kind=kind, amount=amount)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (EntryKind.GRANT, AccountChange(balance=7, held=0)),
        (EntryKind.RESERVE, AccountChange(balance=-7, held=7)),
        (EntryKind.CHARGE, AccountChange(balance=0, held=-7)),
        (EntryKind.REFUND, AccountChange(balance=7, held=-7)),
    ],
)
def test_each_entry_kind_moves_the_account_by_its_rule(
    kind: EntryKind, expected: AccountChange
) -> None:
    assert account_change([entry(kind, 7)]) == expected


def test_kinds_have_the_spec_names() -> None:
    assert {k.value for k in EntryKind} == {"grant", "reserve", "charge", "refund"}


def test_a_batch_life_nets_out() -> None:
    # grant 100; reserve 10 + 15 + 20; charge the first two, refund the third.
    entries = [
        entry(EntryKind.GRANT, 100),
        entry(EntryKind.RESERVE, 10),
        entry(EntryKind.RESERVE, 15),
        entry(EntryKind.RESERVE, 20),
        entry(EntryKind.CHARGE, 10),
        entry(EntryKind.CHARGE, 15),
        entry(EntryKind.REFUND, 20),
    ]
    assert account_change(entries) == AccountChange(balance=75, held=0)
    assert account_change(entries[:4]) == AccountChange(balance=55, held=45)
    assert account_change([]) == AccountChange()


def test_random_ledgers_match_the_invariant_formula() -> None:
    rng = random.Random(7)
    kinds = list(EntryKind)
    for _ in range(50):
        entries = [entry(rng.choice(kinds), rng.randint(1, 50)) for _ in range(rng.randint(0, 30))]
        totals = {k: sum(e.amount for e in entries if e.kind is k) for k in kinds}
        change = account_change(entries)
        assert change.balance == (
            totals[EntryKind.GRANT] - totals[EntryKind.RESERVE] + totals[EntryKind.REFUND]
        )
        assert change.held == (
            totals[EntryKind.RESERVE] - totals[EntryKind.CHARGE] - totals[EntryKind.REFUND]
        )


def reservation(status: str, amount: int = 15, number: int = 2) -> OpenReservation:
    return OpenReservation(
        user_id="alice",
        batch_job_id="batch-1",
        video_task_id="task-1",
        reservation=number,
        amount=amount,
        task_status=status,
    )


def test_succeeded_task_is_charged_its_reserved_price() -> None:
    assert closing_entry(reservation("succeeded")) == LedgerEntry(
        user_id="alice",
        kind=EntryKind.CHARGE,
        amount=15,
        batch_job_id="batch-1",
        video_task_id="task-1",
        reservation=2,
    )


def test_failed_task_is_refunded_its_reserved_price() -> None:
    assert closing_entry(reservation("failed", amount=40, number=1)) == LedgerEntry(
        user_id="alice",
        kind=EntryKind.REFUND,
        amount=40,
        batch_job_id="batch-1",
        video_task_id="task-1",
        reservation=1,
    )


@pytest.mark.parametrize("status", ["pending", "processing", "queued"])
def test_unfinished_task_has_no_closing_entry(status: str) -> None:
    assert closing_entry(reservation(status)) is None


def test_closing_a_reservation_releases_exactly_what_it_held() -> None:
    for status, balance_back in (("succeeded", 0), ("failed", 15)):
        close = closing_entry(reservation(status))
        assert close is not None
        net = account_change([entry(EntryKind.RESERVE, 15), close])
        assert net == AccountChange(balance=-15 + balance_back, held=0)


# --- invariants ----------------------------------------------------------------------------


def test_balanced_account_has_no_violations() -> None:
    totals = LedgerTotals(grants=100, reserves=45, charges=25, refunds=20)
    assert account_violations(balance=75, held=0, totals=totals) == []
    assert account_violations(balance=55, held=45, totals=LedgerTotals(100, 45)) == []


def test_account_whose_balance_disagrees_with_the_ledger_is_flagged() -> None:
    problems = account_violations(balance=80, held=0, totals=LedgerTotals(100, 45, 25, 20))
    assert len(problems) == 1
    assert "balance 80" in problems[0] and "75" in problems[0]


def test_account_whose_held_disagrees_with_the_ledger_is_flagged() -> None:
    problems = account_violations(balance=75, held=5, totals=LedgerTotals(100, 45, 25, 20))
    assert len(problems) == 1
    assert "held 5" in problems[0] and "0" in problems[0]


def test_negative_balance_is_flagged_even_when_the_ledger_agrees() -> None:
    # Reserving more than was granted: the formula agrees, the account is still broken.
    problems = account_violations(balance=-5, held=15, totals=LedgerTotals(grants=10, reserves=15))
    assert problems == ["balance -5 < 0"]


def test_negative_held_is_flagged_even_when_the_ledger_agrees() -> None:
    # Charging twice for one reservation.
    problems = account_violations(
        balance=0, held=-10, totals=LedgerTotals(grants=10, reserves=10, charges=20)
    )
    assert problems == ["held -10 < 0"]


def test_balanced_settled_batch_has_no_violations() -> None:
    totals = LedgerTotals(reserves=45, charges=25, refunds=20)
    assert settled_batch_violations(45, 25, 20, totals, unfinished_tasks=0) == []


def test_settled_batch_whose_columns_do_not_add_up_is_flagged() -> None:
    totals = LedgerTotals(reserves=45, charges=25, refunds=15)
    problems = settled_batch_violations(45, 25, 15, totals, unfinished_tasks=0)
    assert len(problems) == 1
    assert "reserved_credits 45" in problems[0]


def test_settled_batch_whose_columns_disagree_with_its_ledger_is_flagged() -> None:
    # Columns add up, but a refund was written twice in the ledger.
    totals = LedgerTotals(reserves=45, charges=25, refunds=40)
    problems = settled_batch_violations(45, 25, 20, totals, unfinished_tasks=0)
    assert len(problems) == 1
    assert "ledger" in problems[0]


def test_settled_batch_with_unfinished_tasks_is_flagged() -> None:
    totals = LedgerTotals(reserves=45, charges=25, refunds=20)
    problems = settled_batch_violations(45, 25, 20, totals, unfinished_tasks=2)
    assert problems == ["2 task(s) still pending or processing"]
