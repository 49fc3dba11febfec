"""SPEC 7: many open batches polled under the real daemon, in two modes.

    python benchmarks/many_batches.py                    # 1,000 x 20, five minutes
    python benchmarks/many_batches.py --batches 100 --minutes 2
    python benchmarks/many_batches.py --as-users         # 100 x 5 tasks of 180 s, SQLite
    python benchmarks/many_batches.py --as-users --batches 300 --tasks 10 --postgres
    python benchmarks/many_batches.py --as-users --batches 1000 --tasks 20 --postgres \
        --repoll-runs 5
    python benchmarks/many_batches.py --as-users --fairness [--warm]  # 3 tasks behind 1,500
    python benchmarks/many_batches.py --as-users --realistic [--max-gap 2]  # paced (fixed)

The window mode (the default): the batches are made and submitted first (the API stand-in keeps
every task running for an hour), their partitions exist (the sensor has seen them), and then
`dagster dev` runs the code location with an empty local instance: the schedule's re-polling
run is all that polls. The stand-in logs every poll; from that log the benchmark prints, over
the measured window, the longest time any task went without a poll (SPEC 7 asks for under a
minute), polls per task, the runs Dagster launched, and the CPU the machine spent (the
stand-in's share apart). Set GRSAI_DATABASE_URL (an empty postgresql+psycopg2:// database) to
use PostgreSQL.

The as-users mode (`--as-users`) measures the product the way users run it, through the same
doors they use and nothing else: `dagster dev -w workspace.yaml` (webserver, daemon, the sensor
`new_batches_sensor` and the schedule `repoll_processing_schedule`, both on by default) on a
fresh DAGSTER_HOME; credits granted with `grsai-pipeline credits grant`; every batch made by
its own `grsai-pipeline batch create` process, spread over `--create-within` seconds, once the
webserver answers. Nothing is submitted, partitioned or launched by the benchmark: whatever
polls a task is a run the sensor or the schedule started. Every task stays running upstream
for `--generation-s` seconds. The benchmark waits until every batch is settled, then prints,
from the stand-in's log of submits and polls and from the application database:

- every task polled at least once (the count of tasks never polled);
- the longest gap between two polls of an open task: for each task, from its submit upstream
  to its end there (submit + generation), the longest stretch without a poll; the largest, the
  p95 and the median of these per-task figures, and the tasks whose gap is over 60 s
  (SPEC 7: GRSAI_POLL_MAX_GAP_S). Its floor is the poll interval: a perfect poller would
  never leave a task longer;
- polls per task, and how long after its end upstream the poll that saw a task done came;
- the first submit of each batch after its creation (`batch_jobs.created_at`);
- each batch's `settled_at` after the end upstream of its last task (the issue: within
  4 minutes);
- the runs Dagster launched, by job and by status, with the errors of failed runs; the CPU the
  machine spent from `dagster dev`'s start to the last settlement, the stand-in's share apart,
  and by kind of process (benchmarks/cpu_share.py: the CLI, each job's run workers, the
  daemon, PostgreSQL, ...).

The fairness case (`--as-users --fairness`), from the issue: a 3-task batch created 1 s after
a 1,500-task batch of another user got its first submit after 14.7 s; acceptance under `dagster
dev`: the small batch's first submit within 10 s of its creation, and it settles before the
large one. Same set-up as `--as-users` (its settings, SQLite or `--postgres`), tasks of 5-10 s
upstream (`--generation-s` sets one length). Once the sensor has ticked, `batch create` makes
the large batch (`--large`, user-a), and 1 s after that command returned the small one
(`--small`, user-b). Cold (the default): nothing runs before the large batch. `--warm`: a
1-task batch is made and settled first, so the re-polling run (which stays up two minutes after
the last open batch settles) is already up. It waits until both settle, then prints each batch's
first submit after its `created_at` (when the stand-in made its first remote task, and the
earliest `video_tasks.submitted_at`, which a resubmission overwrites), its `settled_at` after
`created_at`, whether the small one settled first, the runs launched and the CPU spent.

The realistic case (`--as-users --realistic`, issue 25): the same set-up, but the stand-in is
the simulator's realistic mode (durations per model with a long tail, the progress kinds of
grsai_pipeline/dev/generation.py, every task succeeding), the batch files' tasks spread over
the models as benchmarks/polling.py does (half sora-2, 30 % veo-flash, 20 % veo-pro, in a seeded
order), and `--max-gap` is GRSAI_POLL_MAX_GAP_S (the interval: fixed polling; 60, the default:
paced). Real generations take minutes, so it does not wait for every batch to settle: it
measures for `--measure-s` seconds from the first `batch create`, lets `dagster dev` run
`GRACE_S` more so that tasks which ended just before the stop can be told, and prints, over the
tasks whose end upstream came before the stop: polls per task (to the poll that told its end),
the delay from the end upstream to the answer that told it (p50/p95/max, and as x interval);
over every task made before the stop (each up to its end or the stop): the longest gap between
two polls (p95/max, against the max gap); over the window: polls per second and per open
task, the wire's floor (GRSAI_MAX_CONCURRENCY / latency polls a second) and how many open tasks
it follows at that rate, the open tasks over time (peak), the CPU the machine spent, and
whether the freshness of issue 25 is met (p95 end -> told at most 1.5 x the interval, no gap
over 60 s). Time is not scaled: `dagster dev`'s own timings do not scale.

The application database and the instance are SQLite by default (the instance's dagster.yaml
is the one `make dev` writes). With `--postgres [URL]` (a server; default the local one, user
postgres) both are fresh PostgreSQL databases made on it, and the instance's dagster.yaml is the
production one at the repository root (dagster-postgres storage from DAGSTER_PG_URL, the queued
run coordinator and its limits, run monitoring). With GRSAI_DATABASE_URL set to a postgresql
URL instead, that database is the application's, and the instance's is DAGSTER_PG_URL or a
fresh database on the same server. The work directory (dagster dev's log, the batch files, the
poll log `polls.json` and, as users, `remote.json`: each remote task's submit and end
upstream) is kept and printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from cpu_share import CpuShare, print_share  # noqa: E402
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
    with open_batches_worker(db, settings, "benchmark-submit") as worker:
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


def run_window(args: argparse.Namespace) -> None:
    """The window mode: batches submitted beforehand, then only the re-polling run polls."""
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


# --- as users run it: dagster dev, the command line, the sensor and the schedule --------------

AS_USERS_DEFAULTS = {"batches": 100, "tasks": 5, "concurrency": 8}
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
MAX_GAP_S = 60.0  # SPEC 7: GRSAI_POLL_MAX_GAP_S, the longest a task at the API waits for a poll
CLI = Path(sys.executable).with_name("grsai-pipeline")
DAGSTER = Path(sys.executable).with_name("dagster")
# The instance `make dev` makes (scripts/dev.sh): SQLite, run monitoring on, sensor runs paced.
DEV_INSTANCE_YAML = REPO / "scripts" / "dev-instance.yaml"
RUN_SUMMARY_PROBE = """\
import collections, json
import dagster as dg
i = dg.DagsterInstance.get()
records = i.get_run_records()
by_status = collections.Counter(
    f"{r.dagster_run.job_name} {r.dagster_run.status.value}" for r in records)
