"""Running the ``grsai-pipeline`` command as a user does: the installed console script in a
subprocess with its own environment and working directory, or ``main(argv)`` in this process
for the cheap checks of formatting and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from grsai_pipeline.cli import main

APP_TABLES = ("credit_accounts", "batch_jobs", "video_tasks", "credit_ledger")
ERROR_PREFIX = "grsai-pipeline: error: "
# Names of settings (SPEC 6 and ours) that must not leak from the shell into a command.
_SETTING_PREFIXES = ("GRSAI_", "DAGSTER_")
_SETTING_NAMES = ("APP_URL", "NEXT_PUBLIC_APP_URL", "MAX_TASK_RETRIES")


def cli_path() -> str:
    """The console script installed beside this interpreter."""
    beside = Path(sys.executable).with_name("grsai-pipeline")
    found = str(beside) if beside.exists() else shutil.which("grsai-pipeline")
    assert found, "the grsai-pipeline console script is not installed"
    return found


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def command_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any setting, plus ``settings``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SETTING_PREFIXES) and name not in _SETTING_NAMES
    }
    return env | dict(settings or {})


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path,
    settings: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> CliResult:
    """The installed command, in a subprocess, with only ``settings`` as configuration."""
    done = subprocess.run(
        [cli_path(), *args],
        cwd=cwd,
        env=command_env(settings),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(
        done.returncode,
        done.stdout.decode("utf-8", errors="replace"),
        done.stderr.decode("utf-8", errors="replace"),
    )


def call_main(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """``grsai_pipeline.cli.main(argv)`` in this process (settings from ``os.environ``)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    code = exited.value.code
    return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)


def use_settings(monkeypatch: pytest.MonkeyPatch, settings: Mapping[str, str]) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def assert_error(result: CliResult, code: int, *words: str) -> str:
    """The command exited with ``code`` and one line on stderr that holds every word."""
    assert result.code == code, result
    assert len(result.err_lines) == 1, result
    line = result.err_lines[0]
    assert line.startswith(ERROR_PREFIX), result
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def row_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
            for name in APP_TABLES
        }


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def quiet_dagster_home(path: Path) -> Path:
    """A Dagster home whose instance prints no first-run banner (telemetry off)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return path
