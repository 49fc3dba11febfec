"""`grsai-pipeline` as a real process: `run`, to kill it or run several at once, and any
other command to its end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("grsai-pipeline")


def cli(*args: str, env: dict[str, str]) -> str:
    """Run a command to its end, successfully; returns what it printed."""
    result = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_runner(
    batch_id: str, env: dict[str, str], log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [SCRIPT, "run", batch_id, "--until-settled", "--timeout", "90", *extra],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_to_the_end(batch_id: str, env: dict[str, str], log: Path) -> None:
    process = start_runner(batch_id, env, log)
    code = process.wait(timeout=120)
    assert code == 0, log.read_text(errors="replace")[-3000:]
