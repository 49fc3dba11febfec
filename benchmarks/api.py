"""SPEC 9 (issue 23): the HTTP API's throughput through the doors users use, beside its floor
and beside the command line.

    python benchmarks/api.py                       # SQLite
    python benchmarks/api.py --postgres            # a fresh database on the local PostgreSQL
    python benchmarks/api.py --postgres postgresql+psycopg2://postgres@127.0.0.1:5432/postgres
    python benchmarks/api.py --seconds 10 --post-concurrency 1,2,4,8,16
    python benchmarks/api.py --profile             # where a POST's time goes, in-process

A real `grsai-pipeline api serve` process on a loopback port, its database made by `db init`,
a token by `api token create`, credits granted by `POST /v1/users/{user}/grants`. Measured,
each for ``--seconds`` after a warm-up, by ``concurrency`` clients each sending its next
request when its answer has arrived (closed loop):

- ``GET /healthz``: the floor, what uvicorn, FastAPI, the thread pool and the access log cost
  for a request that does no work (no token, no database);
- ``POST /v1/batches`` of a 1,000-task batch (Sora, 10 credits each), each client its own user
  (``--one-user``: all the same user), the answer being the whole batch with its tasks;
- ``GET /v1/batches/{id}`` of such a 1,000-task batch, and of a 3-task one;
- beside them, the command line: ``grsai-pipeline batch create FILE --user U`` with the same
  1,000 tasks, a whole process per call, one call after another (and ``grsai-pipeline --help``,
  what starting the command costs).

Latencies are the client's, from sending a request to having read its whole answer. CPU is
user + system seconds: the server process's from /proc/<pid>/stat (with its system share, and
its threads' context switches per request from /proc/<pid>/task/*/status: handing the GIL from
thread to thread shows there), the client's (this process, one thread, asyncio on uvloop) from
getrusage, PostgreSQL's ("db": every postgres process's, and the postmaster's ended
children's) and "others": the whole machine's (/proc/stat) less those, that is noise: someone
else's work, the kernel's. Before each point the run waits, up to ``--quiet-wait`` seconds, for
a second in which the machine is idle; a point during which others used a quarter of a core is
measured again (up to ``--retries`` times) and the quietest kept, and the run says so. The
client is httpx over aiohttp's connection pool (``httpx-aiohttp``, as the product's own Grsai
client): httpx's default pool costs the client about 3 ms of CPU per request at 32
connections, enough to make the client the bottleneck of the floor. "bound" names what was
saturated: the CLIENT or the server at 90% of a core (one thread; one GIL), the cores at 90%
of the machine. Where the client was, the requests per second are a floor of the server's,
not its ceiling, and the run says so.

``--profile`` does not start a server: it calls the same app (``create_app``) in this
process through httpx's ASGI transport with FastAPI's thread pool replaced by a direct call,
so that cProfile sees a request whole, and prints where a POST and a GET of 1,000 tasks spend
their time (body, token, validation, the insert, reading the batch back, serializing).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

CLI = Path(sys.executable).with_name("grsai-pipeline")
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PRICE = 10  # credits per sora-2 task of 10 s, the default price table
CORES = os.cpu_count() or 1
TICK = os.sysconf("SC_CLK_TCK")
SATURATED = 0.9  # of one core: a single-threaded client, a server under one GIL
QUIET = 0.15  # cores busy: a machine this busy is running nothing else that matters
NOISY = 0.25  # cores used by others during a point: measure it again


# --- CPU ------------------------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """User + system seconds a live process has used."""
    return sum(user_system_of(pid))


def user_system_of(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy, all cores (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def switches_of(pid: int) -> dict[str, int]:
    """Context switches (voluntary and not) of each live thread of a process, by thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended
            continue
        found[task.name] = sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return found


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process on this machine, and of the backends that have
    ended (their time is added to the postmaster's children's)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, rest = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:  # the process ended
            continue
        if not head.endswith("(postgres"):
            continue
        fields = rest.split()
        total += int(fields[11]) + int(fields[12])
        if int(fields[1]) == 1 or not Path(f"/proc/{fields[1]}").exists():  # the postmaster
            total += int(fields[13]) + int(fields[14])
    return total / TICK


