"""``--help`` of the command and of each sub-command (SPEC 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grsai_pipeline_tests.test_cli.cli_helpers import assert_error, call_main, run_cli

TOP_LEVEL_COMMANDS = ("db", "credits", "batch", "run", "simulator", "demo", "webhook")


@pytest.mark.slow
def test_top_level_help_of_the_installed_command_lists_every_command(tmp_path: Path) -> None:
    result = run_cli(["--help"], cwd=tmp_path)

    assert result.code == 0, result
    assert result.err == "", result
    assert "Usage: grsai-pipeline" in result.out
    for name in TOP_LEVEL_COMMANDS:
        assert f"  {name} " in result.out or f"  {name}\n" in result.out, name
    assert list(tmp_path.iterdir()) == []  # help touches no database


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["db", "--help"], "grsai-pipeline db"),
        (["db", "init", "--help"], "grsai-pipeline db init"),
        (["credits", "--help"], "grsai-pipeline credits"),
        (["credits", "grant", "--help"], "grsai-pipeline credits grant [OPTIONS] USER AMOUNT"),
        (["credits", "show", "--help"], "grsai-pipeline credits show [OPTIONS] USER"),
        (["batch", "--help"], "grsai-pipeline batch"),
        (["batch", "create", "--help"], "grsai-pipeline batch create [OPTIONS] FILE"),
        (["batch", "status", "--help"], "grsai-pipeline batch status [OPTIONS] BATCH_ID"),
        (["run", "--help"], "grsai-pipeline run [OPTIONS] BATCH_ID"),
        (["simulator", "--help"], "grsai-pipeline simulator"),
        (["demo", "--help"], "grsai-pipeline demo"),
        (["webhook", "serve", "--help"], "grsai-pipeline webhook serve [OPTIONS]"),
        (["-h"], "grsai-pipeline [OPTIONS] COMMAND"),
    ],
)
def test_help_of_each_command_exits_0_with_its_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = call_main(argv, capsys)

    assert result.code == 0, result
    assert f"Usage: {usage}" in result.out, result
    assert result.err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (["credits", "show", "--help"], ["--json"]),
        (["batch", "create", "--help"], ["--user"]),
        (["batch", "status", "--help"], ["--json"]),
        (["run", "--help"], ["--until-settled", "--timeout"]),
        (["webhook", "serve", "--help"], ["--host", "--port"]),
        (["simulator", "--help"], ["--host", "--port"]),
        (["demo", "--help"], ["--dir"]),
    ],
)
def test_help_documents_the_options_of_spec_6(
    argv: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    result = call_main(argv, capsys)

    assert result.code == 0, result
    for option in options:
        assert option in result.out, option


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    result = call_main(["--version"], capsys)

    assert result.code == 0, result
    assert version("grsai-pipeline") in result.out


def test_an_unknown_command_is_bad_usage_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = call_main(["frobnicate"], capsys)

    assert_error(result, 2, "frobnicate")
