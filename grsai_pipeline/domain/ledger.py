"""Credit rules as pure functions (SPEC 1): which entries a settlement writes, how each entry
moves an account, and the invariants that must hold after every committed transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from grsai_pipeline.domain.states import TaskStatus


class EntryKind(StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    CHARGE = "charge"
    REFUND = "refund"


@dataclass(frozen=True)
class LedgerEntry:
    user_id: str
    kind: EntryKind
    amount: int
    batch_job_id: str | None = None
    video_task_id: str | None = None
    reservation: int | None = None


@dataclass(frozen=True)
class OpenReservation:
    """A ``reserve`` entry with no ``charge`` or ``refund`` yet, and its task's status now."""

    user_id: str
    batch_job_id: str
    video_task_id: str
    reservation: int
    amount: int
    task_status: str


def closing_entry(reservation: OpenReservation) -> LedgerEntry | None:
    """The charge (succeeded) or refund (failed) closing a reservation; None while unfinished."""
    if reservation.task_status == TaskStatus.SUCCEEDED:
        kind = EntryKind.CHARGE
    elif reservation.task_status == TaskStatus.FAILED:
        kind = EntryKind.REFUND
    else:
        return None
    return LedgerEntry(
        user_id=reservation.user_id,
        kind=kind,
        amount=reservation.amount,
        batch_job_id=reservation.batch_job_id,
        video_task_id=reservation.video_task_id,
        reservation=reservation.reservation,
    )


@dataclass(frozen=True)
class AccountChange:
    balance: int = 0
    held: int = 0

    def __add__(self, other: AccountChange) -> AccountChange:
        return AccountChange(self.balance + other.balance, self.held + other.held)


def account_change(entries: Iterable[LedgerEntry]) -> AccountChange:
    """How entries move ``balance`` and ``held``: the four rules of SPEC 1."""
    total = AccountChange()
    for entry in entries:
        total += _change_of(entry.kind, entry.amount)
    return total


def _change_of(kind: EntryKind, amount: int) -> AccountChange:
    if kind is EntryKind.GRANT:
        return AccountChange(balance=amount)
    if kind is EntryKind.RESERVE:
        return AccountChange(balance=-amount, held=amount)
    if kind is EntryKind.CHARGE:
        return AccountChange(held=-amount)
    return AccountChange(balance=amount, held=-amount)


@dataclass(frozen=True)
class LedgerTotals:
    """Sums of ledger amounts per kind, for one account or one batch."""

    grants: int = 0
    reserves: int = 0
    charges: int = 0
    refunds: int = 0

    @classmethod
    def of(cls, sums: Mapping[str, int]) -> LedgerTotals:
        """From sums keyed by entry kind (a kind with no entry sums to 0)."""
        return cls(
            grants=sums.get(EntryKind.GRANT.value, 0),
            reserves=sums.get(EntryKind.RESERVE.value, 0),
            charges=sums.get(EntryKind.CHARGE.value, 0),
            refunds=sums.get(EntryKind.REFUND.value, 0),
        )


def account_violations(balance: int, held: int, totals: LedgerTotals) -> list[str]:
    """Broken account invariants of SPEC 1, as sentences; empty when the account balances."""
    problems = []
    expected_balance = totals.grants - totals.reserves + totals.refunds
    expected_held = totals.reserves - totals.charges - totals.refunds
    if balance != expected_balance:
        problems.append(f"balance {balance} != grants - reserves + refunds = {expected_balance}")
    if held != expected_held:
        problems.append(f"held {held} != reserves - charges - refunds = {expected_held}")
    if balance < 0:
        problems.append(f"balance {balance} < 0")
    if held < 0:
        problems.append(f"held {held} < 0")
    return problems


def settled_batch_violations(
    reserved: int, charged: int, refunded: int, totals: LedgerTotals, unfinished_tasks: int
) -> list[str]:
    """Broken invariants of a settled batch: its columns agree with its ledger and balance."""
    problems = []
    if reserved != charged + refunded:
        problems.append(f"reserved_credits {reserved} != charged {charged} + refunded {refunded}")
    if (reserved, charged, refunded) != (totals.reserves, totals.charges, totals.refunds):
        problems.append(
            f"batch columns ({reserved}, {charged}, {refunded}) != ledger sums "
            f"({totals.reserves}, {totals.charges}, {totals.refunds})"
        )
    if unfinished_tasks:
        problems.append(f"{unfinished_tasks} task(s) still pending or processing")
    return problems


@dataclass(frozen=True)
class TaskPayment:
    """One task as the ledger knows it: its current (highest) reservation, if any, and the
    entry that closed it, if any (SPEC 1, "Paid before sent")."""

    status: str
    price: int
    grsai_task_id: str | None
    reservation: int | None
    closed_by: str | None
    batch_settled: bool


def task_payment_violations(task: TaskPayment) -> list[str]:
    """How a task's money breaks SPEC 1, as sentences; empty when it is paid as it should be.

    A task at the API must hold a reservation (unless free); once its batch is settled, a
    succeeded task's reservation is charged and a failed one's refunded."""
    problems = []
    reserved = task.reservation is not None
    if task.grsai_task_id is not None and not reserved and task.price > 0:
        problems.append(f"was sent to the API (remote task {task.grsai_task_id}) unreserved")
    if not task.batch_settled:
        return problems  # charges and refunds are written when the batch settles
    succeeded = task.status == TaskStatus.SUCCEEDED
    final = succeeded or task.status == TaskStatus.FAILED
    if final and reserved and task.closed_by is None:
        problems.append(
            ("succeeded without a charge: " if succeeded else "")
            + f"reservation {task.reservation} of this {task.status} task is neither charged"
            " nor refunded"
        )
    elif succeeded and not reserved and task.price > 0:
        problems.append(f"succeeded without a charge: {task.price} credits never reserved")
    elif succeeded and task.closed_by == EntryKind.REFUND:
        problems.append(f"succeeded without a charge: reservation {task.reservation} was refunded")
    elif task.status == TaskStatus.FAILED and task.closed_by == EntryKind.CHARGE:
        problems.append(f"failed but reservation {task.reservation} was charged")
    return problems