@dataclass(frozen=True)
class Usage:
    at: float
    server: float
    server_system: float
    server_switches: dict[str, int]
    client: float
    database: float
    machine: float

    @classmethod
    def now(cls, server_pid: int, *, postgres: bool) -> Usage:
        user, system = user_system_of(server_pid)
        return cls(
            at=time.perf_counter(),
            server=user + system,
            server_system=system,
            server_switches=switches_of(server_pid),
            client=own_cpu(),
            database=postgres_cpu() if postgres else 0.0,
            machine=machine_busy(),
        )

    def switches_since(self, before: Usage) -> int:
        """The server's context switches since ``before`` (a thread that ended meanwhile is
        not counted: FastAPI's worker threads live on between requests)."""
        return sum(
            n - before.server_switches.get(tid, 0) for tid, n in self.server_switches.items()
        )


# --- one measured point ---------------------------------------------------------------------


@dataclass
class Point:
    door: str
    concurrency: int
    latencies: list[float]
    errors: list[str]
    wall_s: float
    server_cpu_s: float
    server_system_s: float
    server_switches: int
    client_cpu_s: float
    database_cpu_s: float
    machine_cpu_s: float
    tries: int = 1

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    def quantile_ms(self, q: float) -> float:
        return 1000 * quantile(self.latencies, q)

    @property
    def others_cpu_s(self) -> float:
        """The rest of the machine: noise (someone else's work, the kernel's)."""
        ours = self.server_cpu_s + self.client_cpu_s + self.database_cpu_s
        return max(0.0, self.machine_cpu_s - ours)

    @property
    def noisy(self) -> bool:
        """Something else used a quarter of a core meanwhile (on SQLite: not ours)."""
        return self.others_cpu_s / self.wall_s > NOISY

    @property
    def server_ms_per_request(self) -> float:
        return 1000 * self.server_cpu_s / max(self.requests, 1)

    @property
    def bound(self) -> str:
        """What limited the point: the client, the server, the machine's cores, or nothing."""
        found = []
        if self.client_cpu_s / self.wall_s >= SATURATED:
            found.append("CLIENT")
        if self.server_cpu_s / self.wall_s >= SATURATED:
            found.append("server")
        if self.machine_cpu_s / self.wall_s >= SATURATED * CORES:
            found.append("cores")
        return "+".join(found) or "-"


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


Send = Callable[[int, int], Awaitable[httpx.Response]]  # (client index, request number)


async def drive(
    door: str,
    send: Send,
    *,
    expect: int,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    server_pid: int,
    postgres: bool,
) -> Point:
    """``concurrency`` clients send requests back to back: ``warmup_s`` unmeasured, then
    ``seconds`` measured (a request started before the end is waited for and counted)."""
    errors: list[str] = []

    async def client(index: int, until: float, latencies: list[float] | None) -> None:
        number = 0
        while time.perf_counter() < until:
            started = time.perf_counter()
            answer = await send(index, number)
            elapsed = time.perf_counter() - started
            number += 1
            if answer.status_code != expect:
                errors.append(f"{answer.status_code} {answer.text[:300]}")
            elif latencies is not None:
                latencies.append(elapsed)

    warm_until = time.perf_counter() + warmup_s
    await asyncio.gather(*(client(i, warm_until, None) for i in range(concurrency)))
    latencies: list[float] = []
    before = Usage.now(server_pid, postgres=postgres)
    until = before.at + seconds
    await asyncio.gather(*(client(i, until, latencies) for i in range(concurrency)))
    after = Usage.now(server_pid, postgres=postgres)
    return Point(
        door=door,
        concurrency=concurrency,
        latencies=latencies,
        errors=errors,
        wall_s=after.at - before.at,
        server_cpu_s=after.server - before.server,
        server_system_s=after.server_system - before.server_system,
        server_switches=after.switches_since(before),
        client_cpu_s=after.client - before.client,
        database_cpu_s=after.database - before.database,
        machine_cpu_s=after.machine - before.machine,
    )


