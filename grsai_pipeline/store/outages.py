"""Riding out an application database that is briefly unreachable (issue 26): a failover cuts
every connection and refuses new ones for 10-30 s. What failed for that reason is tried again
with backoff, for up to ``OUTAGE_TOLERANCE_S``, and the outage is said once when it starts and
once when it ends; any other database error still fails at once.

Every write of ours may be tried again safely: transitions are guarded updates (a second try
of one that did land changes nothing), and money moves under unique keys."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, TypeVar

import tenacity
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

# How long an outage is ridden out before the error is let through (a failover takes 10-30 s).
OUTAGE_TOLERANCE_S: Final = 120.0
BACKOFF_FIRST_S: Final = 0.25
BACKOFF_MAX_S: Final = 2.0

T = TypeVar("T")


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached (a cut connection, a refused
    one), not that a statement was wrong."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError | InterfaceError) and not _is_lock_wait(error)


def _is_lock_wait(error: DBAPIError) -> bool:
    # SQLite's "database is locked" is an OperationalError too: a writer's wait, not an outage.
    return "database is locked" in str(error.orig)


def reason(error: BaseException) -> str:
    """The driver's first line (no URL, no credentials: psycopg2 names host and port only)."""
    original = error.orig if isinstance(error, DBAPIError) else error
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0] if text else ''}".rstrip(": ")


def unreachable(error: BaseException) -> str:
    """What a tick or a log line says of an outage: the database and the driver's reason."""
    return f"the application database is unreachable ({reason(error)})"


class Outage:
    """One caller's view of the database's outages: when the current one began, when to try
    again, and how many there were."""

    def __init__(self, what: str, tolerance_s: float = OUTAGE_TOLERANCE_S) -> None:
        self.what = what
        self.tolerance_s = tolerance_s
        self.since: float | None = None
        self.retry_at = 0.0
        self._tries = 0
        self.count = 0
        self.seconds = 0.0

    def failed(self, error: BaseException) -> None:
        """``error`` (an outage) ended a try: plan the next one, or raise ``error`` once the
        outage has lasted past the tolerance."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.count += 1
            log.warning(
                "%s: %s; trying again for up to %.0f s",
                self.what, unreachable(error), self.tolerance_s,
            )  # fmt: skip
        elif now - self.since > self.tolerance_s:
            log.error(
                "%s: the application database has been unreachable for %.0f s (%s); giving up",
                self.what, now - self.since, reason(error),
            )  # fmt: skip
            raise error
        self._tries += 1
        self.retry_at = now + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._tries - 1))

    def ended(self) -> None:
        """A try went through: the outage, if any, is over."""
        if self.since is None:
            return
        lasted = time.monotonic() - self.since
        self.seconds += lasted
        log.warning(
            "%s: the application database is back after %.1f s (%d tries)",
            self.what, lasted, self._tries,
        )  # fmt: skip
        self.since, self._tries, self.retry_at = None, 0, 0.0


def ride_out(what: str, work: Callable[[], T], tolerance_s: float = OUTAGE_TOLERANCE_S) -> T:
    """``work()``, tried again with backoff while the database is unreachable, for up to
    ``tolerance_s``; each outage said once as it starts and once as it ends."""
    outage = Outage(what, tolerance_s)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        outage.failed(error)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_outage),
        wait=tenacity.wait_exponential(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S),
        stop=tenacity.stop_after_delay(tolerance_s),
        before_sleep=before_sleep,
        reraise=True,
    )
    result = retrying(work)
    outage.ended()
    return result
