"""Drive ``examples/webapp`` (Node.js, the ``pg`` package from npm) as a web app would run it:
``npm ci`` from its lockfile once, then ``node write-batch.mjs`` against a PostgreSQL database.

Without Node.js and npm the tests that use it skip, unless ``GRSAI_REQUIRE_NODE=1`` (CI), where
a missing tool is an error instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.conftest import REPO_ROOT

WEBAPP = REPO_ROOT / "examples" / "webapp"
REQUIRE_NODE_ENV = "GRSAI_REQUIRE_NODE"


def node_and_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get(REQUIRE_NODE_ENV) == "1":
            pytest.fail(f"node and npm are not on PATH but {REQUIRE_NODE_ENV}=1 requires them")
        pytest.skip("the web-app example needs Node.js 20 and npm on PATH")
    return node, npm


def install_example() -> str:
    """``npm ci`` in examples/webapp when its packages are missing; returns the node binary."""
    node, npm = node_and_npm()
    if not (WEBAPP / "node_modules" / "pg").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=WEBAPP,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
    return node


def libpq_url(database_url: str) -> str:
    """The application database's SQLAlchemy URL as the ``pg`` package takes it."""
    url = sa.engine.make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def write_batch_with_the_example(
    database_url: str, user: str, prompts: list[str], *, wait_s: float
) -> tuple[str, dict[str, Any] | None, subprocess.CompletedProcess[str]]:
    """Run the example: it writes the batch, then reads it back until settled (or ``wait_s``).
    Returns the batch id, the final JSON line (None when it did not settle) and the process."""
    node = install_example()
    args = [node, "write-batch.mjs", "--user", user, "--wait-s", str(wait_s), "--poll-s", "0.5"]
    for prompt in prompts:
        args += ["--prompt", prompt]
    done = subprocess.run(
        args,
        cwd=WEBAPP,
        env={**os.environ, "DATABASE_URL": libpq_url(database_url)},
        capture_output=True,
        text=True,
        timeout=wait_s + 60,
    )
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("batch "), done.stdout + done.stderr
    batch_id = lines[0].removeprefix("batch ")
    final = json.loads(lines[-1]) if done.returncode == 0 and wait_s > 0 else None
    return batch_id, final, done