# --- the server and its database ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"grsai-pipeline {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@contextmanager
def database(postgres: str | None, work: Path) -> Iterator[str]:
    """A fresh application database: a SQLite file in ``work``, or ``bench_api_<pid>`` made on
    the server of ``postgres`` and dropped afterwards."""
    if postgres is None:
        yield f"sqlite:///{work}/app.db"
        return
    server = sa.make_url(postgres).set(drivername="postgresql+psycopg2")
    name = f"bench_api_{os.getpid()}"
    admin = sa.create_engine(
        server.set(database=server.database or "postgres"),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def prepared_env(database_url: str) -> tuple[dict[str, str], str]:
    """The environment of every process (the schema made) and a new API token."""
    env = {**os.environ, "GRSAI_DATABASE_URL": database_url}
    cli(env, "db", "init")
    token = cli(env, "api", "token", "create", "bench").strip()
    return env, token


class Server:
    """``grsai-pipeline api serve`` on a free loopback port; its log (the access log, one line
    per request, as users run it) goes to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.postgres = env["GRSAI_DATABASE_URL"].startswith("postgresql")
        self.log = log.open("wb")
        for _attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            self.process = subprocess.Popen(
                [str(CLI), "api", "serve", "--port", str(self.port)],
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            if self._started():
                return
            self._end()
        self.stop()
        said = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"the API did not start:\n{said}")

    def _started(self) -> bool:
        deadline = time.monotonic() + 60
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"{self.base_url}/healthz", timeout=1).raise_for_status()
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            # Our process answers, not another one on the port (it would have exited).
            time.sleep(0.2)
            return self.process.poll() is None
        return False

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self._end()
        self.log.close()

    def _end(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def batch_tasks(size: int) -> list[dict[str, Any]]:
    return [{"prompt": f"benchmark task {n}", "model": "sora-2"} for n in range(size)]


def batch_body(user: str, size: int) -> bytes:
    return json.dumps({"user_id": user, "tasks": batch_tasks(size)}).encode()


# --- the HTTP doors -------------------------------------------------------------------------


@dataclass
class Run:
    points: list[Point] = field(default_factory=list)
    posted: dict[str, int] = field(default_factory=dict)  # user -> batches created
    large_ids: list[str] = field(default_factory=list)
    small_ids: list[str] = field(default_factory=list)


def client_of(base_url: str, token: str) -> httpx.AsyncClient:
    """httpx over aiohttp's pool (100 connections: more than any concurrency here)."""
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        transport=AiohttpTransport(),
        timeout=httpx.Timeout(120.0),
    )


BATCH_ID = re.compile(rb'"batch_id":\s*"([^"]+)"')


def batch_id_of(answer: httpx.Response) -> str:
    """The new batch's id, from the head of the answer (parsing 300 KB would cost the client)."""
    found = BATCH_ID.search(answer.content, 0, 200)
    assert found, answer.text[:200]
    return found.group(1).decode()


