"""A run launcher for the production topology on one machine, in place of the Docker or
Kubernetes one (which this machine cannot run).

Like ``DockerRunLauncher``, it starts each run as ``dagster api execute_run`` in a worker of its
own, here a process of the daemon that launched it (there, a container of the code location's
image), records the worker in a run tag (there, the container id), and answers run monitoring's
health checks from it. Dagster's ``DefaultRunLauncher`` starts runs as children of the code
server instead, whose own thread reports a dead child's run failed and offers run monitoring no
health check at all: with it, a kill -9 would never be seen by run monitoring, as it is in
production.

Processes that load an instance configured with it need ``grsai_pipeline_tests`` importable
(``PYTHONPATH`` at the repository's root).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster._core.launcher import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

WORKER_PID_TAG = "grsai_test/worker_pid"

# Exit codes of this process's workers, by pid, once each has ended (for the health check's
# message; the monitoring daemon runs in the process that launched them).
_EXITED: dict[int, int] = {}


def worker_is_alive(pid: int, run_id: str) -> bool:
    """Whether ``pid`` is the live worker of ``run_id`` (a killed child not reaped yet is a
    zombie: dead; a pid reused by another process does not name the run)."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z" and run_id.encode() in command


def _reap(process: subprocess.Popen[bytes]) -> None:
    _EXITED[process.pid] = process.wait()


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Each run in a ``dagster api execute_run`` process of its own, health-checked by pid."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> ProcessRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = context.job_code_origin
        if origin is None:
            raise ValueError(f"run {run.run_id} has no code origin to execute")
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        ).get_command_args()
        # The daemon's environment, output and process group: the test's teardown stops the
        # workers with the daemon.
        process = subprocess.Popen(args)
        threading.Thread(target=_reap, args=(process,), daemon=True).start()
        self._instance.add_run_tags(run.run_id, {WORKER_PID_TAG: str(process.pid)})
        self._instance.report_engine_event(
            f"Run worker started (pid {process.pid})", run, cls=self.__class__
        )

    def _worker_pid(self, run: DagsterRun | None) -> int | None:
        pid = run.tags.get(WORKER_PID_TAG) if run is not None else None
        return int(pid) if pid else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._worker_pid(run)
        if run is None or pid is None or not worker_is_alive(pid, run_id):
            return False
        self._instance.report_run_canceling(run)
        os.kill(pid, signal.SIGTERM)  # as `docker stop`
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = self._worker_pid(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "the run has no worker pid tag")
        if worker_is_alive(pid, run.run_id):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        code = _EXITED.get(pid)
        if code == 0:
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=str(pid))
        how = "is gone" if code is None else f"exited with {_describe(code)}"
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker pid {pid} {how}", run_worker_id=str(pid)
        )


def _describe(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
