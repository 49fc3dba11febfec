"""``make dev`` (scripts/dev.sh): with no API key it starts the simulator, points the settings
at it and says so; with a key it starts nothing. ``dagster dev`` itself is replaced by a stub
that reports what it was given, so the test costs seconds, not a Dagster start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline_tests.conftest import REPO_ROOT
from grsai_pipeline_tests.e2e.conftest import free_port
from grsai_pipeline_tests.test_cli.cli_helpers import command_env

pytestmark = pytest.mark.slow

STUB = """#!{python}
import json, os, sys, httpx
base = os.environ.get("GRSAI_BASE_URL")
try:
    answer = httpx.get(base + "/_sim/stats", timeout=5).status_code if base else None
except httpx.HTTPError as exc:
    answer = repr(exc)
print(json.dumps({{"argv": sys.argv[1:], "key": os.environ.get("GRSAI_API_KEY"),
                  "base_url": base, "simulator": answer, "home": os.environ["DAGSTER_HOME"]}}))
"""


def make_dev(
    tmp_path: Path, settings: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    stub = tmp_path / "dagster"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    env = command_env(
        {
            "BIN": str(Path(sys.executable).parent),
            "DAGSTER": str(stub),
            "DAGSTER_HOME": str(tmp_path / "home"),
            "GRSAI_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
            **settings,
        }
    )
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "dev.sh"), "-p", "3999"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done, json.loads(done.stdout.splitlines()[-1])


def port_closes(port: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.1)
    return False


def test_without_a_key_the_ui_gets_a_simulator_and_says_so(tmp_path: Path) -> None:
    port = free_port()

    done, seen = make_dev(tmp_path, {"GRSAI_SIMULATOR_PORT": str(port)})

    assert seen["argv"] == ["dev", "-w", "workspace.yaml", "-p", "3999"]
    assert seen["base_url"] == f"http://127.0.0.1:{port}"
    assert seen["key"] and seen["simulator"] == 200
    assert seen["home"] == str(tmp_path / "home")
    assert "GRSAI_API_KEY is not set" in done.stderr
    assert "set GRSAI_API_KEY" in done.stderr
    # The schema is ready for the sensor, and the simulator went away with the UI.
    tables = sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")).get_table_names()
    assert "batch_jobs" in tables
    assert port_closes(port)


def test_with_a_key_it_starts_no_simulator(tmp_path: Path) -> None:
    done, seen = make_dev(tmp_path, {"GRSAI_API_KEY": "sk-real"})

    assert seen["key"] == "sk-real"
    assert seen["base_url"] is None and seen["simulator"] is None
    assert "simulator" not in done.stderr