async def measure_http(args: argparse.Namespace, server: Server, token: str) -> Run:
    run = Run()
    post_levels = [int(c) for c in args.post_concurrency.split(",")]
    get_levels = [int(c) for c in args.get_concurrency.split(",")]
    users = (
        ["bench-user-0"] if args.one_user else [f"bench-user-{i}" for i in range(max(post_levels))]
    )
    bodies = {user: batch_body(user, args.tasks) for user in users}
    json_header = {"Content-Type": "application/json"}
    async with client_of(server.base_url, token) as http:
        for user in users:
            granted = await http.post(f"/v1/users/{user}/grants", json={"amount": 2**50})
            granted.raise_for_status()

        async def point(door: str, send: Send, expect: int, concurrency: int) -> Point:
            """The point measured; again (up to ``--retries`` times) while others were busy,
            keeping the quietest measure."""
            tries: list[Point] = []
            while len(tries) <= args.retries and (not tries or tries[-1].noisy):
                wait_quiet(args.quiet_wait)  # nothing in flight: blocking the loop is harmless
                tries.append(
                    await drive(
                        door,
                        send,
                        expect=expect,
                        concurrency=concurrency,
                        seconds=args.seconds,
                        warmup_s=args.warmup,
                        server_pid=server.pid,
                        postgres=server.postgres,
                    )
                )
            kept = min(tries, key=lambda p: p.others_cpu_s / p.wall_s)
            kept.tries = len(tries)
            return kept

        async def healthz(_index: int, _number: int) -> httpx.Response:
            return await http.get("/healthz")

        async def post(index: int, _number: int) -> httpx.Response:
            user = users[index % len(users)]
            answer = await http.post("/v1/batches", content=bodies[user], headers=json_header)
            if answer.status_code == 201:
                run.posted[user] = run.posted.get(user, 0) + 1
                if len(run.large_ids) < 64:
                    run.large_ids.append(batch_id_of(answer))
            return answer

        def get_of(ids: list[str]) -> Send:
            async def get(index: int, number: int) -> httpx.Response:
                return await http.get(f"/v1/batches/{ids[(index + number) % len(ids)]}")

            return get

        for concurrency in get_levels:
            run.points.append(await point("GET /healthz", healthz, 200, concurrency))
            report(run.points[-1])
        for concurrency in post_levels:
            door = f"POST /v1/batches ({args.tasks:,} tasks)"
            run.points.append(await point(door, post, 201, concurrency))
            report(run.points[-1])
        for _ in range(8):
            made = await http.post(
                "/v1/batches", content=batch_body(users[0], args.small), headers=json_header
            )
            made.raise_for_status()
            run.small_ids.append(batch_id_of(made))
        answer = (await http.get(f"/v1/batches/{run.large_ids[0]}")).json()
        assert len(answer["tasks"]) == args.tasks, "GET did not answer the whole batch"
        for size, ids in ((args.tasks, run.large_ids), (args.small, run.small_ids)):
            for concurrency in get_levels:
                door = f"GET /v1/batches/{{id}} ({size:,} tasks)"
                run.points.append(await point(door, get_of(ids), 200, concurrency))
                report(run.points[-1])
        check_credits(run, await held_credits(http, users), args)
    return run


async def held_credits(http: httpx.AsyncClient, users: list[str]) -> dict[str, int]:
    held = {}
    for user in users:
        answer = await http.get(f"/v1/users/{user}/credits")
        answer.raise_for_status()
        held[user] = int(answer.json()["held"])
    return held


def check_credits(run: Run, held: dict[str, int], args: argparse.Namespace) -> None:
    """Every 201 reserved its batch's credits, and nothing else was reserved."""
    expected = {user: PRICE * args.tasks * run.posted.get(user, 0) for user in held}
    first = next(iter(held))
    expected[first] += PRICE * args.small * len(run.small_ids)
    if held != expected:
        print(f"ODD: credits held {held}, expected from the 201 answers {expected}")
    else:
        created = sum(run.posted.values())
        print(f"credits held match the {created} batches of {args.tasks:,} tasks created (201)")


# --- the command line -----------------------------------------------------------------------


@dataclass
class Calls:
    what: str
    wall_s: list[float]
    cpu_s: list[float]


def time_calls(what: str, command: list[str], env: dict[str, str], calls: int) -> Calls:
    walls, cpus = [], []
    for _ in range(calls):
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(process.pid, 0)
        walls.append(time.perf_counter() - started)
        cpus.append(usage.ru_utime + usage.ru_stime)
        if os.waitstatus_to_exitcode(status) != 0:
            err = process.stderr.read().decode() if process.stderr else ""
            raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
        if process.stderr:
            process.stderr.close()
    return Calls(what, walls, cpus)


