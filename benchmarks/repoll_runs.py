"""Issue 26, acceptance 2 and 3: several re-polling runs at once on PostgreSQL.

    python benchmarks/repoll_runs.py --repoll-runs 3                  # 1,000 x 20, ~12 min
    python benchmarks/repoll_runs.py --repoll-runs 3 --batches 100 --minutes 1 --after-kill 60

The re-polling runs are real Dagster runs of ``repoll_open_batches``: ``dagster dev -w
workspace.yaml`` on a fresh DAGSTER_HOME (the instance ``make dev`` writes, SQLite, with the
``grsai/repoll`` tag limit at N + 1, as README says for GRSAI_REPOLL_RUNS=N), its schedule
``repoll_processing_schedule`` launching them with ``GRSAI_REPOLL_RUNS=N``; the application
database is a fresh PostgreSQL database (``--postgres URL``, default the local server), dropped
at the end.

What it bypasses, to seed 20,000 open tasks in a minute or two: the batches are written with
``store.batches.create_batch`` (the code behind ``batch create``, in this process) and submitted
by one engine of this process (``open_batches_worker``, runner ``benchmark-submit``, which then
exits) against the stand-in answering in 5 ms; their partitions are added to the instance
directly; and ``new_batches_sensor`` is stopped (``dagster sensor stop``) before ``dagster dev``
starts, so that 1,000 ``batch_pipeline`` runs (one per batch, as the sensor would have asked for
at creation) do not start on two cores. Then the stand-in answers in ``--latency-ms`` and only
the schedule's re-polling runs poll.

Who polled what: the stand-in (the project's simulator in a process of its own, every task
running for two hours) logs each poll with the TCP port it came from; the probe below records,
in every process, the local port of each connection aiohttp's pool opens (a poll is the run's
whose client last opened that port before it), and a sampler also maps ports to processes every
second (``/proc/net/tcp`` and the run processes' socket inodes); each run process is named by
its run id in dagster dev's log ("Executing steps in process (pid: ...)"). The same sampler
reads each run process's CPU time, PostgreSQL's (every postgres process, plus what the
postmaster reaped),
``pg_stat_database`` (transactions, rows, ``active_time``: time spent executing statements) and
``video_tasks.polled_by``. Statements are counted in the run processes themselves, by SQLAlchemy
event listeners that a ``sitecustomize`` module on PYTHONPATH installs (count and client-side time
of each, by its first word; benchmark only, no change to the product).

The measurement: a window of ``--minutes`` from when N runs are up and polling; then the youngest
run's process is killed (SIGKILL) and, for ``--after-kill`` seconds, every task it held
(``polled_by``) is followed until another run polls it.
"""

from __future__ import annotations

import argparse
import bisect
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
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from throughput import API_KEY, _cpu_of, _remote_tasks_route  # noqa: E402

DAGSTER = Path(sys.executable).with_name("dagster")
TICKS = os.sysconf("SC_CLK_TCK")
# dagster dev's log: each run's events name its run id and its process (the run worker is a
# multiprocessing child of the code server, whose command line names no run).
RUN_EVENT = re.compile(r"- repoll_open_batches - ([0-9a-f-]{36}) - (\d+) - ")
MAX_GAP_S = 60.0
TAKEOVER_S = 90.0