failures = []
kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
for r in records:
    if r.dagster_run.status != dg.DagsterRunStatus.FAILURE or len(failures) >= 5:
        continue
    for entry in i.all_logs(r.dagster_run.run_id, of_type=kinds):
        error = getattr(entry.dagster_event.event_specific_data, "error", None)
        text = error.message if error is not None else entry.message
        failures.append(f"{r.dagster_run.job_name} {r.dagster_run.run_id[:8]}: {text.strip()}")
job_of_pid = {}  # which job's run each run worker process was, for the CPU by process
longest_reads = []  # each ended re-polling run's longest read of the database, seconds
kinds = {dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_OUTPUT}
for r in records:
    for entry in i.all_logs(r.dagster_run.run_id, of_type=kinds):
        if entry.message.startswith("Started process for run (pid: "):
            job_of_pid[entry.message.split("pid: ")[1].rstrip(").")] = r.dagster_run.job_name
        metadata = getattr(entry.dagster_event.event_specific_data, "metadata", None) or {}
        if "longest_read_s" in metadata:
            longest_reads.append(metadata["longest_read_s"].value)
print(json.dumps({"by_status": by_status, "failures": failures, "job_of_pid": job_of_pid,
                  "longest_reads": sorted(longest_reads)}))
"""


def add_as_users_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("as users (--as-users)")
    group.add_argument(
        "--as-users",
        action="store_true",
        help="dagster dev, batches made with the CLI, the sensor and schedule on",
    )
    group.add_argument(
        "--generation-s", type=float, help="how long each task runs upstream: 180; --fairness 5-10"
    )
    group.add_argument("--latency-ms", type=float, default=100.0, help="API latency")
    group.add_argument("--poll-interval", type=float, default=2.0, help="GRSAI_POLL_INTERVAL_S")
    group.add_argument("--poll-budget", type=float, default=5.0, help="GRSAI_POLL_BUDGET_S")
    group.add_argument("--create-within", type=float, default=20.0,
                       help="seconds over which the batches are created")  # fmt: skip
    group.add_argument("--create-workers", type=int, default=4,
                       help="`batch create` processes at once, at most")  # fmt: skip
    group.add_argument("--users", type=int, default=50, help="users the batches belong to")
    group.add_argument(
        "--timeout", type=float, help="seconds to wait for settlement; (longest) generation + 600"
    )
    group.add_argument("--postgres", nargs="?", const=LOCAL_POSTGRES, metavar="URL",
                       help="fresh PostgreSQL databases on this server for the application and"
                            f" the instance (default {LOCAL_POSTGRES})")  # fmt: skip
    group.add_argument(
        "--fairness", action="store_true", help="a small batch 1 s after another user's large one"
    )
    group.add_argument("--large", type=int, default=1500, help="--fairness: the large batch")
    group.add_argument("--small", type=int, default=3, help="--fairness: the small batch")
    group.add_argument(
        "--warm", action="store_true", help="--fairness: a warm-up batch settled first"
    )
    group.add_argument("--realistic", action="store_true",
                       help="realistic durations per model and progress (issue 25)")  # fmt: skip
    group.add_argument(
        "--max-gap", type=float, help="GRSAI_POLL_MAX_GAP_S (the interval: fixed polling); 60"
    )
    group.add_argument(
        "--measure-s", type=float, default=360.0, help="--realistic: seconds from the 1st create"
    )
    group.add_argument(
        "--repoll-runs", type=int, default=1, help="GRSAI_REPOLL_RUNS (grsai/repoll limit N + 1)"
    )


@dataclass
class Databases:
    app_url: str
    instance_url: str | None  # None: a SQLite instance in DAGSTER_HOME
    made: list[str] = field(default_factory=list)  # fresh databases this run created

    def describe(self) -> str:
        app = "PostgreSQL" if self.app_url.startswith("postgresql") else "SQLite"
        instance = "PostgreSQL" if self.instance_url else "SQLite"
        return f"application database {app}, instance {instance}"


def psycopg2_url(url: str) -> sa.URL:
    """A PostgreSQL URL with the psycopg2 driver (the one installed; SPEC 1, dagster.yaml)."""
    return sa.make_url(url).set(drivername="postgresql+psycopg2")


def fresh_database(server_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``server_url``; the new database's URL."""
    server = psycopg2_url(server_url)
    admin = sa.create_engine(server.set(database=server.database or "postgres"),
                             isolation_level="AUTOCOMMIT", poolclass=NullPool)  # fmt: skip
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def choose_databases(args: argparse.Namespace, work: Path) -> Databases:
    stamp = f"grsai_bench_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    given = os.environ.get("GRSAI_DATABASE_URL")
    if args.postgres:
        app, instance = stamp + "_app", stamp + "_dagster"
        return Databases(fresh_database(args.postgres, app),
                         fresh_database(args.postgres, instance), [app, instance])  # fmt: skip
    if given and given.startswith("postgresql"):
        app_url = psycopg2_url(given).render_as_string(hide_password=False)
        if os.environ.get("DAGSTER_PG_URL"):
            instance_url = psycopg2_url(os.environ["DAGSTER_PG_URL"])
            return Databases(app_url, instance_url.render_as_string(hide_password=False))
        return Databases(app_url, fresh_database(given, stamp + "_dagster"), [stamp + "_dagster"])
    return Databases(given or f"sqlite:///{work}/app.db", None)


def as_users_env(args: argparse.Namespace, base_url: str, work: Path, dbs: Databases
                 ) -> dict[str, str]:  # fmt: skip
    """The environment of every process: the CLI's, dagster dev's and its runs'."""
    home = work / "dagster_home"
    home.mkdir()
    instance_yaml = (REPO / "dagster.yaml" if dbs.instance_url else DEV_INSTANCE_YAML).read_text()
    if args.repoll_runs > 1:
        # As the README says for GRSAI_REPOLL_RUNS=N: the instance's grsai/repoll limit at N + 1.
        instance_yaml = repoll_limit(instance_yaml, args.repoll_runs + 1)
    (home / "dagster.yaml").write_text(instance_yaml)
    env = {
        **os.environ,
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": base_url,
        "GRSAI_DATABASE_URL": dbs.app_url,
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "GRSAI_POLL_INTERVAL_S": f"{args.poll_interval:g}",
        "GRSAI_POLL_BUDGET_S": f"{args.poll_budget:g}",
        "GRSAI_ARCHIVE_URL": str(work / "videos"),  # not ./videos of the repository
        "DAGSTER_HOME": str(home),
        "GRSAI_REPOLL_RUNS": str(args.repoll_runs),
    }
    if args.max_gap is not None:
        env["GRSAI_POLL_MAX_GAP_S"] = f"{args.max_gap:g}"
    if dbs.instance_url:
        env["DAGSTER_PG_URL"] = dbs.instance_url
    return env