def measure_cli(args: argparse.Namespace, env: dict[str, str], work: Path) -> list[Calls]:
    batch_file = work / f"batch-{args.tasks}.json"
    batch_file.write_text(json.dumps(batch_tasks(args.tasks)))
    cli(env, "credits", "grant", "bench-cli", str(2**50))
    create = [str(CLI), "batch", "create", str(batch_file), "--user", "bench-cli"]
    wait_quiet(args.quiet_wait)
    found = [
        time_calls("grsai-pipeline --help", [str(CLI), "--help"], env, args.cli_calls),
        time_calls(
            f"grsai-pipeline batch create ({args.tasks:,} tasks)", create, env, args.cli_calls
        ),
    ]
    for calls in found:
        report_calls(calls)
    return found


# --- the table ------------------------------------------------------------------------------


def wait_quiet(wait_s: float) -> None:
    """Wait, up to ``wait_s``, until the machine has been idle for a second (the server too):
    on a shared machine, someone else's burst should not land in a point."""
    deadline = time.perf_counter() + wait_s
    while time.perf_counter() < deadline:
        before, started = machine_busy(), time.perf_counter()
        time.sleep(1.0)
        if (machine_busy() - before) / (time.perf_counter() - started) < QUIET:
            return
    if wait_s > 0:
        print(f"    (the machine was still busy after {wait_s:g} s of waiting: measuring anyway)")


def quiet_check() -> None:
    """How busy the machine is before the run: the figures assume nothing else runs."""
    before, started = machine_busy(), time.perf_counter()
    time.sleep(2)
    busy = (machine_busy() - before) / (time.perf_counter() - started)
    warning = "" if busy < QUIET else " - NOT QUIET: something else runs; figures will be low"
    print(f"before the run the machine was busy {busy:.2f} of {CORES} cores{warning}")


def header(args: argparse.Namespace, database_url: str) -> None:
    kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    users = "one user" if args.one_user else "a user per client"
    print(
        f"database {kind}; {CORES} cores; {args.seconds:g} s per point after {args.warmup:g} s"
        f" of warm-up; POST: {users}; client: httpx over aiohttp on uvloop, one thread"
    )
    print(
        f"{'door':<34} {'conc':>4} {'reqs':>6} {'err':>4} {'req/s':>8} {'p50 ms':>8}"
        f" {'p95 ms':>8} {'max ms':>8} | {'server cpu s':>12} {'sys':>4} {'ms/req':>7}"
        f" {'core':>5} {'cs/req':>6} | {'client core':>11} | {'db core':>7} |"
        f" {'others core':>11} | bound"
    )


def report(p: Point) -> None:
    print(
        f"{p.door:<34} {p.concurrency:>4} {p.requests:>6} {len(p.errors):>4} {p.rate:>8.1f}"
        f" {p.quantile_ms(0.5):>8.1f} {p.quantile_ms(0.95):>8.1f} {p.quantile_ms(1.0):>8.1f} |"
        f" {p.server_cpu_s:>12.2f} {p.server_system_s / max(p.server_cpu_s, 1e-9):>4.0%}"
        f" {p.server_ms_per_request:>7.2f}"
        f" {p.server_cpu_s / p.wall_s:>5.2f} {p.server_switches / max(p.requests, 1):>6.0f} |"
        f" {p.client_cpu_s / p.wall_s:>11.2f} | {p.database_cpu_s / p.wall_s:>7.2f} |"
        f" {p.others_cpu_s / p.wall_s:>11.2f} | {p.bound}",
        flush=True,
    )
    if p.tries > 1:
        print(f"    (measured {p.tries} times, others busy; the quietest kept)")
    for error in p.errors[:3]:
        print(f"    error: {error}")


def report_calls(c: Calls) -> None:
    print(
        f"{c.what:<44} {len(c.wall_s)} calls, one at a time: wall p50 {quantile(c.wall_s, 0.5):.2f}"
        f" s, p95 {quantile(c.wall_s, 0.95):.2f} s, max {max(c.wall_s):.2f} s;"
        f" CPU per call {statistics.median(c.cpu_s):.2f} s",
        flush=True,
    )


def find(points: list[Point], door: str, concurrency: int | None = None) -> list[Point]:
    return [
        p
        for p in points
        if p.door.startswith(door) and concurrency in (None, p.concurrency) and p.requests
    ]


