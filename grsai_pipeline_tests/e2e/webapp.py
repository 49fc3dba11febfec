"""Drive ``examples/webapp`` (Node.js, packages from npm) as a web app would run it: ``npm ci``
from its lockfile once, then ``node write-batch.mjs`` against a PostgreSQL database (``pg``), or
``http-client.ts`` against ``grsai-pipeline api serve`` (TypeScript run by ``tsx``, typed by
``openapi-typescript`` from the API's /openapi.json, requests by ``openapi-fetch``).

Without Node.js and npm the tests that use it skip, unless ``GRSAI_REQUIRE_NODE=1`` (CI), where
a missing tool is an error instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.conftest import REPO_ROOT

WEBAPP = REPO_ROOT / "examples" / "webapp"
REQUIRE_NODE_ENV = "GRSAI_REQUIRE_NODE"
# Held while `npm ci` rebuilds node_modules: tests on two processes may want it at once.


def node_and_npm() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get(REQUIRE_NODE_ENV) == "1":
            pytest.fail(f"node and npm are not on PATH but {REQUIRE_NODE_ENV}=1 requires them")
        pytest.skip("the web-app example needs Node.js 20 and npm on PATH")
    return node, npm


def install_example() -> str:
    """``npm ci`` in examples/webapp unless every package its package.json names is installed
    at the version of its lockfile; returns the node binary."""
    node, npm = node_and_npm()
    npm_ci(npm, WEBAPP)
    return node


def npm_ci(npm: str, folder: Path) -> None:
    """``npm ci`` in ``folder`` unless every package its package.json names is installed at
    the version of its lockfile; under a file lock, since two test processes may want it."""
    with (folder / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_as_locked(folder):
            return
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert _installed_as_locked(folder), "npm ci did not install what package-lock.json locks"


def _installed_as_locked(folder: Path) -> bool:
    """Each dependency and dev dependency is in node_modules at the locked version."""
    locked = json.loads((folder / "package-lock.json").read_text(encoding="utf-8"))["packages"]
    root = locked[""]
    for name in [*root.get("dependencies", {}), *root.get("devDependencies", {})]:
        manifest = folder / "node_modules" / name / "package.json"
        if not manifest.is_file():
            return False
        version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
        if version != locked[f"node_modules/{name}"]["version"]:
            return False
    return True


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


def http_client_args(
    base_url: str,
    user: str,
    prompts: list[str],
    *,
    wait_s: float,
    poll_s: float = 0.25,
    page_size: int = 100,
) -> list[str]:
    """The command line of ``http-client.ts`` (run by tsx in node); installs the example."""
    node = install_example()
    args = [node, "--import", "tsx", "http-client.ts", "--base-url", base_url, "--user", user]
    args += ["--wait-s", str(wait_s), "--poll-s", str(poll_s), "--page-size", str(page_size)]
    for prompt in prompts:
        args += ["--prompt", prompt]
    return args


def start_http_client(
    args: list[str], token: str, out: IO[str], err: IO[str]
) -> subprocess.Popen[str]:
    """Start the client with ``GRSAI_API_TOKEN``; its output goes to the two files as it comes."""
    return subprocess.Popen(
        args,
        cwd=WEBAPP,
        env={**os.environ, "GRSAI_API_TOKEN": token},
        stdout=out,
        stderr=err,
        text=True,
    )


def run_http_client(
    args: list[str], token: str, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run the client to its end with ``GRSAI_API_TOKEN``."""
    return subprocess.run(
        args,
        cwd=WEBAPP,
        env={**os.environ, "GRSAI_API_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def generate_api_types(base_url: str, token: str, out: Path) -> subprocess.CompletedProcess[str]:
    """``generate-types.mjs`` (what ``npm run types`` runs) from the live API into ``out``."""
    node = install_example()
    return subprocess.run(
        [node, "generate-types.mjs", "--base-url", base_url, "--out", str(out)],
        cwd=WEBAPP,
        env={**os.environ, "GRSAI_API_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
    )


def typecheck_example() -> subprocess.CompletedProcess[str]:
    """``tsc --noEmit`` over the example's TypeScript (what ``npm run typecheck`` runs)."""
    node = install_example()
    return subprocess.run(
        [node, str(WEBAPP / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit", "-p", "."],
        cwd=WEBAPP,
        capture_output=True,
        text=True,
        timeout=180,
    )