SITECUSTOMIZE = '''\
"""Benchmark probe (benchmarks/repoll_runs.py): counts SQL statements sent to PostgreSQL."""
import os

if os.environ.get("GRSAI_BENCH_STMT_DIR"):
    import json
    import threading
    import time

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _counts = {}
    _ports = []  # (when, local port) of each connection the HTTP client opened
    _lock = threading.Lock()

    try:  # the engine's client is httpx over aiohttp's pool (grsai/client.py)
        import aiohttp.connector as _connector

        _connect = _connector.TCPConnector._wrap_create_connection

        async def _wrap_create_connection(self, *args, **kwargs):
            result = await _connect(self, *args, **kwargs)
            try:
                _ports.append((time.time(), result[0].get_extra_info("sockname")[1]))
            except Exception:
                pass
            return result

        _connector.TCPConnector._wrap_create_connection = _wrap_create_connection
    except ImportError:
        pass
    _dir = os.environ["GRSAI_BENCH_STMT_DIR"]

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, params, context, executemany):
        if context is not None:
            context._bench_t0 = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, params, context, executemany):
        if conn.dialect.name != "postgresql":
            return
        t0 = getattr(context, "_bench_t0", None)
        spent = time.perf_counter() - t0 if t0 is not None else 0.0
        key = (statement.lstrip().split(None, 1) or ["?"])[0].upper()
        with _lock:
            entry = _counts.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += spent

    def _dump():
        path = os.path.join(_dir, f"{os.getpid()}.json")
        while True:
            time.sleep(1.0)
            with _lock:
                text = json.dumps({"t": time.time(), "counts": _counts, "ports": _ports})
            with open(path + ".tmp", "w") as out:
                out.write(text)
            os.replace(path + ".tmp", path)

    threading.Thread(target=_dump, name="bench-stmt-dump", daemon=True).start()
'''


# --- the stand-in: the simulator, each poll logged with the port it came from -----------------


def serve(port: int, config_json: str) -> None:
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from grsai_pipeline.dev.simulator import Simulator, SimulatorConfig
    from grsai_pipeline.grsai.wire import POLL_PATH

    simulator = Simulator(SimulatorConfig.model_validate(json.loads(config_json)))
    log: list[tuple[float, str, int]] = []

    async def polls_route(request: Any) -> Any:
        return JSONResponse(log)

    simulator.app.router.routes.append(
        Route("/_bench/tasks", _remote_tasks_route(simulator), methods=["GET"])
    )
    simulator.app.router.routes.append(Route("/_bench/polls", polls_route, methods=["GET"]))
    app = simulator.app

    async def logging_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != POLL_PATH:
            await app(scope, receive, send)
            return
        arrived = time.time()
        client_port = scope["client"][1] if scope.get("client") else 0
        body = bytearray()

        async def receive_logged() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        task_id = json.loads(body).get("id")
                    except (ValueError, AttributeError):
                        task_id = None
                    if isinstance(task_id, str):
                        log.append((arrived, task_id, client_port))
            return message

        await app(scope, receive_logged, send)

    uvicorn.run(logging_app, port=port, log_level="warning", access_log=False)


