"""Each decision has one home (ARCHITECTURE.md): read from the package's own source, so that a
second place deciding a task's state, writing task rows or moving money fails here by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "grsai_pipeline"


def _modules_matching(pattern: str) -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue  # the schema's history, not the product's behaviour
        if re.search(pattern, path.read_text()):
            found.add(path.relative_to(PACKAGE).as_posix())
    return found


@pytest.mark.parametrize(
    ("what", "pattern", "home"),
    [
        ("decides what a task becomes", r"\ndef decide\(", {"domain/lifecycle.py"}),
        (
            "writes task rows",
            r"video_tasks\.update\(\)",
            {
                "store/tasks.py",  # a task's state, after an event
                "store/polls.py",  # who polls it while it is at the API (never its state)
                "store/archives.py",  # where its video was copied: no state, no money
            },
        ),
        ("moves an account's balance or held", r"credit_accounts\.update\(\)", {"store/ledger.py"}),
        (
            "writes a batch's credit columns",
            r"(reserved|charged|refunded)_credits=",
            {
                "store/ledger.py",  # from the ledger's sums
                "store/batches.py",  # zero at creation, and reading them back
            },
        ),
        ("appends ledger entries", r"credit_ledger\.insert\(\)", {"store/ledger.py"}),
        ("keeps an idempotent answer", r"idempotency_keys\.insert\(\)", {"store/idempotency.py"}),
        ("normalises an answer of the API", r"\ndef normalise\(", {"domain/states.py"}),
        ("validates a task", r"\ndef validate_task\(", {"domain/tasks.py"}),
        ("builds a request body", r"\ndef submit_request\(", {"grsai/wire.py"}),
    ],
)
def test_one_home(what: str, pattern: str, home: set[str]) -> None:
    assert _modules_matching(pattern) == home, f"only {sorted(home)} {what}"


def test_every_task_transition_goes_through_the_guarded_writer() -> None:
    # apply_transitions is the one writer; decide() is called by those who have an event.
    callers = _modules_matching(r"\bdecide\(")
    assert callers == {
        "domain/lifecycle.py",
        "engine/loop.py",  # submit outcomes and poll answers
        "engine/callbacks.py",  # webHook callbacks
        "store/retries.py",  # retries by backfill
        "store/cancels.py",  # cancels
        "store/intake.py",  # batches written as rows, taken in
    }
    assert _modules_matching(r"\bapply_transitions\(") == callers - {"domain/lifecycle.py"} | {
        "store/tasks.py"
    }
