"""``demo`` (SPEC 6): zero configuration, no network, a mixed batch settled through Dagster in
under a minute, the result and the ledger printed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.helpers import assert_ledger_invariants, rows
from grsai_pipeline_tests.test_cli.cli_helpers import run_cli, sqlite_url


@pytest.mark.slow
def test_demo_settles_a_mixed_batch_and_prints_the_ledger(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()

    result = run_cli(["demo", "--dir", str(workdir)], cwd=tmp_path, timeout=90)

    elapsed = time.monotonic() - started
    assert result.code == 0, result
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"
    for word in ("grant", "reserve", "charge", "refund", "settled", "INVALID_INPUT"):
        assert word in result.out, word

    engine = sa.create_engine(sqlite_url(workdir / "grsai.db"))
    try:
        batches = rows(engine, "SELECT id, status, settled_at FROM batch_jobs")
        assert len(batches) == 1
        assert batches[0]["status"] == "settled" and batches[0]["settled_at"] is not None
        assert batches[0]["id"] in result.out
        statuses = {r["status"] for r in rows(engine, "SELECT status FROM video_tasks")}
        assert statuses == {"succeeded", "failed"}  # every task final, some of each
        kinds = {r["kind"] for r in rows(engine, "SELECT kind FROM credit_ledger")}
        assert kinds == {"grant", "reserve", "charge", "refund"}
        assert not rows(
            engine, "SELECT id FROM video_tasks WHERE status = 'succeeded' AND video_url IS NULL"
        )
        assert_ledger_invariants(engine)
    finally:
        engine.dispose()
    # Nothing is left in the working directory: the demo keeps its data under --dir.
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert (workdir / "dagster_home").is_dir()
