"""SPEC 7: 1,000 open batches with 20 processing tasks each, re-polled under the real daemon.

    python benchmarks/many_batches.py                    # 1,000 x 20, five minutes
    python benchmarks/many_batches.py --batches 100 --minutes 2

The batches are made and submitted first (the API stand-in keeps every task running for an
hour), their partitions exist (the sensor has seen them), and then `dagster dev` runs the code
location with an empty local instance: the schedule's re-polling run is all that polls. The
stand-in logs every poll; from that log the benchmark prints, over the measured window, the
longest time any task went without a poll (SPEC 7 asks for under a minute), polls per task,
the runs Dagster launched, and the CPU the machine spent (the stand-in's share apart).

Set GRSAI_DATABASE_URL (an empty postgresql+psycopg2:// database) to use PostgreSQL.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from throughput import API_KEY, StandIn, _cpu_of  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def call(base_url: str, method: str, path: str) -> Any:
    request = urllib.request.Request(f"{base_url}{path}", method=method)
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def prepare(args: argparse.Namespace, env: dict[str, str], home: Path) -> list[str]:
    """Batches created and submitted, their partitions known to Dagster (not timed)."""
    os.environ.update(env)
    import dagster as dg

    from grsai_pipeline.config import load_settings
    from grsai_pipeline.engine.loop import Until
    from grsai_pipeline.engine.work import open_batches_worker
    from grsai_pipeline.store.accounts import grant_credits
    from grsai_pipeline.store.batches import create_batch
    from grsai_pipeline.store.db import get_engine
    from grsai_pipeline.store.migrate import upgrade_schema

    # Submitting only (no poll of the tasks it submits): the window measures the daemon's runs.
    settings = load_settings().model_copy(update={"poll_interval_s": 3600.0})
    db = get_engine(settings.database_url)
    upgrade_schema(db)
    started = time.monotonic()
    batch_ids = []
    for n in range(args.batches):
        user = f"user-{n % 50}"
        grant_credits(db, user, 10 * args.tasks)
        tasks = [{"prompt": f"batch {n} task {i}", "model": "sora-2"} for i in range(args.tasks)]
        batch_ids.append(create_batch(db, user, tasks, settings.price_table).batch_id)
    print(f"{args.batches} batches of {args.tasks} tasks created in "
          f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
    started = time.monotonic()
    with open_batches_worker(db, settings, "benchmark-submit", set) as worker:
        report = worker.run(Until.SUBMITTED, math.inf)
    print(f"{report.accepted} tasks submitted in {time.monotonic() - started:.1f} s", flush=True)
    instance = dg.DagsterInstance.get()  # the one in DAGSTER_HOME
    instance.add_dynamic_partitions("batches", batch_ids)
    instance.dispose()
    return batch_ids


def longest_gaps(polls: dict[str, list[float]], task_ids: set[str], start: float, end: float
                 ) -> list[float]:  # fmt: skip
    """For each task, the longest stretch of the window without a poll."""
    gaps = []
    for task_id in task_ids:
        times = sorted(t for t in polls.get(task_id, []) if start <= t <= end)
        edges = [start, *times, end]
        gaps.append(max(b - a for a, b in itertools.pairwise(edges)))
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=20, help="processing tasks per batch")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the window")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grsai-many-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    stand_in = StandIn(0.02, (3600.0, 3600.0), log_polls=True)
    env = {
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": stand_in.base_url,
        "GRSAI_DATABASE_URL": os.environ.get("GRSAI_DATABASE_URL") or f"sqlite:///{work}/app.db",
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "DAGSTER_HOME": str(home),
    }
    try:
        prepare(args, env, home)
        import sqlalchemy as sa

        with sa.create_engine(env["GRSAI_DATABASE_URL"]).connect() as conn:
            remote_ids = set(conn.scalars(sa.text("SELECT grsai_task_id FROM video_tasks")).all())
        call(stand_in.base_url, "DELETE", "/_sim/polls")
        busy_before, stand_in_before = machine_busy_s(), _cpu_of(stand_in.pid)
        log = work / "dagster-dev.log"
        with log.open("wb") as out:
            dev = subprocess.Popen(
                [Path(sys.executable).with_name("dagster"), "dev", "-w", "workspace.yaml",
                 "--port", str(free_port())],
                cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        launched = time.time()
        try:
            window_start = None
            while window_start is None:
                time.sleep(5)
                polls = call(stand_in.base_url, "GET", "/_sim/polls")
                if polls:
                    window_start = min(min(times) for times in polls.values())
                elif time.time() - launched > 300:
                    raise SystemExit(f"no poll within 5 minutes; see {log}")
            print(f"first poll {window_start - launched:.0f} s after `dagster dev` started",
                  flush=True)  # fmt: skip
            window_end = window_start + 60 * args.minutes
            time.sleep(max(0.0, window_end - time.time()) + 2)
            polls = call(stand_in.base_url, "GET", "/_sim/polls")
            busy = machine_busy_s() - busy_before
            stand_in_cpu = _cpu_of(stand_in.pid) - stand_in_before
        finally:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a run still winding down: the figures are in
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait(timeout=30)
        (work / "polls.json").write_text(json.dumps(polls))
        gaps = longest_gaps(polls, remote_ids, window_start, window_end)
        in_window = sum(
            1 for times in polls.values() for t in times if window_start <= t <= window_end
        )
        runs = count_runs(home)
        print(f"{len(remote_ids):,} tasks in {args.batches:,} open batches, concurrency "
              f"{args.concurrency}, API latency 20 ms, window {args.minutes:g} min")  # fmt: skip
        print(f"longest time a task went unpolled: {max(gaps):.1f} s "
              f"(median task {statistics.median(gaps):.1f} s); "
              f"tasks over 60 s: {sum(1 for g in gaps if g > 60)}")  # fmt: skip
        print(f"polls in the window: {in_window:,} ({in_window / len(remote_ids):.1f} per task,"
              f" {in_window / (60 * args.minutes):.0f} per second)")  # fmt: skip
        print(f"runs launched: {runs}")
        print(f"CPU over the whole run (2 cores = {2 * (window_end - launched):.0f} s): "
              f"{busy:.0f} s busy, of which the API stand-in {stand_in_cpu:.0f} s")  # fmt: skip
    finally:
        stand_in.stop()


def count_runs(home: Path) -> dict[str, int]:
    probe = (
        "import dagster as dg, json, collections\n"
        "i = dg.DagsterInstance.get()\n"
        "c = collections.Counter(r.dagster_run.job_name for r in i.get_run_records())\n"
        "print(json.dumps(c))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False, env={**os.environ, "DAGSTER_HOME": str(home)})  # fmt: skip
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        return {}


if __name__ == "__main__":
    main()