def ratios(run: Run, calls: list[Calls], args: argparse.Namespace) -> None:
    """What the framework costs against the work, and the HTTP door against the CLI's. CPU per
    request is compared at concurrency 1, where no thread waits for another."""
    floor, floors = find(run.points, "GET /healthz", 1), find(run.points, "GET /healthz")
    if not floor or not floors:
        return
    floor_ms, floor_cpu = floor[0].quantile_ms(0.5), floor[0].server_ms_per_request
    floor_best = max(floors, key=lambda p: p.rate)
    print()
    print(
        f"floor: GET /healthz at concurrency 1 p50 {floor_ms:.2f} ms, server CPU"
        f" {floor_cpu:.2f} ms per request; at best {floor_best.rate:.0f} req/s (concurrency"
        f" {floor_best.concurrency})"
    )
    doors = [
        ("POST /v1/batches", f"POST of {args.tasks:,} tasks"),
        (f"GET /v1/batches/{{id}} ({args.tasks:,}", f"GET of {args.tasks:,} tasks"),
        (f"GET /v1/batches/{{id}} ({args.small:,}", f"GET of {args.small:,} tasks"),
    ]
    for door, name in doors:
        one, every = find(run.points, door, 1), find(run.points, door)
        if not one or not every:
            continue
        first, best, most = one[0], max(every, key=lambda p: p.rate), every[-1]
        tasks = f" = {best.rate * args.tasks:,.0f} tasks/s" if name.startswith("POST") else ""
        print(
            f"{name}: at concurrency 1 p50 {first.quantile_ms(0.5):.1f} ms"
            f" ({first.quantile_ms(0.5) / floor_ms:.0f}x the floor's), server CPU"
            f" {first.server_ms_per_request:.2f} ms per request"
            f" ({first.server_ms_per_request / floor_cpu:.0f}x the floor's); at best"
            f" {best.rate:.1f} req/s{tasks} (concurrency {best.concurrency},"
            f" {best.rate / floor_best.rate:.3f}x the floor's best); at concurrency"
            f" {most.concurrency} server CPU {most.server_ms_per_request:.2f} ms per request"
            f" ({most.server_ms_per_request / first.server_ms_per_request:.1f}x concurrency 1's),"
            f" {most.server_switches / most.requests:.0f} context switches per request"
            f" ({first.server_switches / first.requests:.0f} at 1)"
        )
        if first.database_cpu_s:
            one_ms = 1000 * first.database_cpu_s / first.requests
            most_ms = 1000 * most.database_cpu_s / most.requests
            print(
                f"    PostgreSQL's CPU per request: {one_ms:.2f} ms at concurrency 1,"
                f" {most_ms:.2f} ms at {most.concurrency}"
            )
    posts = find(run.points, "POST /v1/batches", 1)
    create = [c for c in calls if "create" in c.what]
    if posts and create:
        post_ms, post_cpu = posts[0].quantile_ms(0.5), posts[0].server_ms_per_request
        create_ms = 1000 * quantile(create[0].wall_s, 0.5)
        create_cpu = 1000 * statistics.median(create[0].cpu_s)
        start_ms, start_cpu = (
            1000 * quantile(calls[0].wall_s, 0.5),
            statistics.median(calls[0].cpu_s),
        )
        print(
            f"CLI `batch create`: p50 {create_ms:.0f} ms = {create_ms / post_ms:.1f}x the POST's"
            f" p50 ({post_ms:.1f} ms), CPU {create_cpu:.0f} ms per call ="
            f" {create_cpu / post_cpu:.1f}x the server's per POST; starting the command"
            f" (`grsai-pipeline --help`) alone {start_ms:.0f} ms, {start_cpu:.2f} s CPU"
        )
    bound = [f"{p.door} at {p.concurrency}" for p in run.points if "CLIENT" in p.bound]
    if bound:
        print(
            "CLIENT-BOUND (the client used over 90% of a core; these req/s are a floor of the"
            " server's): " + "; ".join(bound)
        )
    else:
        print("the client was not the bottleneck at any point (under 90% of a core throughout)")


# --- the profile ----------------------------------------------------------------------------

