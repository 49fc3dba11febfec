"""Every fault of the Grsai API ends in its defined outcome (the table in the README).

Each row drives the simulator into one fault over real HTTP, runs the batch with
``grsai-pipeline run --until-settled`` (in this process, through Dagster) and checks the task,
the batch, the ledger and the exit code. Budgets and grace periods are settings, made short
here so that no row takes more than a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from grsai_pipeline.cli import main
from grsai_pipeline.dev.simulator import FaultRule, SimulatorServer
from grsai_pipeline_tests.conftest import e2e_settings
from grsai_pipeline_tests.helpers import assert_ledger_invariants, ledger_kinds, new_batch, rows

PROMPT = "a quiet harbour at dawn"


@dataclass(frozen=True)
class Fault:
    """One row of the fault table: how to cause it, and what must follow."""

    name: str
    faults: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = PROMPT
    settings: dict[str, str] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0
    status: str = "succeeded"
    error: str | None = None
    ledger: dict[str, int] = field(default_factory=lambda: {"reserve": 1, "charge": 1})
    attempts: int = 1
    possible_duplicates: int = 0


CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused
UNSETTLED = {"reserve": 1}

FAULTS = [
    Fault("401", settings={"GRSAI_API_KEY": "sk-wrong"}, exit_code=1, status="pending",
          error=None, ledger=UNSETTLED, attempts=0),
    Fault("403", faults=[{"endpoint": "submit", "status": 403}], exit_code=1,
          status="pending", ledger=UNSETTLED, attempts=0),
    Fault("429 with Retry-After", faults=[{"endpoint": "submit", "status": 429,
          "retry_after": "1", "times": 1}]),
    Fault("429 without Retry-After", faults=[{"endpoint": "any", "status": 429, "times": 3}]),
    Fault("500", faults=[{"endpoint": "any", "status": 500, "times": 2}]),
    Fault("502", faults=[{"endpoint": "any", "status": 502, "times": 2}]),
    Fault("503", faults=[{"endpoint": "any", "status": 503, "times": 2}]),
    Fault("timeout", faults=[{"endpoint": "submit", "delay_s": 1.5, "times": 1}],
          possible_duplicates=1),
    Fault("connection refused", settings={"GRSAI_BASE_URL": CLOSED_PORT_URL},
          status="failed", error="SUBMIT_FAILED: connection error",
          ledger={"reserve": 1, "refund": 1}, attempts=3),
    Fault("body that is not JSON", faults=[{"endpoint": "submit", "status": 200,
          "body": "<html>upstream hiccup</html>", "times": 1}], possible_duplicates=1),
    Fault("code != 0", faults=[{"endpoint": "submit", "code": 1001,
          "msg": "prompt too long for this model"}], status="failed",
          error="prompt too long for this model", ledger={"reserve": 1, "refund": 1}),
    Fault("-22 then found", simulator={"not_found_window_s": 0.6}),
    Fault("-22 past the grace period", prompt="lost at sea [sim:lost]", status="failed",
          error="TASK_NOT_FOUND", ledger={"reserve": 1, "refund": 1}),
    Fault("insufficient credits", faults=[{"endpoint": "submit", "code": -1,
          "msg": "insufficient credits"}], exit_code=1, status="pending",
          ledger=UNSETTLED, attempts=0),
    Fault("failure_reason error", prompt="melting clock [sim:error]", status="failed",
          error="error: generation failed upstream", ledger={"reserve": 1, "refund": 1},
          attempts=3),
    Fault("input_moderation", prompt="forbidden [sim:input_moderation]", status="failed",
          error="input_moderation:", ledger={"reserve": 1, "refund": 1}),
    Fault("output_moderation", prompt="risky [sim:output_moderation]", status="failed",
          error="output_moderation:", ledger={"reserve": 1, "refund": 1}),
    Fault("succeeded without URL", prompt="ghost [sim:no_url]", status="failed",
          error="SUCCEEDED_WITHOUT_VIDEO_URL", ledger={"reserve": 1, "refund": 1}),
    Fault("a status SPEC 3 does not name", prompt="a riot [sim:violation]", status="failed",
          error="violation: usage policy", ledger={"reserve": 1, "refund": 1}),
]  # fmt: skip


def assert_one_error_line(stderr: str) -> None:
    """Our error is one line, the last; Dagster may print its one-time telemetry notice above."""
    ours = [line for line in stderr.splitlines() if line.startswith("grsai-pipeline:")]
    assert len(ours) == 1 and stderr.strip().splitlines()[-1] == ours[0], stderr


def run_command(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``grsai-pipeline ARGS`` in this process: its exit code and its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_ends_in_its_defined_outcome(
    fault: Fault, database_url, engine, simulator: SimulatorServer, monkeypatch, tmp_path, capsys
) -> None:
    for name, value in (
        e2e_settings(database_url, simulator.base_url, tmp_path) | fault.settings
    ).items():
        monkeypatch.setenv(name, value)
    if fault.simulator:
        httpx.post(f"{simulator.base_url}/_sim/config", json=fault.simulator).raise_for_status()
    for rule in fault.faults:
        simulator.simulator.add_fault(FaultRule.model_validate(rule))
    batch_id = new_batch(engine, [{"prompt": fault.prompt, "model": "sora-2"}])

    code, stderr = run_command("run", batch_id, "--until-settled", "--timeout", "15", capsys=capsys)

    assert code == fault.exit_code, stderr
    task = rows(engine, "SELECT * FROM video_tasks")[0]
    batch = rows(engine, "SELECT * FROM batch_jobs")[0]
    assert task["status"] == fault.status, task
    assert task["attempts"] == fault.attempts, task
    assert task["possible_duplicates"] == fault.possible_duplicates, task
    if fault.error is None:
        assert task["error_message"] is None
    else:
        assert fault.error in task["error_message"], task
    assert ledger_kinds(engine, batch_id) == fault.ledger
    assert batch["status"] == ("settled" if fault.exit_code == 0 else batch["status"])
    if fault.exit_code:
        assert batch["status"] != "settled" and task["claimed_by"] is None
        assert_one_error_line(stderr)
    assert_ledger_invariants(engine)


@pytest.mark.parametrize(
    ("fault", "stopped_by"),
    [
        ({"endpoint": "submit", "status": 401}, "401"),
        ({"endpoint": "submit", "code": -1, "msg": "insufficient credits"}, "lacks credits"),
    ],
    ids=["401", "insufficient credits"],
)
def test_a_stopped_run_continues_once_the_cause_is_fixed(
    fault, stopped_by, database_url, engine, simulator, monkeypatch, tmp_path, capsys
) -> None:
    for name, value in e2e_settings(database_url, simulator.base_url, tmp_path).items():
        monkeypatch.setenv(name, value)
    simulator.simulator.add_fault(FaultRule.model_validate(fault))
    batch_id = new_batch(engine, [{"prompt": f"clip {i}", "model": "veo-flash"} for i in range(3)])

    code, stderr = run_command("run", batch_id, "--until-settled", capsys=capsys)

    assert code == 1 and stopped_by in stderr and "GRSAI_API_KEY" in stderr
    assert_one_error_line(stderr)
    assert {t["status"] for t in rows(engine, "SELECT status FROM video_tasks")} == {"pending"}
    assert ledger_kinds(engine, batch_id) == {"reserve": 3}
    simulator.simulator.clear_faults()
    code, stderr = run_command("run", batch_id, "--until-settled", "--timeout", "15", capsys=capsys)
    assert code == 0, stderr
    assert ledger_kinds(engine, batch_id) == {"reserve": 3, "charge": 3}
    assert_ledger_invariants(engine)
