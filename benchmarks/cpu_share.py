"""Where the machine's CPU went during a benchmark, by kind of process (read from /proc).

A thread reads every process's user + system time once a `SAMPLE_S`; a process is counted up
to its last sample, so one that lives less than a sample is missed and the last part of every
process is lost (the `batch create` processes, a second or two each, most of all): the kinds
add up to less than the machine's busy time, which is printed beside them. Dagster's run
workers are told apart by job from Dagster's "Started process for run (pid: N)" events.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path

SAMPLE_S = 0.5
RUN_WORKERS = "run workers"
TICK = os.sysconf("SC_CLK_TCK")


def kind_of(command: str) -> str:
    """The kind of process a command line belongs to, in the benchmark's words."""
    if "grsai-pipeline" in command and " batch create" in command:
        return "`batch create` (CLI)"
    if "grsai-pipeline" in command:
        return "other CLI commands"
    if "multiprocessing.spawn" in command:  # how the code server starts a run's process
        return RUN_WORKERS
    if "dagster._daemon" in command or "dagster-daemon" in command:
        return "dagster daemon"
    if "dagster_webserver" in command or "dagster-webserver" in command:
        return "dagster webserver"
    if "code-server" in command or "api grpc" in command:
        return "code server (sensor and schedule ticks)"
    if "dagster" in command and " dev" in command:
        return "dagster dev"
    words = command.split()
    if not words:  # kernel threads, and processes first read after they had ended
        return "no command line"
    if command.startswith("postgres") or Path(words[0]).name == "postgres":
        return "PostgreSQL"  # its backends ("postgres: user db ...") and the server
    return f"other: {Path(words[0]).name}"


class CpuShare:
    """Samples /proc in a thread from `start()` to `stop()`; `by_kind()` sums what it saw."""

    def __init__(self, named: dict[int, str] | None = None) -> None:
        self._named = {os.getpid(): "the benchmark itself", **(named or {})}  # pid -> kind
        self._first: dict[tuple[int, str], float] = {}
        self._last: dict[tuple[int, str], float] = {}
        self._kind: dict[tuple[int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CpuShare:
        self._sample()  # what ran before the start is not counted
        self._first = dict(self._last)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                key = (int(entry.name), stat[19])  # pid and start time: pids are reused
                if key not in self._kind:
                    raw = Path(entry.path, "cmdline").read_bytes()
                    command = raw.replace(b"\0", b" ").decode(errors="replace")
                    self._kind[key] = self._named.get(key[0]) or kind_of(command)
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            self._last[key] = (int(stat[11]) + int(stat[12])) / TICK

    def by_kind(self, job_of_pid: dict[int, str] | None = None) -> dict[str, float]:
        """CPU seconds per kind; run workers named by their job when `job_of_pid` knows it
        (Dagster's "Started process for run (pid: N)" events)."""
        totals: dict[str, float] = defaultdict(float)
        for key, cpu in self._last.items():
            kind = self._kind[key]
            if kind == RUN_WORKERS and key[0] in (job_of_pid or {}):
                kind = f"run workers of {(job_of_pid or {})[key[0]]}"
            totals[kind] += cpu - self._first.get(key, 0.0)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def print_share(share: CpuShare, busy_s: float, job_of_pid: dict[int, str] | None = None) -> None:
    """One line per kind of process: its CPU seconds and its share of the machine's busy time."""
    totals = share.by_kind(job_of_pid)
    counted = sum(totals.values())
    print(f"CPU by kind of process (sampled every {SAMPLE_S} s; {counted:.0f} of {busy_s:.0f} "
          f"busy s seen):")  # fmt: skip
    for kind, cpu in totals.items():
        if cpu >= 0.5:
            print(f"  {kind:<40} {cpu:8.1f} s  {cpu / max(busy_s, 1e-9):6.1%}")
