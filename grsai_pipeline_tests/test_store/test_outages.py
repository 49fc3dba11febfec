"""Riding out a failover of the application database (issue 26): only errors that say the
database cannot be reached are tried again, each outage is said once as it starts and once as
it ends, and past the tolerance the error comes through."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from grsai_pipeline.store import outages
from grsai_pipeline.store.outages import is_outage, ride_out


def refused() -> OperationalError:
    """What psycopg2 raises for a server that refuses connections (a real one: port 1)."""
    engine = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none")
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("port 1 accepted a connection")


def test_only_an_unreachable_database_counts_as_an_outage() -> None:
    assert is_outage(refused())
    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert not is_outage(locked)  # a writer's wait on SQLite: its own timeout handles it
    assert not is_outage(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_outage(ValueError("not a database error"))


def test_ride_out_tries_again_until_the_database_is_back_and_says_it_twice(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outages, "BACKOFF_FIRST_S", 0.01)
    tries: list[int] = []

    def work() -> str:
        tries.append(1)
        if len(tries) < 4:
            raise refused()
        return "written"

    with caplog.at_level(logging.WARNING, logger=outages.__name__):
        assert ride_out("settlement", work) == "written"
    assert len(tries) == 4
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("settlement: the application database is unreachable")
    assert "127.0.0.1" in said[0] and "postgres@" not in said[0]  # no user, no URL
    assert said[1].startswith("settlement: the application database is back after")


def test_past_the_tolerance_or_for_any_other_error_the_error_comes_through() -> None:
    with pytest.raises(OperationalError):
        ride_out("sensor", lambda: (_ for _ in ()).throw(refused()), tolerance_s=0.2)
    calls: list[int] = []

    def wrong() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        ride_out("sensor", wrong)
    assert calls == [1]  # never tried again