class StandIn:
    def __init__(self, latency_s: float, work: Path) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        config = {
            "api_key": API_KEY,
            "latency_s": [latency_s, latency_s],
            "generation_s": [7200.0, 7200.0],
            "mix": {"succeeded": 1.0},
            "seed": 7,
        }
        with (work / "stand-in.log").open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE), "--serve", str(self.port), json.dumps(config)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/_sim/stats")
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the API stand-in did not start") from None
                time.sleep(0.2)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method,
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())

    def set_latency(self, latency_s: float) -> None:
        self.call("POST", "/_sim/config", {"latency_s": [latency_s, latency_s]})

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- seeding (bypasses the doors: see the module's docstring) ---------------------------------


def seed(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    os.environ.update(env)
    import dagster as dg

    from grsai_pipeline.config import load_settings
    from grsai_pipeline.engine.loop import Until
    from grsai_pipeline.engine.work import open_batches_worker
    from grsai_pipeline.store.accounts import grant_credits
    from grsai_pipeline.store.batches import create_batch
    from grsai_pipeline.store.db import get_engine
    from grsai_pipeline.store.migrate import upgrade_schema

    settings = load_settings().model_copy(update={"poll_interval_s": 3600.0, "max_concurrency": 64})
    db = get_engine(settings.database_url)
    upgrade_schema(db)
    started = time.monotonic()
    batch_ids = []
    for n in range(args.batches):
        user = f"user-{n % 50}"
        grant_credits(db, user, 10 * args.tasks)
        tasks = [{"prompt": f"batch {n} task {i}", "model": "sora-2"} for i in range(args.tasks)]
        batch_ids.append(create_batch(db, user, tasks, settings.price_table).batch_id)
    print(f"seeded: {args.batches:,} batches of {args.tasks} tasks written with create_batch in "
          f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
    started = time.monotonic()
    with open_batches_worker(db, settings, "benchmark-submit") as worker:
        report = worker.run(Until.SUBMITTED, math.inf)
    print(f"seeded: {report.accepted:,} tasks submitted by one engine of the benchmark (5 ms API, "
          f"concurrency 64) in {time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("batches", batch_ids)
    instance.dispose()
    db.dispose()
    return batch_ids


# --- sampling: ports -> processes -> runs, CPU, PostgreSQL --------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pid: int) -> float | None:
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_cpu_s(session_id: int) -> float:
    total = 0.0
    for pid in pids():
        fields = _stat(pid)
        if fields is not None and int(fields[3]) == session_id:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def postgres_cpu_s(database: str) -> tuple[float, float]:
    """CPU seconds of every postgres process (live ones, and the children the postmaster reaped);
    and of the live backends connected to ``database``."""
    total = mine = 0.0
    for pid in pids():
        line = cmdline(pid)
        if (
            not line.startswith("postgres")
            and "/postgres " not in line
            and "bin/postgres" not in line
        ):
            continue
        fields = _stat(pid)
        if fields is None:
            continue
        own = (int(fields[11]) + int(fields[12])) / TICKS
        total += own
        if line.startswith("postgres:") and f" {database} " in line:
            mine += own
        if int(fields[1]) == 1 or "bin/postgres" in line:  # the postmaster: what it reaped
            total += (int(fields[13]) + int(fields[14])) / TICKS
    return total, mine


def socket_inodes(pid: int) -> set[int]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    except OSError:
        pass
    return found


def ports_to(remote_port: int) -> dict[int, int]:
    """inode -> local port of every TCP connection to ``remote_port``."""
    found = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            if int(remote.rsplit(":", 1)[1], 16) == remote_port and inode:
                found[inode] = int(local.rsplit(":", 1)[1], 16)
    return found


PG_STAT_COLUMNS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_hit",
    "blks_read",
    "active_time",
)


@dataclass
class Sample:
    t: float
    runs: dict[int, tuple[str, float]]  # pid: (run id, CPU s)
    postgres: tuple[float, float]
    pg_stat: dict[str, float]
    held: dict[str, int]  # polled_by: open tasks it holds
    machine_busy: float
    stand_in: float
    session: float  # CPU of the live processes of dagster dev's session (runs included)
    statements: dict[int, dict[str, list[float]]]  # pid: {first word: [count, seconds]}


@dataclass
class Sampler:
    stand_in: StandIn
    app_db: sa.Engine
    database: str
    stmt_dir: Path
    dev_log: Path
    log_read: int = 0
    known: dict[int, str] = field(default_factory=dict)
    session_id: int = 0
    samples: list[Sample] = field(default_factory=list)
    port_owner: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    connects: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    run_of_pid: dict[int, str] = field(default_factory=dict)
    started_at: dict[int, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run_pids(self) -> dict[int, str]:
        """The live processes of re-polling runs, and their run ids (from dagster dev's log)."""
        with self.dev_log.open("rb") as log:
            log.seek(self.log_read)
            chunk = log.read()
        end = chunk.rfind(b"\n") + 1
        self.log_read += end
        for match in RUN_EVENT.finditer(chunk[:end].decode(errors="replace")):
            self.known[int(match.group(2))] = match.group(1)
        found = {}
        for pid, run_id in self.known.items():
            fields = _stat(pid)
            if fields is not None and fields[0] != "Z":
                found[pid] = run_id
        return found

    def sample(self) -> Sample:
        now = time.time()
        runs = self.run_pids()
        inode_port = ports_to(self.stand_in.port)
        cpu = {}
        for pid, run_id in runs.items():
            self.run_of_pid[pid] = run_id
            self.started_at.setdefault(pid, now)
            for inode in socket_inodes(pid):
                if inode in inode_port:
                    self.port_owner.setdefault(inode_port[inode], []).append((now, pid))
            used = cpu_s(pid)
            if used is not None:
                cpu[pid] = (run_id, used)
        with self.app_db.connect() as conn:
            row = conn.execute(sa.text(
                f"SELECT {', '.join(PG_STAT_COLUMNS)} FROM pg_stat_database WHERE datname = :d"
            ), {"d": self.database}).one()  # fmt: skip
            held = dict(conn.execute(sa.text(
                "SELECT coalesce(polled_by, '-'), count(*) FROM video_tasks "
                "WHERE status = 'processing' GROUP BY 1"
            )).all())  # fmt: skip
        statements = {}
        connects: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for path in self.stmt_dir.glob("*.json"):
            try:
                dumped = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            statements[int(path.stem)] = dumped["counts"]
            for when, port in dumped.get("ports", []):
                connects[port].append((when, int(path.stem)))
        self.connects = {port: sorted(seen) for port, seen in connects.items()}
        return Sample(now, cpu, postgres_cpu_s(self.database),
                      {c: float(v or 0) for c, v in zip(PG_STAT_COLUMNS, row, strict=True)},
                      held, machine_busy_s(), _cpu_of(self.stand_in.process.pid),
                      session_cpu_s(self.session_id), statements)  # fmt: skip

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as error:  # a process gone mid-read: the next sample
                print(f"  (sample skipped: {error!r})", flush=True)
            self.stop.wait(1.0)

    def owner(self, port: int, t: float) -> int | None:
        """The process whose HTTP client opened ``port`` last before ``t`` (the probe's record);
        else the one seen holding it nearest ``t`` (the sampler's)."""
        opened = self.connects.get(port)
        if opened:
            i = bisect.bisect_right([when for when, _ in opened], t + 0.5)
            if i:
                return opened[i - 1][1]
        seen = self.port_owner.get(port)
        if not seen:
            return None
        times = [s[0] for s in seen]
        i = bisect.bisect_left(times, t)
        near = [seen[j] for j in (i - 1, i) if 0 <= j < len(seen)]
        best = min(near, key=lambda s: abs(s[0] - t))
        return best[1] if abs(best[0] - t) < 30 else None

    def at(self, t: float) -> Sample:
        return min(self.samples, key=lambda s: abs(s.t - t))


def machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


# --- the measurement ---------------------------------------------------------------------------


def fresh_database(server_url: str, name: str) -> str:
    server = sa.make_url(server_url).set(drivername="postgresql+psycopg2")
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=NullPool)  # fmt: skip
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    server = sa.make_url(server_url).set(drivername="postgresql+psycopg2", database="postgres")
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="grsai-repoll-runs-"))
    name = f"grsai_bench_repoll_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    app_url = fresh_database(args.postgres, name)
    stand_in = StandIn(0.005, work)
    home = work / "dagster_home"
    home.mkdir()
    instance = (REPO / "scripts" / "dev-instance.yaml").read_text()
    instance += f"      - key: grsai/repoll\n        limit: {args.repoll_runs + 1}\n"
    (home / "dagster.yaml").write_text(instance)
    probe = work / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(SITECUSTOMIZE)
    stmt_dir = work / "statements"
    stmt_dir.mkdir()
    env = {
        **os.environ,
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": stand_in.base_url,
        "GRSAI_DATABASE_URL": app_url,
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "GRSAI_POLL_INTERVAL_S": f"{args.poll_interval:g}",
        "GRSAI_REPOLL_RUNS": str(args.repoll_runs),
        "GRSAI_ARCHIVE_URL": str(work / "videos"),
        "DAGSTER_HOME": str(home),
    }
    env.pop("GRSAI_POLL_MAX_GAP_S", None)  # its default, 60
    print(f"{args.repoll_runs} re-polling runs (GRSAI_REPOLL_RUNS={args.repoll_runs}, tag limit "
          f"{args.repoll_runs + 1}) under `dagster dev`; {args.batches:,} batches x {args.tasks} "
          f"tasks running upstream for 2 h; GRSAI_POLL_INTERVAL_S={args.poll_interval:g} "
          f"GRSAI_POLL_MAX_GAP_S=60 GRSAI_MAX_CONCURRENCY={args.concurrency}, API latency "
          f"{args.latency_ms:g} ms; application database PostgreSQL ({name}), instance SQLite; "
          f"{os.cpu_count()} cores; work directory {work}", flush=True)  # fmt: skip
    dev = None
    sampler = None
    try:
        seed(args, {k: v for k, v in env.items() if k.startswith(("GRSAI_", "DAGSTER_"))})
        stand_in.set_latency(args.latency_ms / 1000)
        stopped = subprocess.run([DAGSTER, "sensor", "stop", "new_batches_sensor", "-w",
                                  "workspace.yaml"], cwd=REPO, env=env, capture_output=True,
                                 text=True, check=False)  # fmt: skip
        print(f"`dagster sensor stop new_batches_sensor`: exit {stopped.returncode} "
              f"{stopped.stdout.strip()[-200:]}", flush=True)  # fmt: skip
        app_db = sa.create_engine(app_url, poolclass=NullPool)
        sampler = Sampler(stand_in, app_db, name, stmt_dir, work / "dagster-dev.log")
        thread = threading.Thread(target=sampler.loop, daemon=True)
        launched = time.time()
        dev_env = {**env, "PYTHONPATH": str(probe), "GRSAI_BENCH_STMT_DIR": str(stmt_dir)}
        with (work / "dagster-dev.log").open("wb") as out:
            dev = subprocess.Popen(
                [DAGSTER, "dev", "-w", "workspace.yaml", "-p", str(free_port()), "-h",
                 "127.0.0.1"], cwd=REPO, env=dev_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        sampler.session_id = dev.pid
        thread.start()
        # Up: N run processes, each with a connection to the stand-in.
        deadline = time.time() + 300
        while True:
            time.sleep(1)
            if dev.poll() is not None:
                raise SystemExit(f"dagster dev exited; see {work / 'dagster-dev.log'}")
            owners = {o for seen in sampler.port_owner.values() for _, o in seen}
            owners |= {o for seen in sampler.connects.values() for _, o in seen}
            live = sampler.run_pids()
            # Up: N run processes, and polls coming (the runs share free tasks, so a run that
            # starts after another took them all may not poll at once: it is counted as up).
            if len(live) >= args.repoll_runs and owners & set(live):
                break
            if time.time() > deadline:
                raise SystemExit(f"the re-polling runs were not up within 5 minutes: "
                                 f"{sampler.known}")  # fmt: skip
        window_start = time.time() + 15
        print(f"{args.repoll_runs} runs up and polling {window_start - launched:.0f} s after "
              f"`dagster dev` started; measuring {args.minutes:g} min", flush=True)  # fmt: skip
        window_end = window_start + 60 * args.minutes
        time.sleep(window_end - time.time())
        # The kill: the youngest live run's process, and the tasks it holds right then.
        live = sampler.run_pids()
        victim = max(live, key=lambda p: (sampler.started_at.get(p, 0), p))
        victim_run = live[victim]
        with app_db.connect() as conn:
            held = set(conn.scalars(sa.text(
                "SELECT grsai_task_id FROM video_tasks WHERE status = 'processing' AND "
                "polled_by = :r"), {"r": victim_run}).all())  # fmt: skip
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        print(f"killed run {victim_run[:8]} (pid {victim}) with SIGKILL; it held {len(held):,} "
              f"tasks", flush=True)  # fmt: skip
        time.sleep(args.after_kill)
        sampler.stop.set()
        thread.join()
        log = stand_in.call("GET", "/_bench/polls")
        remote = stand_in.call("GET", "/_bench/tasks")
        with app_db.connect() as conn:
            size = conn.execute(sa.text(
                "SELECT pg_total_relation_size('video_tasks'), pg_relation_size('video_tasks'), "
                "pg_database_size(current_database()), (SELECT count(*) FROM video_tasks), "
                "(SELECT count(*) FROM batch_jobs)")).one()  # fmt: skip
        app_db.dispose()
    finally:
        if sampler is not None:
            sampler.stop.set()
        if dev is not None:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait(timeout=30)
        stand_in.stop()
        if not args.keep_database:
            drop_database(args.postgres, name)
    (work / "polls.json").write_text(json.dumps(log))
    report(args, sampler, log, remote, size, window_start, window_end, victim, victim_run,
           held, killed_at, launched)  # fmt: skip
    print(f"work directory: {work}" + ("" if not args.keep_database else f"; database {name}"))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def report(args: argparse.Namespace, sampler: Sampler, log: list[list[Any]], remote: dict[str, Any],
           size: Any, window_start: float, window_end: float, victim: int, victim_run: str,
           held: set[str], killed_at: float, launched: float) -> None:  # fmt: skip
    interval = args.poll_interval
    by_task: dict[str, list[tuple[float, int | None]]] = defaultdict(list)
    unattributed = 0
    for t, task, port in log:
        pid = sampler.owner(port, t)
        unattributed += pid is None
        by_task[task].append((t, pid))
    for polls in by_task.values():
        polls.sort()
    tasks = set(remote)
    minutes = (window_end - window_start) / 60
    # Polls per run in the window.
    in_window = [(t, pid) for polls in by_task.values() for t, pid in polls
                 if window_start <= t <= window_end]  # fmt: skip
    per_pid = Counter(pid for _, pid in in_window)
    s0, s1 = sampler.at(window_start), sampler.at(window_end)
    span = s1.t - s0.t
    total = len(in_window)
    print(f"window: {minutes:.1f} min from when all {args.repoll_runs} runs polled; "
          f"{len(tasks):,} open tasks; polls attributed to a run by their TCP port "
          f"({unattributed:,} of {len(log):,} polls in the whole log unattributed)")  # fmt: skip
    print(" run       pid    | in window s | polls   polls/s | CPU s  ms/poll | SQL stmts/poll "
          "ms/poll (client side)")  # fmt: skip
    run_cpu = run_polls = 0.0
    stmts_total = Counter()
    stmt_time_total = 0.0
    for pid in sorted(sampler.run_of_pid, key=lambda p: sampler.started_at.get(p, 0)):
        run_id = sampler.run_of_pid[pid]
        seen = [s for s in sampler.samples if pid in s.runs and window_start <= s.t <= window_end]
        polls = per_pid.get(pid, 0)
        if not seen and not polls:
            continue
        lived = (seen[-1].t - seen[0].t) if len(seen) > 1 else 0.0
        cpu = (seen[-1].runs[pid][1] - seen[0].runs[pid][1]) if len(seen) > 1 else 0.0
        polls_live = sum(
            1 for t, p in in_window if p == pid and seen and seen[0].t <= t <= seen[-1].t
        )
        before = seen[0].statements.get(pid, {}) if seen else {}
        after = seen[-1].statements.get(pid, {}) if seen else {}
        counts = Counter({k: after[k][0] - before.get(k, [0, 0.0])[0] for k in after})
        spent = sum(after[k][1] - before.get(k, [0, 0.0])[1] for k in after)
        n = sum(counts.values())
        if polls_live:
            run_cpu += cpu
            run_polls += polls_live
            stmts_total.update(counts)
            stmt_time_total += spent
        rate = polls_live / lived if lived else 0.0
        per = f"{1000 * cpu / polls_live:6.2f}" if polls_live else "     -"
        sql = (f"{n / polls_live:6.3f} {1000 * spent / polls_live:6.3f}" if polls_live
               else "     -      -")  # fmt: skip
        mark = " (killed after)" if pid == victim else ""
        print(f" {run_id[:8]} {pid:7d} | {lived:11.0f} | {polls:6d} {rate:8.1f} | {cpu:5.1f} "
              f"{per} | {sql}{mark}")  # fmt: skip
    print(f" all runs           | {span:11.0f} | {total:6d} {total / span:8.1f} | "
          f"{run_cpu:5.1f} {1000 * run_cpu / max(run_polls, 1):6.2f} | "
          f"{sum(stmts_total.values()) / max(run_polls, 1):6.3f} "
          f"{1000 * stmt_time_total / max(run_polls, 1):6.3f}")  # fmt: skip
    print("statements per poll by kind: " + ", ".join(
        f"{k} {v / max(run_polls, 1):.3f}" for k, v in stmts_total.most_common()))  # fmt: skip
    # Gaps.
    worst, per_task_max, short, short_two, min_gap = [], [], 0, 0, math.inf
    never = 0
    for task in tasks:
        polls = [(t, p) for t, p in by_task.get(task, []) if window_start <= t <= window_end]
        if not polls:
            never += 1
            per_task_max.append(window_end - window_start)
            continue
        times = [t for t, _ in polls]
        edges = [window_start, *times, window_end]
        per_task_max.append(max(b - a for a, b in itertools.pairwise(edges)))
        for (ta, pa), (tb, pb) in itertools.pairwise(polls):
            gap = tb - ta
            min_gap = min(min_gap, gap)
            if gap < interval - 0.2:
                short += 1
                short_two += pa != pb
                worst.append((gap, task, pa, pb))
    print(
        f"per task, the longest stretch of the window without a poll: max "
        f"{max(per_task_max):.1f} s, p95 {pct(per_task_max, 0.95):.1f} s, median "
        f"{statistics.median(per_task_max):.1f} s; tasks over {MAX_GAP_S:g} s: "
        f"{sum(1 for g in per_task_max if g > MAX_GAP_S)}; never polled in the window: {never}"
    )
    print(f"two polls of one task closer than the interval ({interval:g} s - 0.2 s): {short} "
          f"({short_two} by two different runs); the shortest gap between two polls of a task: "
          f"{min_gap:.2f} s")  # fmt: skip
    for gap, task, pa, pb in sorted(worst)[:5]:
        print(f"   {gap:.2f} s {task[:12]} by {sampler.run_of_pid.get(pa, pa)} / "
              f"{sampler.run_of_pid.get(pb, pb)}")  # fmt: skip
    # The kill.
    delays, by_whom, never_after = [], Counter(), 0
    for task in held:
        after = [(t, p) for t, p in by_task.get(task, []) if t > killed_at + 0.2]
        if not after:
            never_after += 1
            continue
        delays.append(after[0][0] - killed_at)
        by_whom[sampler.run_of_pid.get(after[0][1], "?")[:8]] += 1
    last_polls = [max((t for t, p in by_task.get(task, []) if t <= killed_at), default=None)
                  for task in held]  # fmt: skip
    unpolled = [killed_at + d - lp for d, lp in zip(delays, last_polls, strict=False) if lp]
    if delays:
        print(f"after the kill: the {len(held):,} tasks it held polled again by another run "
              f"after p50 {statistics.median(delays):.1f} s, p95 {pct(delays, 0.95):.1f} s, max "
              f"{max(delays):.1f} s (over {TAKEOVER_S:g} s: "
              f"{sum(1 for d in delays if d > TAKEOVER_S)}; never within {args.after_kill:g} s: "
              f"{never_after}); by run: {dict(by_whom)}")  # fmt: skip
        if unpolled:
            print(
                f"   their longest stretch without a poll across the kill (last poll before -> "
                f"first after): max {max(unpolled):.1f} s, p95 {pct(unpolled, 0.95):.1f} s"
            )
    post = [s for s in sampler.samples if s.t > killed_at]
    alive = Counter(len(s.runs) for s in post)
    print(f"after the kill, run processes alive per sample: {dict(sorted(alive.items()))}")
    after_gaps = []
    for task in tasks:
        times = [t for t, _ in by_task.get(task, []) if killed_at - 60 <= t]
        edges = [killed_at - 60, *times, post[-1].t if post else killed_at]
        after_gaps.append(max(b - a for a, b in itertools.pairwise(edges)))
    print(f"all tasks, from 60 s before the kill to the end: longest stretch without a poll max "
          f"{max(after_gaps):.1f} s, p95 {pct(after_gaps, 0.95):.1f} s; over {MAX_GAP_S:g} s: "
          f"{sum(1 for g in after_gaps if g > MAX_GAP_S)}")  # fmt: skip
    # PostgreSQL.
    d = {c: s1.pg_stat[c] - s0.pg_stat[c] for c in PG_STAT_COLUMNS}
    pg_cpu = s1.postgres[0] - s0.postgres[0]
    pg_mine = s1.postgres[1] - s0.postgres[1]
    print(f"PostgreSQL over the window ({span:.0f} s, {total:,} polls): CPU {pg_cpu:.1f} s "
          f"({pg_cpu / span:.2f} of a core; {1000 * pg_cpu / total:.3f} ms a poll), of which live "
          f"backends of this database {pg_mine:.1f} s; active_time {d['active_time'] / 1000:.1f} s "
          f"({d['active_time'] / total:.3f} ms a poll)")  # fmt: skip
    print("   per poll: " + ", ".join(f"{c} {d[c] / total:.3f}" for c in PG_STAT_COLUMNS
                                     if c != "active_time"))  # fmt: skip
    busy = s1.machine_busy - s0.machine_busy
    stand = s1.stand_in - s0.stand_in
    session = s1.session - s0.session  # live processes only: a run that ended is not in it
    live_runs = sum(s1.runs[p][1] - s0.runs[p][1] for p in s1.runs if p in s0.runs)
    print(f"dagster dev's other processes (daemon, webserver, code server) over the window: "
          f"{session - live_runs:.0f} s")  # fmt: skip
    print(f"machine over the window: {busy:.0f} s busy of {(os.cpu_count() or 1) * span:.0f} s "
          f"({busy / span:.2f} cores): runs {run_cpu:.0f} s, PostgreSQL {pg_cpu:.0f} s, the "
          f"stand-in {stand:.0f} s, the rest (dagster dev's daemon, webserver, code server; this "
          f"benchmark; others) {busy - run_cpu - pg_cpu - stand:.0f} s")  # fmt: skip
    held_counts = [s.held for s in sampler.samples if window_start <= s.t <= window_end]
    if held_counts:
        last = held_counts[-1]
        print("polled_by at the window's end: " + ", ".join(
            f"{k[:8]} {v}" for k, v in sorted(last.items(), key=lambda kv: -kv[1])))  # fmt: skip
    total_bytes, heap, db_bytes, rows, batches = size
    print(
        f"database: video_tasks {total_bytes / 2**20:.1f} MiB with indexes ({heap / 2**20:.1f} "
        f"MiB heap) for {rows:,} rows = {total_bytes / rows:.0f} bytes a task; the whole database "
        f"{db_bytes / 2**20:.1f} MiB ({batches:,} batches) = {db_bytes / rows:.0f} bytes a task"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--repoll-runs", type=int, default=3, help="GRSAI_REPOLL_RUNS")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--after-kill", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument(
        "--postgres", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    run(args)


if __name__ == "__main__":
    main()
