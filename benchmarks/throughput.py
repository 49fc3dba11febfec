"""SPEC 7 throughput: one batch through `grsai-pipeline run --until-settled` against the floor,
a minimal asyncio loop making the same calls, both against one API stand-in in one run.

    python benchmarks/throughput.py                          # 1,000, 5,000 and 10,000 tasks
    python benchmarks/throughput.py --tasks 1000,10000,50000 # memory growth
    python benchmarks/throughput.py --concurrency 10 --poll-interval 2 --generation-s 1 3
    python benchmarks/throughput.py --tasks 200 --smoke      # CI: it completes, no figures kept

The configuration users run (issue 9): `GRSAI_MAX_CONCURRENCY=32`, `GRSAI_POLL_INTERVAL_S=0.2`,
an API answering in 20 ms, every generation finished by its first poll. The stand-in is the
simulator in its own process (its CPU is printed, so one can see it is not the bottleneck).

The floor ("loop") is what the issue measured: aiohttp on asyncio, submit every task, then poll
rounds every interval until every task is done, nothing stored. The pipeline is the command a
user runs, measured from exec to exit (imports, Dagster instance, run, settlement); its Dagster
run alone is printed beside it. CPU is user + system of the whole process, from `wait4`.
Each side runs in a fresh process, so its peak RSS is its own.

Set GRSAI_DATABASE_URL (a postgresql+psycopg2:// URL of an empty database) to run the pipeline
on PostgreSQL instead of a SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request
    from starlette.responses import Response

    from grsai_pipeline.dev.simulator import Simulator

API_KEY = "sk-benchmark"
SORA_SUBMIT_PATH = "/v1/video/sora-video"
POLL_PATH = "/v1/draw/result"
HERE = Path(__file__).resolve()
CLI = Path(sys.executable).with_name("grsai-pipeline")


# --- the floor: a minimal asyncio loop ------------------------------------------------------


def sora_body(n: int) -> dict[str, Any]:
    # Exactly what the pipeline sends for {"prompt": ..., "model": "sora-2"}.
    return {"model": "sora-2", "prompt": f"benchmark task {n}", "aspectRatio": "9:16",
            "duration": 10, "size": "small", "webHook": "-1", "shutProgress": False}  # fmt: skip


async def minimal_loop(base_url: str, tasks: int, concurrency: int, interval: float) -> None:
    """Submit every task, then poll rounds every ``interval`` until all are done."""
    import aiohttp

    slots = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url, headers=headers, connector=connector) as http:

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with slots, http.post(path, json=body) as response:
                answer: dict[str, Any] = await response.json()
                return answer

        async def submit(n: int) -> str:
            return str((await call(SORA_SUBMIT_PATH, sora_body(n)))["data"]["id"])

        async def is_done(remote_id: str) -> bool:
            data = (await call(POLL_PATH, {"id": remote_id}))["data"]
            return bool(data["status"] in ("succeeded", "failed"))

        waiting = list(await asyncio.gather(*(submit(n) for n in range(tasks))))
        while waiting:
            await asyncio.sleep(interval)
            done = await asyncio.gather(*(is_done(r) for r in waiting))
            waiting = [r for r, finished in zip(waiting, done, strict=True) if not finished]


# --- one side, in its own process -----------------------------------------------------------


@dataclass
class Side:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    requests: int
    stand_in_cpu_s: float
    run_s: float | None = None


def _cpu_of(pid: int) -> float:
    """User + system seconds a live process has used (the stand-in's, read from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(command: list[str], env: dict[str, str], stand_in: StandIn) -> Side:
    """Run ``command`` to its end; its wall time, CPU and peak RSS, and the stand-in's work."""
    stand_in.reset()
    stand_in_cpu = _cpu_of(stand_in.pid)
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        shown = " ".join(map(str, command))
        raise SystemExit(f"{shown} failed:\n{out.decode()}\n{err.decode()[-3000:]}")
    stats = stand_in.stats()
    return Side(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        requests=stats.get("submit_requests", 0) + stats.get("poll_requests", 0),
        stand_in_cpu_s=_cpu_of(stand_in.pid) - stand_in_cpu,
    )


# --- the API stand-in -----------------------------------------------------------------------


class StandIn:
    """The simulator in its own process, quiet, answering in ``latency_s``."""

    def __init__(
        self, latency_s: float, generation_s: tuple[float, float], *, log_polls: bool = False
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = {
            "api_key": API_KEY,
            "latency_s": [latency_s, latency_s],
            "generation_s": list(generation_s),
            "mix": {"succeeded": 1.0},
            "seed": 7,
            "log_polls": log_polls,
        }
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), "--serve-stand-in", str(self.port), json.dumps(config)]
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit("the API stand-in did not start") from None
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _call(self, method: str, path: str) -> dict[str, Any]:
        import urllib.request

        request = urllib.request.Request(f"{self.base_url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/stats")

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def polls(self) -> dict[str, list[float]]:
        """Per remote task id, the wall-clock times its polls arrived (with ``log_polls``)."""
        return {task: list(times) for task, times in self._call("GET", "/_sim/polls").items()}

    def remote_tasks(self) -> dict[str, tuple[float, float]]:
        """Per remote task id, when it was made upstream (wall clock) and when it ended there."""
        answer = self._call("GET", "/_bench/tasks")
        return {task: (float(made), float(ended)) for task, (made, ended) in answer.items()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def serve_stand_in(port: int, config_json: str) -> None:
    import uvicorn
    from starlette.routing import Route

    from grsai_pipeline.dev.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig.model_validate(json.loads(config_json))
    simulator = Simulator(config)
    simulator.app.router.routes.append(
        Route("/_bench/tasks", _remote_tasks_route(simulator), methods=["GET"])
    )
    # No access log: at thousands of requests a second, printing it would be the bottleneck.
    uvicorn.run(simulator.app, port=port, log_level="warning", access_log=False)


def _remote_tasks_route(simulator: Simulator) -> Callable[[Request], Awaitable[Response]]:
    """``GET /_bench/tasks``: per remote task id, [made, ended] upstream, wall-clock seconds.

    The simulator keeps a task's start on the monotonic clock; it is turned into wall-clock
    time here, on the clock the poll log uses. A task has ended (its poll answers it final)
    ``duration_s`` after it was made."""

    from starlette.responses import JSONResponse

    async def remote_tasks(request: Request) -> Response:
        offset = time.time() - time.monotonic()
        return JSONResponse(
            {
                task.id: [offset + task.created, offset + task.created + task.duration_s]
                for task in simulator.state.tasks.values()
            }
        )

    return remote_tasks


# --- the pipeline ---------------------------------------------------------------------------


def pipeline_env(args: argparse.Namespace, base_url: str, work: Path) -> dict[str, str]:
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    database_url = os.environ.get("GRSAI_DATABASE_URL") or f"sqlite:///{work}/app.db"
    return {
        **os.environ,
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": base_url,
        "GRSAI_DATABASE_URL": database_url,
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "GRSAI_POLL_INTERVAL_S": str(args.poll_interval),
        "GRSAI_POLL_BUDGET_S": "3600",
        # Submit to settlement, as the floor does; copying the videos (SPEC 8) is not timed here.
        "GRSAI_ARCHIVE_URL": str(work / "videos"),
        "GRSAI_ARCHIVE_BUDGET_S": "0",
        "DAGSTER_HOME": str(home),
    }


def create_batch(env: dict[str, str], work: Path, size: int) -> str:
    """A batch of ``size`` Sora tasks, made with the CLI as a user makes one (not timed)."""
    tasks = [{"prompt": f"benchmark task {n}", "model": "sora-2"} for n in range(size)]
    batch_file = work / f"batch-{size}.json"
    batch_file.write_text(json.dumps(tasks))
    for command in (["db", "init"], ["credits", "grant", "bench", str(10 * size)]):
        subprocess.run([CLI, *command], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [CLI, "batch", "create", str(batch_file), "--user", "bench"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return made.stdout.strip()


def dagster_run_seconds(env: dict[str, str]) -> float | None:
    """How long the batch's Dagster run took, from the instance's own run record."""
    probe = (
        "import dagster as dg, json\n"
        "i = dg.DagsterInstance.get()\n"
        "r = i.get_run_records(limit=1)[0]\n"
        "print(json.dumps(r.end_time - r.start_time if r.end_time and r.start_time else None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    try:
        value = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None
    return float(value) if value is not None else None


# --- the table ------------------------------------------------------------------------------


def ms_per_task(seconds: float, tasks: int) -> float:
    return 1000 * seconds / tasks


def print_header(args: argparse.Namespace) -> None:
    print(
        f"concurrency {args.concurrency}, poll interval {args.poll_interval} s, API latency "
        f"{1000 * args.latency:.0f} ms, generation {args.generation_s[0]}-{args.generation_s[1]}"
        f" s; database {'PostgreSQL' if os.environ.get('GRSAI_DATABASE_URL') else 'SQLite'};"
        f" {os.cpu_count()} cores"
    )
    print(
        f"{'tasks':>6} | {'loop s':>6} {'pipe s':>6} {'ratio':>5} | {'run s':>6} {'ratio':>5} |"
        f" {'loop cpu':>8} {'pipe cpu':>8} ms/task | {'loop':>5} {'pipe':>5} MiB |"
        f" req/task loop pipe | stand-in cpu s"
    )


def print_row(tasks: int, loop: Side, pipe: Side) -> None:
    run = f"{pipe.run_s:>6.1f} {pipe.run_s / loop.wall_s:>5.2f}" if pipe.run_s else f"{'-':>12}"
    print(
        f"{tasks:>6} | {loop.wall_s:>6.1f} {pipe.wall_s:>6.1f} {pipe.wall_s / loop.wall_s:>5.2f} |"
        f" {run} | {ms_per_task(loop.cpu_s, tasks):>8.2f} {ms_per_task(pipe.cpu_s, tasks):>8.2f}"
        f"         | {loop.peak_rss_mib:>5.0f} {pipe.peak_rss_mib:>5.0f}     |"
        f" {loop.requests / tasks:>13.2f} {pipe.requests / tasks:>4.2f} |"
        f" {loop.stand_in_cpu_s:>5.1f} / {pipe.stand_in_cpu_s:.1f}",
        flush=True,
    )


def print_slope(results: dict[int, tuple[Side, Side]]) -> None:
    """CPU per additional task between the smallest and largest batch, and the fixed cost."""
    if len(results) < 2:
        return
    small, large = min(results), max(results)
    for name, index in (("loop", 0), ("pipeline", 1)):
        low, high = results[small][index].cpu_s, results[large][index].cpu_s
        slope = (high - low) / (large - small)
        fixed = low - slope * small
        print(
            f"{name}: {1000 * slope:.3f} ms CPU per additional task ({small:,} -> {large:,}"
            f" tasks); fixed cost {fixed:.2f} s CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="1000,5000,10000", help="batch sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--latency", type=float, default=0.02, help="API latency, seconds")
    parser.add_argument("--generation-s", type=float, nargs=2, default=(0.0, 0.0))
    parser.add_argument("--smoke", action="store_true", help="check it completes; for CI")
    parser.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-stand-in", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stand_in:
        serve_stand_in(int(args.serve_stand_in[0]), args.serve_stand_in[1])
        return
    if args.loop:
        tasks = int(args.tasks)
        asyncio.run(minimal_loop(args.base_url, tasks, args.concurrency, args.poll_interval))
        return

    stand_in = StandIn(args.latency, tuple(args.generation_s))
    print_header(args)
    results: dict[int, tuple[Side, Side]] = {}
    try:
        for tasks in (int(n) for n in args.tasks.split(",")):
            loop_command = [
                sys.executable, str(HERE), "--loop", "--tasks", str(tasks),
                "--base-url", stand_in.base_url, "--concurrency", str(args.concurrency),
                "--poll-interval", str(args.poll_interval),
            ]  # fmt: skip
            loop = measure(loop_command, dict(os.environ), stand_in)
            with tempfile.TemporaryDirectory(prefix="grsai-bench-") as tmp:
                work = Path(tmp)
                env = pipeline_env(args, stand_in.base_url, work)
                batch_id = create_batch(env, work, tasks)
                pipe = measure([str(CLI), "run", batch_id, "--until-settled"], env, stand_in)
                pipe.run_s = dagster_run_seconds(env)
            results[tasks] = (loop, pipe)
            print_row(tasks, loop, pipe)
    finally:
        stand_in.stop()
    print_slope(results)
    if args.smoke:
        print("smoke: every batch settled")


if __name__ == "__main__":
    main()