Match = Callable[[str, str], bool]  # (file, function) of a profile entry


def function(file: str, name: str) -> Match:
    return lambda path, found: path.endswith(file) and found == name


def builtin(*parts: str) -> Match:
    """C functions (cProfile files them under "~") whose name holds any of ``parts``."""
    return lambda path, found: path == "~" and any(part in found for part in parts)


# (label, entries): cumulative time per request, inclusive, summed over the matching entries.
COMMON: tuple[tuple[str, Match], ...] = (
    ("whole request in the app (ASGI, our middleware in)", function("api/limits.py", "__call__")),
    ("  token check (a database read)", function("store/tokens.py", "token_name")),
)
POST_PHASES = (
    *COMMON,
    ("  request body: json.loads", function("starlette/requests.py", "json")),
    ("  request validation (pydantic)", function("dependencies/utils.py", "request_body_to_args")),
    ("  handler post_batch", function("api/app.py", "post_batch")),
    ("    create_batch", function("store/batches.py", "create_batch")),
    ("      validate_task, once per task", function("domain/tasks.py", "validate_task")),
    ("      the transaction (store/idempotency.once)", function("store/idempotency.py", "once")),
    ("        insert batch and tasks, record reserves", function("store/batches.py", "create")),
    (
        "          record_transaction (the reserves)",
        function("store/ledger.py", "record_transaction"),
    ),
    ("        commit", builtin("'commit'")),
    ("    get_batch: read the batch back", function("store/batches.py", "get_batch")),
    ("    BatchOut.of (the answer's model)", function("api/models.py", "of")),
    ("  response: validate + dump_json", function("fastapi/routing.py", "serialize_response")),
    ("of which SQLAlchemy binds parameters", function("engine/default.py", "_init_compiled")),
    ("of which in the driver (C: execute, fetch, commit)", builtin("sqlite3.", "psycopg2.")),
)
GET_PHASES = (
    *COMMON,
    ("  handler get_one_batch", function("api/app.py", "get_one_batch")),
    ("    get_batch: the batch and its tasks", function("store/batches.py", "get_batch")),
    ("    BatchOut.of (the answer's model)", function("api/models.py", "of")),
    ("  response: validate + dump_json", function("fastapi/routing.py", "serialize_response")),
    ("of which in the driver (C: execute, fetch, commit)", builtin("sqlite3.", "psycopg2.")),
)


def profile(args: argparse.Namespace, database_url: str) -> None:
    """cProfile of POSTs and GETs of ``args.tasks`` tasks through the app, in this process."""
    import fastapi.dependencies.utils
    import fastapi.routing

    _env, token = prepared_env(database_url)
    os.environ["GRSAI_DATABASE_URL"] = database_url
    from grsai_pipeline.api.app import create_app
    from grsai_pipeline.config import load_settings
    from grsai_pipeline.store.db import get_engine

    async def inline(call: Callable[..., Any], /, *positional: Any, **named: Any) -> Any:
        return call(*positional, **named)

    # FastAPI runs sync handlers and dependencies on its thread pool, out of cProfile's sight.
    fastapi.routing.run_in_threadpool = inline  # type: ignore[attr-defined,assignment]
    fastapi.dependencies.utils.run_in_threadpool = inline  # type: ignore[attr-defined,assignment]
    settings = load_settings()
    app = create_app(get_engine(database_url), settings.price_table, lease_s=1.0)
    body = batch_body("bench-profile", args.tasks)
    count = args.profile_requests
    post_profile, get_profile = cProfile.Profile(), cProfile.Profile()

    async def timed(
        send: Callable[[], Awaitable[httpx.Response]],
        expect: int,
        profiler: cProfile.Profile | None,
    ) -> tuple[float, list[httpx.Response]]:
        answers = []
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        for _ in range(count):
            answers.append(await send())
        if profiler:
            profiler.disable()
        for answer in answers:
            assert answer.status_code == expect, answer.text
        return time.perf_counter() - started, answers

    async def requests() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers
                                     ) as http:  # fmt: skip
            granted = await http.post("/v1/users/bench-profile/grants", json={"amount": 2**50})
            granted.raise_for_status()
            made = await http.post("/v1/batches", content=body)  # warm-up
            made.raise_for_status()
            batch_id = made.json()["batch_id"]

            def post() -> Awaitable[httpx.Response]:
                return http.post("/v1/batches", content=body)

            def get() -> Awaitable[httpx.Response]:
                return http.get(f"/v1/batches/{batch_id}")

            post_s, _ = await timed(post, 201, None)
            await timed(post, 201, post_profile)
            get_s, _ = await timed(get, 200, None)
            await timed(get, 200, get_profile)
            return post_s, get_s

    post_s, get_s = asyncio.run(requests())
    kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
    print(f"in-process, {kind}, {count} requests each of {args.tasks:,} tasks, one at a time")
    for name, seconds, profiler, phases in (
        ("POST /v1/batches", post_s, post_profile, POST_PHASES),
        ("GET /v1/batches/{id}", get_s, get_profile, GET_PHASES),
    ):
        print(f"\n{name}: {1000 * seconds / count:.1f} ms per request unprofiled; under cProfile:")
        print_phases(pstats.Stats(profiler), count, phases)
        print(f"  top functions by own time ({name}, ms per request):")
        print_top(pstats.Stats(profiler), count, args.profile_top)