def repoll_limit(instance_yaml: str, limit: int) -> str:
    """The instance's configuration with the ``grsai/repoll`` tag limit set to ``limit``."""
    key = "- key: grsai/repoll\n"
    if key not in instance_yaml:
        return instance_yaml + f"      {key}        limit: {limit}\n"
    head, tail = instance_yaml.split(key, 1)
    return head + key + re.sub(r"limit: \d+", f"limit: {limit}", tail, count=1)


def cli(env: dict[str, str], *args: str) -> str:
    """``grsai-pipeline ARGS`` as a user types it; its stdout."""
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"grsai-pipeline {' '.join(args)}: exit {done.returncode}: "
                         f"{done.stderr.strip()[-2000:]}")  # fmt: skip
    return done.stdout


def users_of(args: argparse.Namespace) -> list[str]:
    return [f"user-{n}" for n in range(min(args.users, args.batches))]


def grant_credits(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Enough credits for every user's batches (Sora, 10 s: 10 credits a task; twice that;
    realistic: veo-pro's 40, twice)."""
    users = users_of(args)
    per_task = 80 if args.realistic else 20
    amount = per_task * args.tasks * math.ceil(args.batches / len(users))
    with ThreadPoolExecutor(args.create_workers) as pool:
        list(pool.map(lambda user: cli(env, "credits", "grant", user, str(amount)), users))


def write_batch_files(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    """Per batch, its user and its batch file (a JSON list of Sora tasks, as the web app writes)."""
    users = users_of(args)
    models = realistic_models(args.batches * args.tasks) if args.realistic else None
    files = []
    for n in range(args.batches):
        user = users[n % len(users)]
        tasks = [{"prompt": f"{user} batch {n} task {i}",
                  "model": models[n * args.tasks + i] if models else "sora-2"}
                 for i in range(args.tasks)]  # fmt: skip
        path = work / "batches" / f"batch-{n}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(tasks))
        files.append((user, path))
    return files


@dataclass
class Created:
    batch_id: str
    began: float  # wall clock
    ended: float
    late_s: float  # how far behind its planned start the call began


def create_batches(args: argparse.Namespace, env: dict[str, str],
                   files: list[tuple[str, Path]]) -> list[Created]:  # fmt: skip
    """One `grsai-pipeline batch create` process per batch, starting evenly over
    ``--create-within`` seconds, at most ``--create-workers`` at once."""
    start = time.time() + 0.5
    step = args.create_within / len(files)

    def create(n: int) -> Created:
        planned = start + n * step
        time.sleep(max(0.0, planned - time.time()))
        began = time.time()
        user, path = files[n]
        batch_id = cli(env, "batch", "create", str(path), "--user", user).strip()
        return Created(batch_id, began, time.time(), began - planned)

    with ThreadPoolExecutor(args.create_workers) as pool:
        return list(pool.map(create, range(len(files))))


def start_dagster_dev(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`dagster dev -w workspace.yaml` in the repository, its output to ``log``."""
    port = free_port()
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return dev, port


def wait_for_webserver(dev: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise SystemExit(f"dagster dev exited ({dev.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"dagster dev's webserver did not answer within 5 minutes; see {log}")


def stop_dagster_dev(dev: subprocess.Popen[bytes]) -> None:
    os.killpg(dev.pid, signal.SIGTERM)
    try:
        dev.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a run still winding down: the figures are in
        os.killpg(dev.pid, signal.SIGKILL)
        dev.wait(timeout=30)


def settled_count(db: sa.Engine, batch_ids: list[str]) -> int:
    from grsai_pipeline.store.schema import batch_jobs

    query = sa.select(sa.func.count()).where(
        batch_jobs.c.id.in_(batch_ids), batch_jobs.c.status == "settled"
    )
    with db.connect() as conn:
        return int(conn.scalar(query) or 0)


def wait_until_settled(db: sa.Engine, batch_ids: list[str], timeout_s: float,
                       dev: subprocess.Popen[bytes]) -> bool:  # fmt: skip
    """Until every batch is settled (True), or ``timeout_s`` passed (False); progress each
    minute."""
    started = time.monotonic()
    shown = started
    while (done := settled_count(db, batch_ids)) < len(batch_ids):
        if dev.poll() is not None:
            raise SystemExit(f"dagster dev exited ({dev.returncode}) before every batch settled")
        if time.monotonic() - started > timeout_s:
            return False
        if time.monotonic() - shown >= 60:
            shown = time.monotonic()
            print(f"  {shown - started:.0f} s: {done} of {len(batch_ids)} batches settled",
                  flush=True)  # fmt: skip
        time.sleep(2)
    return True


@dataclass
class Observed:
    """What the run left: the stand-in's log and the application database's rows."""

    remote: dict[str, tuple[float, float]]  # remote task id: (made, ended) upstream
    polls: dict[str, list[float]]  # remote task id: poll times, sorted
    batch_of: dict[str, str]  # remote task id (the task's latest): batch id
    created: dict[str, float]  # batch id: batch_jobs.created_at
    settled: dict[str, float]  # batch id: batch_jobs.settled_at, settled batches only
    tasks: int  # rows in video_tasks of these batches
    unsent: int  # of them, never given a remote id


def read_app_database(
    db: sa.Engine, batch_ids: list[str]
) -> tuple[dict[str, str], dict[str, float], dict[str, float], int, int]:
    """Remote task id -> batch, batches' created_at and settled_at, tasks and unsent tasks."""
    from grsai_pipeline.store.schema import batch_jobs, video_tasks

    with db.connect() as conn:
        batches = conn.execute(
            sa.select(batch_jobs.c.id, batch_jobs.c.created_at, batch_jobs.c.settled_at)
            .where(batch_jobs.c.id.in_(batch_ids))
        ).all()  # fmt: skip
        tasks = conn.execute(
            sa.select(video_tasks.c.batch_job_id, video_tasks.c.grsai_task_id)
            .where(video_tasks.c.batch_job_id.in_(batch_ids))
        ).all()  # fmt: skip
    batch_of = {remote: batch for batch, remote in tasks if remote}
    created = {row.id: row.created_at.timestamp() for row in batches}
    settled = {row.id: row.settled_at.timestamp() for row in batches if row.settled_at}
    return batch_of, created, settled, len(tasks), sum(1 for _, remote in tasks if not remote)


def task_longest_gap(made: float, ended: float, polls: list[float]) -> float:
    """The longest stretch of [made, ended] (the task open upstream) without a poll."""
    edges = [made, *(t for t in polls if made < t < ended), ended]
    return max(b - a for a, b in itertools.pairwise(edges))


def seen_done_after(ended: float, polls: list[float], latency_s: float) -> float | None:
    """How long after its end upstream the first answer saying it is done left the stand-in.

    The stand-in logs a poll when it arrives and judges the task ``latency_s`` later."""
    return next((t + latency_s - ended for t in polls if t + latency_s >= ended), None)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    median, p95 = statistics.median(values), pct(values, 0.95)
    return f"p50 {median:.1f} s, p95 {p95:.1f} s, max {max(values):.1f} s"


def print_header(args: argparse.Namespace, dbs: Databases) -> None:
    print(f"as users: {args.batches:,} batches x {args.tasks} tasks "
          f"({args.batches * args.tasks:,} tasks) of {args.generation_s:g} s upstream, "
          f"{len(users_of(args))} users, API latency {args.latency_ms:g} ms; "
          f"GRSAI_POLL_INTERVAL_S={args.poll_interval:g} GRSAI_POLL_BUDGET_S={args.poll_budget:g}"
          f" GRSAI_MAX_CONCURRENCY={args.concurrency} GRSAI_REPOLL_RUNS={args.repoll_runs}; "
          f"{dbs.describe()}; {os.cpu_count()} cores", flush=True)  # fmt: skip


def print_creation(args: argparse.Namespace, made: list[Created]) -> None:
    span = max(c.ended for c in made) - min(c.began for c in made)
    calls = [c.ended - c.began for c in made]
    print(f"created {len(made):,} batches with `grsai-pipeline batch create` in {span:.1f} s "
          f"(asked: within {args.create_within:g} s, {args.create_workers} at a time; a call "
          f"{spread(calls)}; latest start {max(c.late_s for c in made):.1f} s behind plan)",
          flush=True)  # fmt: skip


def print_polling(args: argparse.Namespace, seen: Observed) -> None:
    remote = seen.remote
    never = [r for r in remote if not seen.polls.get(r)]
    print(f"tasks: {seen.tasks:,} in the application database, {len(remote):,} made upstream "
          f"({seen.unsent} never sent; {len(set(remote) - set(seen.batch_of))} remote tasks "
          f"no row names: resubmits)")  # fmt: skip
    print(f"never polled: {len(never)}" + (" (every task polled)" if not never else ""))
    gaps = [task_longest_gap(*remote[r], seen.polls.get(r, [])) for r in remote]
    if not gaps:
        return
    worst = max(gaps)
    print(f"longest gap between two polls of an open task: {worst:.1f} s (per task: p95 "
          f"{pct(gaps, 0.95):.1f} s, median {statistics.median(gaps):.1f} s); tasks with a gap "
          f"over {MAX_GAP_S:g} s: {sum(1 for g in gaps if g > MAX_GAP_S)}")  # fmt: skip
    print(f"floor: poll interval {args.poll_interval:g} s; longest gap / floor = "
          f"{worst / args.poll_interval:.1f}x")  # fmt: skip
    latency_s = args.latency_ms / 1000
    while_open = sum(
        1 for r in remote for t in seen.polls.get(r, []) if t + latency_s < remote[r][1]
    )
    after = sum(len(seen.polls.get(r, [])) for r in remote) - while_open
    print(f"polls per task: {(while_open + after) / len(remote):.1f} "
          f"({while_open / len(remote):.1f} while it ran upstream, {after / len(remote):.1f} "
          f"after its end)")  # fmt: skip
    seen_done = [d for r in remote
                 if (d := seen_done_after(remote[r][1], seen.polls.get(r, []), latency_s))
                 is not None]  # fmt: skip
    print(f"end upstream -> the poll answer that told it: {spread(seen_done)} "
          f"({len(remote) - len(seen_done)} tasks never told)")  # fmt: skip


def print_batches(seen: Observed) -> None:
    first_submit: dict[str, float] = {}
    last_end: dict[str, float] = {}
    for remote, batch in seen.batch_of.items():
        made, ended = seen.remote.get(remote, (math.inf, -math.inf))
        first_submit[batch] = min(first_submit.get(batch, math.inf), made)
        last_end[batch] = max(last_end.get(batch, -math.inf), ended)
    delays = [first_submit[b] - seen.created[b] for b in first_submit if b in seen.created]
    print(f"first submit after the batch's creation: {spread(delays)}")
    lags = [seen.settled[b] - last_end[b] for b in seen.settled if b in last_end]
    late = sum(1 for lag in lags if lag > 240)
    print(f"settled after its last task's end upstream: {spread(lags)}; over 4 min: {late}")


def run_summary(env: dict[str, str]) -> dict[str, Any]:
    """Runs by job, by job and status, and the errors of (up to five) failed runs."""
    home = Path(env["DAGSTER_HOME"])
    summary = instance_probe(RUN_SUMMARY_PROBE, env)
    return {"by_job": count_runs(home, env), **(summary if isinstance(summary, dict) else {})}


def print_runs(summary: dict[str, Any], log: Path) -> None:
    print(f"runs launched: {summary['by_job']}")
    print(f"runs by status (before `dagster dev` was stopped): {summary.get('by_status', '?')}")
    for failure in summary.get("failures", []):
        print(f"  failed: {failure[:400]}")
    if reads := summary.get("longest_reads"):
        print(f"longest read of the database per ended re-polling run: median"
              f" {reads[len(reads) // 2]:.2f} s, max {reads[-1]:.2f} s"
              f" ({len(reads)} runs)")  # fmt: skip
    errors = sum(
        1 for line in log.read_text(errors="replace").splitlines() if " - ERROR - " in line
    )
    print(f"lines with ' - ERROR - ' in dagster dev's log: {errors} ({log})")


def run_under_dagster_dev(args: argparse.Namespace) -> None:
    """The as-users mode, or its fairness case: a work directory, the databases, the API
    stand-in, then the case's own header and measurement; see the module's docstring."""
    fairness = args.fairness
    work = Path(tempfile.mkdtemp(prefix="grsai-fairness-" if fairness else "grsai-as-users-"))
    dbs = choose_databases(args, work)
    latency_s = args.latency_ms / 1000
    if fairness:
        stand_in = StandIn(latency_s, fairness_generation(args))
    else:
        gen = args.generation_s
        stand_in = StandIn(latency_s, (gen, gen), log_polls=True)
    try:
        if args.realistic:  # the simulator's realistic mode (its seed stays 7)
            post_json(stand_in.base_url, "/_sim/config", {"realistic": True})
        env = as_users_env(args, stand_in.base_url, work, dbs)
        if args.realistic:
            print_realistic_header(args, dbs, env)
            measure_realistic(args, env, stand_in, dbs, work)
        else:
            (print_fairness_header if fairness else print_header)(args, dbs)
            (measure_fairness if fairness else measure_as_users)(args, env, stand_in, dbs, work)
    finally:
        stand_in.stop()
    if dbs.made:
        print(f"fresh databases kept: {', '.join(dbs.made)}")
    print(f"work directory: {work}")


def measure_as_users(args: argparse.Namespace, env: dict[str, str], stand_in: StandIn,
                     dbs: Databases, work: Path) -> None:  # fmt: skip
    cli(env, "db", "init")
    grant_credits(args, env)
    files = write_batch_files(args, work)
    log = work / "dagster-dev.log"
    db = sa.create_engine(dbs.app_url, poolclass=NullPool)
    busy_before, stand_in_before = machine_busy_s(), _cpu_of(stand_in.pid)
    share = CpuShare({stand_in.pid: "API stand-in"}).start()
    launched = time.time()
    dev, port = start_dagster_dev(env, log)
    try:
        wait_for_webserver(dev, port, log)
        print(f"dagster dev answers {time.time() - launched:.0f} s after its start", flush=True)
        made = create_batches(args, env, files)
        print_creation(args, made)
        batch_ids = [c.batch_id for c in made]
        timeout = args.timeout if args.timeout is not None else args.generation_s + 600
        all_settled = wait_until_settled(db, batch_ids, timeout, dev)
        elapsed = time.time() - launched
        share.stop()
        busy = machine_busy_s() - busy_before
        stand_in_cpu = _cpu_of(stand_in.pid) - stand_in_before
        polls, remote = stand_in.polls(), stand_in.remote_tasks()
        runs = run_summary(env)
    finally:
        stop_dagster_dev(dev)
    (work / "polls.json").write_text(json.dumps(polls))
    (work / "remote.json").write_text(json.dumps(remote))
    batch_of, created, settled, tasks, unsent = read_app_database(db, batch_ids)
    seen = Observed(remote, {r: sorted(t) for r, t in polls.items()}, batch_of, created, settled,
                    tasks, unsent)  # fmt: skip
    state = "every batch settled" if all_settled else f"TIMED OUT after {timeout:.0f} s"
    print(f"{len(settled):,} of {len(batch_ids):,} batches settled ({state}), "
          f"{elapsed:.0f} s after `dagster dev` started")  # fmt: skip
    print_polling(args, seen)
    print_batches(seen)
    print_runs(runs, log)
    print(f"CPU from `dagster dev`'s start to the last settlement ({os.cpu_count()} cores x "
          f"{elapsed:.0f} s = {(os.cpu_count() or 1) * elapsed:.0f} s): {busy:.0f} s busy, of "
          f"which the API stand-in {stand_in_cpu:.1f} s")  # fmt: skip
    print_share(share, busy, {int(p): j for p, j in runs.get("job_of_pid", {}).items()})


# --- realistic (--as-users --realistic): paced polls against fixed ones (issue 25) ----------

# How the batch files' tasks spread over the models (benchmarks/polling.py's shares).
REALISTIC_SHARES = {"sora-2": 0.5, "veo-flash": 0.3, "veo-pro": 0.2}
REALISTIC_SEED = 7
GRACE_S = 60.0  # after the stop, for the tasks that ended just before it to be told
FRESHNESS_X = 1.5  # the issue: p95 end upstream -> told at most 1.5 x GRSAI_POLL_INTERVAL_S
OPEN_STEP_S = 30.0  # the open tasks are printed every this many seconds


def post_json(base_url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{base_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def realistic_models(count: int) -> list[str]:
    """``count`` models in REALISTIC_SHARES, in an order drawn from REALISTIC_SEED."""
    import random

    counts = {m: round(share * count) for m, share in REALISTIC_SHARES.items()}
    counts["sora-2"] += count - sum(counts.values())
    models = [m for m, n in counts.items() for _ in range(n)]
    random.Random(REALISTIC_SEED).shuffle(models)
    return models


def effective_max_gap(args: argparse.Namespace, env: dict[str, str]) -> float:
    return float(env.get("GRSAI_POLL_MAX_GAP_S") or 60.0)


def wire_floor(args: argparse.Namespace) -> float:
    """Polls a second the wire allows one engine: its request slots, each a round trip."""
    return float(args.concurrency) / (args.latency_ms / 1000)


def print_realistic_header(args: argparse.Namespace, dbs: Databases, env: dict[str, str]) -> None:
    max_gap = effective_max_gap(args, env)
    mode = "fixed polling" if max_gap <= args.poll_interval else "paced polling"
    shares = ", ".join(f"{m} {share:.0%}" for m, share in REALISTIC_SHARES.items())
    print(f"as users, realistic ({mode}): {args.batches:,} batches x {args.tasks} tasks "
          f"({args.batches * args.tasks:,} tasks: {shares}), the simulator's realistic "
          f"durations and progress, every task succeeding; {len(users_of(args))} users, API "
          f"latency {args.latency_ms:g} ms; GRSAI_POLL_INTERVAL_S={args.poll_interval:g} "
          f"GRSAI_POLL_MAX_GAP_S={max_gap:g} GRSAI_POLL_BUDGET_S={args.poll_budget:g} "
          f"GRSAI_MAX_CONCURRENCY={args.concurrency}; {dbs.describe()}; {os.cpu_count()} cores;"
          f" measured {args.measure_s:g} s from the first `batch create`", flush=True)  # fmt: skip


@dataclass
class Window:
    """The measured stretch (wall clock) and what the machine spent in it."""

    start: float  # the first `batch create` began
    stop: float
    busy_s: float
    stand_in_cpu_s: float


def wait_until(moment: float, dev: subprocess.Popen[bytes], stand_in: StandIn,
               start: float) -> None:  # fmt: skip
    """Sleep until ``moment`` (wall clock), telling the open tasks each minute."""
    shown = time.time()
    while (now := time.time()) < moment:
        if dev.poll() is not None:
            raise SystemExit(f"dagster dev exited ({dev.returncode}) during the measure")
        if now - shown >= 60:
            shown = now
            records = call(stand_in.base_url, "GET", "/_sim/tasks").values()
            running = sum(1 for r in records if r["ended"] > now)
            told = sum(1 for r in records if r["told"] is not None)
            print(f"  {now - start:.0f} s: {len(records)} tasks made upstream, {running} "
                  f"running there, {told} told done", flush=True)  # fmt: skip
        time.sleep(min(5.0, max(0.0, moment - now)))


def measure_realistic(args: argparse.Namespace, env: dict[str, str], stand_in: StandIn,
                      dbs: Databases, work: Path) -> None:  # fmt: skip
    cli(env, "db", "init")
    grant_credits(args, env)
    files = write_batch_files(args, work)
    log = work / "dagster-dev.log"
    launched = time.time()
    dev, port = start_dagster_dev(env, log)
    try:
        wait_for_webserver(dev, port, log)
        print(f"dagster dev answers {time.time() - launched:.0f} s after its start", flush=True)
        busy_before, stand_in_before = machine_busy_s(), _cpu_of(stand_in.pid)
        start = time.time()
        stop = start + args.measure_s
        made = create_batches(args, env, files)
        print_creation(args, made)
        wait_until(stop, dev, stand_in, start)
        window = Window(start, time.time(), machine_busy_s() - busy_before,
                        _cpu_of(stand_in.pid) - stand_in_before)  # fmt: skip
        wait_until(window.stop + GRACE_S, dev, stand_in, start)
        records = call(stand_in.base_url, "GET", "/_sim/tasks")
        polls = {task: sorted(times) for task, times in stand_in.polls().items()}
        runs = run_summary(env)
    finally:
        stop_dagster_dev(dev)
    (work / "polls.json").write_text(json.dumps(polls))
    (work / "tasks.json").write_text(json.dumps(records))
    print_realistic(args, env, window, records, polls)
    print_runs(runs, log)


def open_at(records: dict[str, dict[str, Any]], moment: float) -> int:
    """Tasks made upstream and not yet ended there at ``moment``."""
    return sum(1 for r in records.values() if r["made"] <= moment < r["ended"])


def print_realistic(args: argparse.Namespace, env: dict[str, str], window: Window,
                    records: dict[str, dict[str, Any]], polls: dict[str, list[float]]
                    ) -> None:  # fmt: skip
    interval, max_gap = args.poll_interval, effective_max_gap(args, env)
    start, stop = window.start, window.stop
    made = {r: rec for r, rec in records.items() if rec["made"] < stop}
    ended = {r: rec for r, rec in made.items() if rec["ended"] < stop}
    told = {r: rec for r, rec in ended.items() if rec["told"] is not None}
    never = sum(1 for r in made if not polls.get(r))
    print(f"measured {stop - start:.0f} s from the first `batch create`; read {GRACE_S:g} s "
          f"later. Tasks made upstream before the stop: {len(made):,} ({never} never polled); "
          f"of them ended upstream before the stop: {len(ended):,} (the figures of polls per "
          f"task and end -> told are over these), told by the read: {len(told):,}")  # fmt: skip
    by_model: dict[str, list[float]] = {}
    for rec in made.values():
        by_model.setdefault(rec["model"], []).append(rec["duration_s"])
    print("durations drawn (every task made): " + "; ".join(
        f"{m} {len(d)} tasks p50 {statistics.median(d):.0f} s, p95 {pct(d, 0.95):.0f} s"
        for m, d in sorted(by_model.items())))  # fmt: skip
    per_task = [sum(1 for t in polls.get(r, []) if t <= rec["told"]) for r, rec in told.items()]
    if per_task:
        print(f"polls per task (ended before the stop, to the poll that told it): mean "
              f"{statistics.fmean(per_task):.1f}, p50 {statistics.median(per_task):.0f}, p95 "
              f"{pct(per_task, 0.95):.0f}")  # fmt: skip
    delays = [rec["told"] - rec["ended"] for rec in told.values()]
    if delays:
        p50, p95, worst = statistics.median(delays), pct(delays, 0.95), max(delays)
        print(f"end upstream -> told: p50 {p50:.1f} s ({p50 / interval:.2f}x), p95 {p95:.1f} s "
              f"({p95 / interval:.2f}x), max {worst:.1f} s ({worst / interval:.2f}x the "
              f"interval); {len(ended) - len(told)} ended before the stop and not told by the "
              f"read")  # fmt: skip
    gaps = [task_longest_gap(rec["made"], min(rec["ended"], stop), polls.get(r, []))
            for r, rec in made.items()]  # fmt: skip
    over_limit = sum(1 for g in gaps if g > MAX_GAP_S)
    over_own = sum(1 for g in gaps if g > max_gap + 1)
    if gaps:
        print(f"longest gap between two polls of a task (every task made, from its submit to "
              f"its end or the stop): p95 {pct(gaps, 0.95):.1f} s, max {max(gaps):.1f} s, "
              f"against GRSAI_POLL_MAX_GAP_S {max_gap:g} s ({max(gaps) / max_gap:.2f}x); "
              f"tasks over {MAX_GAP_S:g} s: {over_limit}, over the max gap + 1 s: "
              f"{over_own}")  # fmt: skip
    in_window = [t for times in polls.values() for t in times if start <= t < stop]
    exposure = sum(max(0.0, min(rec["told"] or stop, stop) - max(rec["made"], start))
                   for rec in made.values())  # fmt: skip
    buckets: dict[int, int] = {}
    for t in in_window:
        buckets[int((t - start) // 10)] = buckets.get(int((t - start) // 10), 0) + 1
    floor = wire_floor(args)
    rate = len(in_window) / exposure if exposure else 0.0
    print(f"polls in the window: {len(in_window):,}, {len(in_window) / (stop - start):.1f} a "
          f"second (busiest 10 s: {max(buckets.values(), default=0) / 10:.1f} a second); per "
          f"open task (submit to told) {rate:.3f} a second, one poll every "
          f"{(1 / rate if rate else math.inf):.1f} s")  # fmt: skip
    follows = floor / rate if rate else math.inf
    busiest = max(buckets.values(), default=0) / 10 / floor
    print(f"floor: the wire, GRSAI_MAX_CONCURRENCY {args.concurrency} / {args.latency_ms:g} ms ="
          f" {floor:.0f} polls a second; busiest 10 s / floor = {busiest:.2f}; at this rate per "
          f"open task the wire follows {follows:.0f} open tasks"
          + (" (near the floor: the rate is what the wire gave, not what was asked)"
             if busiest >= 0.85 else ""))  # fmt: skip
    if max_gap <= interval:
        asked = interval + args.latency_ms / 1000
        print(f"fixed polling asks a poll every {asked:g} s (interval + a round trip) of each "
              f"open task: the wire follows {floor * asked:.0f} open tasks so")  # fmt: skip
    steps = [start + OPEN_STEP_S * k for k in range(int((stop - start) // OPEN_STEP_S) + 1)]
    counts = [open_at(made, moment) for moment in steps]
    samples = [open_at(made, start + k) for k in range(int(stop - start) + 1)]
    print(f"open tasks upstream: peak {max(samples, default=0):,}; every {OPEN_STEP_S:g} s: "
          + ", ".join(str(c) for c in counts))  # fmt: skip
    cores = os.cpu_count() or 1
    print(f"CPU over the window ({cores} cores x {stop - start:.0f} s = "
          f"{cores * (stop - start):.0f} s): {window.busy_s:.0f} s busy "
          f"({window.busy_s / (cores * (stop - start)):.0%}), of which the API stand-in "
          f"{window.stand_in_cpu_s:.1f} s")  # fmt: skip
    p95 = pct(delays, 0.95) if delays else math.inf
    met = p95 <= FRESHNESS_X * interval and not over_limit and never == 0
    verdict = "met" if met else "NOT met"
    if not delays:
        verdict = "not judged (no task told its end before the stop)"
    print(f"freshness (p95 end -> told <= {FRESHNESS_X:g} x {interval:g} s = "
          f"{FRESHNESS_X * interval:g} s, no gap over {MAX_GAP_S:g} s, every task polled): "
          f"{verdict} at a peak of {max(samples, default=0):,} open tasks")  # fmt: skip


# --- fairness (--as-users --fairness): a small batch right behind a large one ---------------

FAIRNESS_GENERATION_S = (5.0, 10.0)
WARM_USER, LARGE_USER, SMALL_USER = "user-warm", "user-a", "user-b"
SMALL_AFTER_S = 1.0  # the small batch's `batch create` starts this long after the large one's
ACCEPT_FIRST_SUBMIT_S = 10.0  # the issue: the small batch's first submit within 10 s
REPOLL_JOB = "repoll_open_batches"
SENSOR_TICKED = "Sensor new_batches_sensor skipped"  # its first tick, with no batch yet
LIVE_RUNS_PROBE = """\
import collections, json
import dagster as dg
i = dg.DagsterInstance.get()
statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
live = i.get_run_records(dg.RunsFilter(statuses=statuses))
print(json.dumps(collections.Counter(r.dagster_run.job_name for r in live)))
"""


def fairness_generation(args: argparse.Namespace) -> tuple[float, float]:
    """How long tasks run upstream: 5-10 s, or ``--generation-s`` for every task."""
    if args.generation_s is None:
        return FAIRNESS_GENERATION_S
    return (args.generation_s, args.generation_s)


def fairness_batch_file(work: Path, name: str, size: int) -> Path:
    """A batch file of ``size`` Sora tasks, their prompts naming the batch."""
    tasks = [{"prompt": f"{name} batch task {i}", "model": "sora-2"} for i in range(size)]
    path = work / "batches" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(tasks))
    return path


def create_one(env: dict[str, str], path: Path, user: str) -> Created:
    """One `grsai-pipeline batch create`, now."""
    began = time.time()
    batch_id = cli(env, "batch", "create", str(path), "--user", user).strip()
    return Created(batch_id, began, time.time(), 0.0)


def wait_for_sensor_tick(dev: subprocess.Popen[bytes], log: Path, timeout_s: float) -> bool:
    """Until the daemon has evaluated `new_batches_sensor` once (True), or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise SystemExit(f"dagster dev exited ({dev.returncode}); see {log}")
        if SENSOR_TICKED in log.read_text(errors="replace"):
            return True
        time.sleep(1)
    return False


def live_runs(env: dict[str, str]) -> dict[str, int]:
    """Runs queued, starting or started in the instance, by job."""
    found = instance_probe(LIVE_RUNS_PROBE, env)
    return dict(found) if isinstance(found, dict) else {}


def warm_up(args: argparse.Namespace, env: dict[str, str], db: sa.Engine, work: Path,
            dev: subprocess.Popen[bytes]) -> None:  # fmt: skip
    """A 1-task batch made and settled, so the re-polling run is up (it lingers 2 minutes)."""
    made = create_one(env, fairness_batch_file(work, "warm-up", 1), WARM_USER)
    timeout = args.timeout if args.timeout is not None else fairness_generation(args)[1] + 600
    if not wait_until_settled(db, [made.batch_id], timeout, dev):
        raise SystemExit(f"the warm-up batch did not settle within {timeout:.0f} s")
    settled_after = time.time() - made.began
    live = live_runs(env)
    up = "up" if live.get(REPOLL_JOB) else "NOT up (this run is not warm)"
    print(f"warm-up: a 1-task batch settled {settled_after:.0f} s after `batch create`; runs "
          f"in progress: {live or 'none'}; the re-polling run is {up}", flush=True)  # fmt: skip


@dataclass
class BatchSeen:
    """One batch as the application database and the stand-in saw it (wall-clock seconds)."""

    created: float  # batch_jobs.created_at
    settled: float | None  # batch_jobs.settled_at
    first_submitted_at: float | None  # the earliest video_tasks.submitted_at (the latest submits)
    first_made: float | None  # the earliest remote task of the batch the stand-in made
    last_ended: float | None  # the latest end upstream of its tasks' current remote tasks
    tasks: int
    unsent: int  # tasks never given a remote id


def read_batch(db: sa.Engine, batch_id: str, remote: dict[str, tuple[float, float]]
               ) -> BatchSeen:  # fmt: skip
    from grsai_pipeline.store.schema import batch_jobs, video_tasks

    with db.connect() as conn:
        batch = conn.execute(
            sa.select(batch_jobs.c.created_at, batch_jobs.c.settled_at)
            .where(batch_jobs.c.id == batch_id)
        ).one()  # fmt: skip
        tasks = conn.execute(
            sa.select(video_tasks.c.grsai_task_id, video_tasks.c.submitted_at)
            .where(video_tasks.c.batch_job_id == batch_id)
        ).all()  # fmt: skip
    submitted = [row.submitted_at.timestamp() for row in tasks if row.submitted_at]
    upstream = [remote[row.grsai_task_id] for row in tasks if row.grsai_task_id in remote]
    return BatchSeen(
        created=batch.created_at.timestamp(),
        settled=batch.settled_at.timestamp() if batch.settled_at else None,
        first_submitted_at=min(submitted, default=None),
        first_made=min((made for made, _ in upstream), default=None),
        last_ended=max((ended for _, ended in upstream), default=None),
        tasks=len(tasks),
        unsent=sum(1 for row in tasks if not row.grsai_task_id),
    )


def after(moment: float | None, origin: float) -> str:
    return "never" if moment is None else f"{moment - origin:.1f} s"


def first_submit(seen: BatchSeen) -> float | None:
    """The first submit: the stand-in's record, else the database's."""
    return seen.first_made if seen.first_made is not None else seen.first_submitted_at


def print_fairness_header(args: argparse.Namespace, dbs: Databases) -> None:
    low, high = fairness_generation(args)
    generation = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    variant = ("warm: a 1-task warm-up batch settled first, the re-polling run up"
               if args.warm else "cold: fresh `dagster dev`, nothing running")  # fmt: skip
    print(f"fairness, {variant}", flush=True)
    print(f"large batch {args.large:,} tasks ({LARGE_USER}), small batch {args.small} tasks "
          f"({SMALL_USER}) created {SMALL_AFTER_S:g} s after the large one's `batch create` "
          f"returned; tasks {generation} s upstream, API latency {args.latency_ms:g} ms; "
          f"GRSAI_POLL_INTERVAL_S={args.poll_interval:g} GRSAI_POLL_BUDGET_S={args.poll_budget:g}"
          f" GRSAI_MAX_CONCURRENCY={args.concurrency}; {dbs.describe()}; "
          f"{os.cpu_count()} cores", flush=True)  # fmt: skip


def print_batch(name: str, seen: BatchSeen) -> None:
    print(f"{name} batch ({seen.tasks:,} tasks, {seen.unsent} never sent): first submit "
          f"{after(seen.first_made, seen.created)} after its creation (stand-in; earliest "
          f"video_tasks.submitted_at {after(seen.first_submitted_at, seen.created)}); last task "
          f"ended upstream {after(seen.last_ended, seen.created)}; settled "
          f"{after(seen.settled, seen.created)} after its creation")  # fmt: skip


def settled_first(large: BatchSeen, small: BatchSeen) -> str:
    """Whether the small batch settled first, and when each settled after the large one was
    created."""
    if small.settled is None or large.settled is None:
        return "no (not both settled)"
    answer = "yes" if small.settled < large.settled else "no"
    return (f"{answer} (small at {small.settled - large.created:.1f} s, large at "
            f"{large.settled - large.created:.1f} s after the large batch's creation)")  # fmt: skip


def print_fairness(large: BatchSeen, small: BatchSeen, resubmits: int) -> None:
    print(f"small batch created {small.created - large.created:.1f} s after the large one "
          f"(batch_jobs.created_at)")  # fmt: skip
    print_batch("small", small)
    print_batch("large", large)
    before = settled_first(large, small)
    print(f"small settled before large: {before}")
    print(f"remote tasks no row names (resubmits): {resubmits}")
    first = first_submit(small)
    met = (first is not None and first - small.created <= ACCEPT_FIRST_SUBMIT_S
           and before.startswith("yes"))  # fmt: skip
    print(f"acceptance (small's first submit <= {ACCEPT_FIRST_SUBMIT_S:g} s, settled before the "
          f"large one): {'met' if met else 'NOT met'}")  # fmt: skip


def measure_fairness(args: argparse.Namespace, env: dict[str, str], stand_in: StandIn,
                     dbs: Databases, work: Path) -> None:  # fmt: skip
    cli(env, "db", "init")
    for user, size in ((WARM_USER, 1), (LARGE_USER, args.large), (SMALL_USER, args.small)):
        cli(env, "credits", "grant", user, str(20 * size))  # Sora, 10 s: 10 a task; twice that
    large_file = fairness_batch_file(work, "large", args.large)
    small_file = fairness_batch_file(work, "small", args.small)
    log = work / "dagster-dev.log"
    db = sa.create_engine(dbs.app_url, poolclass=NullPool)
    busy_at_start, stand_in_at_start = machine_busy_s(), _cpu_of(stand_in.pid)
    launched = time.time()
    dev, port = start_dagster_dev(env, log)
    try:
        wait_for_webserver(dev, port, log)
        ticked = wait_for_sensor_tick(dev, log, 180)
        sensor = "the sensor has ticked" if ticked else "the sensor NOT seen to tick"
        print(f"dagster dev answers, {sensor}, {time.time() - launched:.0f} s after its start",
              flush=True)  # fmt: skip
        if args.warm:
            warm_up(args, env, db, work, dev)
        busy_at_large = machine_busy_s()
        large = create_one(env, large_file, LARGE_USER)
        time.sleep(SMALL_AFTER_S)
        small = create_one(env, small_file, SMALL_USER)
        print(f"`batch create` of the large batch took {large.ended - large.began:.1f} s, of the"
              f" small one {small.ended - small.began:.1f} s", flush=True)  # fmt: skip
        timeout = args.timeout if args.timeout is not None else fairness_generation(args)[1] + 600
        both = wait_until_settled(db, [large.batch_id, small.batch_id], timeout, dev)
        ended = time.time()
        busy_end, stand_in_cpu = machine_busy_s(), _cpu_of(stand_in.pid) - stand_in_at_start
        remote = stand_in.remote_tasks()
        runs = run_summary(env)
    finally:
        stop_dagster_dev(dev)
    state = "both batches settled" if both else f"TIMED OUT after {timeout:.0f} s"
    print(f"{state}, {ended - large.began:.0f} s after the large batch's `batch create` began")
    seen_large = read_batch(db, large.batch_id, remote)
    seen_small = read_batch(db, small.batch_id, remote)
    named = set(named_remote_ids(db))
    print_fairness(seen_large, seen_small, len(set(remote) - named))
    print_runs(runs, log)
    cores = os.cpu_count() or 1
    print(f"CPU busy from `dagster dev`'s start to the last settlement ({cores} cores x "
          f"{ended - launched:.0f} s = {cores * (ended - launched):.0f} s): "
          f"{busy_end - busy_at_start:.0f} s; from the large batch's creation: "
          f"{busy_end - busy_at_large:.0f} s of {cores * (ended - large.began):.0f} s; "
          f"the API stand-in {stand_in_cpu:.1f} s")  # fmt: skip


def named_remote_ids(db: sa.Engine) -> list[str]:
    """Every remote task id a row of video_tasks names now."""
    from grsai_pipeline.store.schema import video_tasks

    query = sa.select(video_tasks.c.grsai_task_id).where(video_tasks.c.grsai_task_id.is_not(None))
    with db.connect() as conn:
        return [str(remote) for remote in conn.scalars(query)]


def count_runs(home: Path, env: dict[str, str] | None = None) -> dict[str, int]:
    """Runs in the instance of ``home``, by job name (``env``: DAGSTER_PG_URL and such)."""
    probe = (
        "import dagster as dg, json, collections\n"
        "i = dg.DagsterInstance.get()\n"
        "c = collections.Counter(r.dagster_run.job_name for r in i.get_run_records())\n"
        "print(json.dumps(c))\n"
    )
    found = instance_probe(probe, {**(env or os.environ), "DAGSTER_HOME": str(home)})
    return dict(found) if isinstance(found, dict) else {}


def instance_probe(code: str, env: dict[str, str]) -> Any:
    """Run ``code`` in a fresh interpreter (its own Dagster instance); the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env=env)  # fmt: skip
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None


WINDOW_DEFAULTS = {"batches": 1000, "tasks": 20, "concurrency": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, help="1,000; as users 100")
    parser.add_argument("--tasks", type=int, help="tasks per batch: 20; as users 5")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the window")
    parser.add_argument("--concurrency", type=int, help="GRSAI_MAX_CONCURRENCY: 32; as users 8")
    add_as_users_arguments(parser)
    args = parser.parse_args()
    if args.warm and not args.fairness:
        parser.error("--warm goes with --fairness")
    args.as_users = args.as_users or args.fairness
    defaults = AS_USERS_DEFAULTS if args.as_users else WINDOW_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.generation_s is None and not args.fairness:
        args.generation_s = 180.0
    if args.realistic and (not args.as_users or args.fairness):
        parser.error("--realistic goes with --as-users (not --fairness)")
    if args.as_users:  # --fairness implies it
        run_under_dagster_dev(args)
    else:
        run_window(args)


if __name__ == "__main__":
    main()
