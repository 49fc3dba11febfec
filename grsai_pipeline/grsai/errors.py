"""Errors of the Grsai client, as a small hierarchy a caller can act on.

- :class:`RunStopped`: nothing will work until a person acts (bad key, upstream account out of
  credits). The run stops; no task is failed, nothing is refunded.
- :class:`ApiUnavailable`: the API kept failing (5xx, timeouts, connection errors, bodies that
  are not JSON) for the whole retry budget. The attempt counts as failed.
- :class:`RateLimited`: the API kept answering 429 past the deadline. The task is untouched and
  goes back to the queue; a 429 never fails a task.

No message ever includes the API key: the client redacts it from everything it raises.
"""

from __future__ import annotations


class GrsaiError(Exception):
    """Base class of every error the client raises."""


class RunStopped(GrsaiError):
    """A configuration or account problem: stop the run, fail no task."""


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