def print_phases(stats: pstats.Stats, count: int, phases: tuple[tuple[str, Match], ...]) -> None:
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = None
    for label, match in phases:
        cumulative = sum(
            entry[3] for (path, _line, name), entry in table.items() if match(path, name)
        )
        total = total or cumulative
        if cumulative and total:
            print(f"  {label:<52} {1000 * cumulative / count:>8.1f} ms {cumulative / total:>6.0%}")


def print_top(stats: pstats.Stats, count: int, top: int) -> None:
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (path, line, name), (_cc, calls, own, cumulative, _callers) in ranked:
        where = "/".join(Path(path).parts[-2:]) if path != "~" else "(builtin)"
        print(
            f"    {1000 * own / count:>7.2f} own {1000 * cumulative / count:>7.2f} cum"
            f" {calls // count:>6} calls  {name} ({where}:{line})"
        )


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--postgres", nargs="?", const=LOCAL_POSTGRES, metavar="URL",
                        help="a fresh database (bench_api_<pid>) on this server, dropped after;"
                             f" default {LOCAL_POSTGRES}")  # fmt: skip
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in a large batch")
    parser.add_argument("--small", type=int, default=3, help="tasks in a small batch")
    parser.add_argument("--post-concurrency", default="1,4,8", help="clients, comma-separated")
    parser.add_argument("--get-concurrency", default="1,8,32", help="clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured, per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured, per point")
    parser.add_argument("--cli-calls", type=int, default=5, help="`batch create` calls")
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="seconds to wait for an idle machine"
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="measures again of a point others disturbed"
    )
    parser.add_argument("--one-user", action="store_true", help="every POST by the same user")
    parser.add_argument("--profile", action="store_true", help="only the in-process profile")
    parser.add_argument("--profile-requests", type=int, default=20)
    parser.add_argument("--profile-top", type=int, default=20)
    args = parser.parse_args()

    import uvloop

    with tempfile.TemporaryDirectory(prefix="grsai-bench-api-") as tmp:
        work = Path(tmp)
        with database(args.postgres, work) as database_url:
            if args.profile:
                profile(args, database_url)
                return
            env, token = prepared_env(database_url)
            quiet_check()
            server = Server(env, work / "api.log")
            try:
                start_cpu = cpu_of(server.pid)
                header(args, database_url)
                run = uvloop.run(measure_http(args, server, token))
                calls = measure_cli(args, env, work)
                total_cpu = cpu_of(server.pid)
            finally:
                server.stop()
            ratios(run, calls, args)
            print(
                f"server process CPU: {total_cpu:.1f} s in all, of which {start_cpu:.1f} s"
                " starting up (imports, settings, database check)"
            )


if __name__ == "__main__":
    main()
