"""Every error the product raises on purpose, under one root.

``str()`` of each is one line fit for a terminal, a Dagster failure or a log, and never holds
the API key. Each carries what a caller needs to act on it as attributes. Which exit code or
HTTP status an error becomes is the adapters' business (``cli``, ``webhook``), not this one's.

    GrsaiPipelineError
    ├── SettingsError            a setting is missing or invalid         .setting
    ├── InvalidInput             bad input from a person                  .field .rule
    │   ├── InvalidTask          a task breaks a rule of SPEC 2           (INVALID_INPUT: ...)
    │   └── IdempotencyConflict  a key reused for another request         .key
    ├── StoreError               the application database refused
    │   ├── DatabaseNotReady     missing, unreachable, or at another schema revision
    │   ├── UnknownBatch                                                  .batch_id
    │   ├── UnknownAccount                                                .user_id
    │   ├── NoArchivedVideo      an unknown task, or one with no archived copy .task_id
    │   ├── InsufficientCredits  nothing written                          .user_id .balance .needed
    │   └── LedgerMismatch       stored money columns differ from the ledger .problems
    ├── GrsaiError               the Grsai API
    │   ├── RunStopped           nothing works until a person acts: the run stops, no task fails
    │   │   ├── ApiAccessDenied          401/403                          .status_code
    │   │   └── UpstreamCreditsExhausted the Grsai account has no credits
    │   ├── ApiUnavailable       5xx, timeouts, connection errors past the retry budget
    │   │                                                                 .uncertain_tries
    │   └── RateLimited          429 past the deadline: the task is left for later
    ├── RunFailed                a Dagster run of a batch failed or did not settle in time
    ├── CallbackRefused          a webHook callback that changes nothing  .status .reason
    └── LinkRefused              a signed video link that does not open
        ├── LinkExpired          signed, but past its expiry
        └── LinkForged           not signed with GRSAI_LINK_SECRET (or signed links are off)
"""

from __future__ import annotations

from typing import Final

INVALID_INPUT_PREFIX: Final = "INVALID_INPUT:"


class GrsaiPipelineError(Exception):
    """The root: anything this package raises on purpose."""


class SettingsError(GrsaiPipelineError, ValueError):
    """A setting is missing or invalid; the message names it (its environment variable)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class InvalidInput(GrsaiPipelineError, ValueError):
    """Input a person gave breaks a rule: ``field`` names what, ``rule`` says which."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(self.describe())

    def describe(self) -> str:
        return f"{self.field} {self.rule}"


class InvalidTask(InvalidInput):
    """A task breaks a rule of SPEC 2; ``str()`` is the stored ``error_message``."""

    def describe(self) -> str:
        return f"{INVALID_INPUT_PREFIX} {self.field}: {self.rule}"


class IdempotencyConflict(InvalidInput):
    """An idempotency key already answered another request; nothing was written."""

    def __init__(self, key: str, first_request: str, first_at: str) -> None:
        self.key = key
        super().__init__(
            "--idempotency-key",
            f"{key!r} was used at {first_at} for a different {first_request} request;"
            " nothing was written (use a new key for a new request)",
        )


class StoreError(GrsaiPipelineError):
    """The application database refused what was asked."""


class DatabaseNotReady(StoreError):
    """The application database is missing, unreachable, or needs ``grsai-pipeline db init``."""


class UnknownBatch(StoreError):
    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"unknown batch id {batch_id!r}")


class UnknownAccount(StoreError):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"no credit account for user {user_id!r}")


class NoArchivedVideo(StoreError):
    """No task by that id, or it has no archived video (not succeeded, or not copied yet)."""

    def __init__(self, task_id: str, why: str) -> None:
        self.task_id = task_id
        super().__init__(f"no archived video for task {task_id!r}: {why}")


class InsufficientCredits(StoreError):
    """The balance cannot cover a batch; nothing was written."""

    def __init__(self, user_id: str, balance: int, needed: int) -> None:
        self.user_id = user_id
        self.balance = balance
        self.needed = needed
        super().__init__(
            f"user {user_id!r} has {balance} credits but the batch needs {needed};"
            " nothing was written"
        )


class LedgerMismatch(StoreError):
    """Balances or batch money columns differ from what the ledger says they must be."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"the ledger does not match: {problems[0]}{more}")


class GrsaiError(GrsaiPipelineError):
    """The Grsai API failed us; the client redacts the key from every message."""


class RunStopped(GrsaiError):
    """A configuration or account problem: stop the run, fail no task, refund nothing."""


class ApiAccessDenied(RunStopped):
    """401 or 403: the key is wrong, revoked, or lacks access."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        reason = "Unauthorized" if status_code == 401 else "Forbidden"
        super().__init__(
            f"Grsai API answered HTTP {status_code} {reason}: check GRSAI_API_KEY "
            "(no task was failed; fix the key and run again to continue)"
        )


class UpstreamCreditsExhausted(RunStopped):
    """The Grsai account behind the key has no credits left (HTTP 200, code -1)."""

    def __init__(self, msg: str) -> None:
        super().__init__(
            f"Grsai API says the upstream account lacks credits ({msg!r}): top up the Grsai "
            "account behind GRSAI_API_KEY (no task was failed; run again to continue)"
        )


class ApiUnavailable(GrsaiError):
    """Transient failures for the whole retry budget; ``str()`` says the last one.

    ``uncertain_tries`` counts tries whose request went out but whose answer was lost (a read
    timeout, a dropped connection, a body that is not JSON): for a submit, each may have created
    a remote task, so resubmitting it may make a duplicate.
    """

    def __init__(self, message: str, uncertain_tries: int = 0) -> None:
        self.uncertain_tries = uncertain_tries
        super().__init__(message)


class RateLimited(GrsaiError):
    """429 answers until the deadline; the request was not accepted."""


class RunFailed(GrsaiPipelineError):
    """A run of a batch through Dagster failed, or did not settle it in time."""


class CallbackRefused(GrsaiPipelineError):
    """A webHook callback that is refused and changes nothing; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class LinkRefused(GrsaiPipelineError):
    """A signed link to a video that does not open; ``str()`` says why, never the secret."""


class LinkExpired(LinkRefused):
    pass


class LinkForged(LinkRefused):
    pass
