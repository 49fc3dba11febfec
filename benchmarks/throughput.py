"""SPEC 7 throughput: a batch through the whole pipeline against a minimal asyncio loop.

Both sides talk to the same simulator (its own process, over loopback HTTP) with the same
request concurrency and poll interval, and every generation succeeds. The baseline submits
each task and polls it every interval until it ends, nothing more; the pipeline does what it
does in production: Dagster run, database claims, records, settlement. Each side runs in its
own process, so its peak memory is its own.

    python benchmarks/throughput.py                      # 10,000 tasks
    python benchmarks/throughput.py --tasks 1000,4000    # several sizes: memory per task

Figures: wall seconds of each side, the ratio (SPEC 7 asks for at most 1.3), requests made,
and peak RSS. Set GRSAI_DATABASE_URL to run the pipeline on PostgreSQL instead of SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from grsai_pipeline.grsai.simulator import Simulator, SimulatorConfig
from grsai_pipeline.grsai.wire import POLL_PATH, SORA_SUBMIT_PATH

API_KEY = "sk-benchmark"


def simulator_config(generation_s: tuple[float, float]) -> SimulatorConfig:
    return SimulatorConfig(
        api_key=API_KEY,
        latency_s=(0.01, 0.05),
        generation_s=generation_s,
        mix={"succeeded": 1.0},
        seed=7,
    )


def serve_quietly(port: int, config: SimulatorConfig) -> None:
    # No access log: at thousands of requests a second, printing it would be the bottleneck.
    uvicorn.run(Simulator(config).app, port=port, log_level="warning", access_log=False)


def sora_body(n: int) -> dict[str, Any]:
    # Exactly what the pipeline sends for {"prompt": ..., "model": "sora-2"}.
    return {"model": "sora-2", "prompt": f"benchmark task {n}", "aspectRatio": "9:16",
            "duration": 10, "size": "small", "webHook": "-1", "shutProgress": False}  # fmt: skip


async def baseline(base_url: str, tasks: int, concurrency: int, interval: float) -> dict[str, Any]:
    """The least a client can do: submit, then poll every interval until the task ends."""
    slots = asyncio.Semaphore(concurrency)
    calls = {"submit": 0, "poll": 0}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with slots:
                calls["submit" if path == SORA_SUBMIT_PATH else "poll"] += 1
                answer: dict[str, Any] = (await client.post(path, json=body, timeout=30)).json()
                return answer

        async def one(n: int) -> None:
            remote_id = (await call(SORA_SUBMIT_PATH, sora_body(n)))["data"]["id"]
            while True:
                await asyncio.sleep(interval)
                data = (await call(POLL_PATH, {"id": remote_id}))["data"]
                if data["status"] in ("succeeded", "failed"):
                    return

        await asyncio.gather(*(one(n) for n in range(tasks)))
    return calls


def run_baseline(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    started = time.monotonic()
    calls = asyncio.run(baseline(base_url, args.size, args.concurrency, args.poll_interval))
    return {"seconds": time.monotonic() - started, "requests": calls}


def run_pipeline(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    """The pipeline as `grsai-pipeline run --until-settled` runs it, in this process."""
    work = Path(tempfile.mkdtemp(prefix="grsai-bench-"))
    (work / "dagster_home").mkdir()
    (work / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ |= {
        "GRSAI_API_KEY": API_KEY,
        "GRSAI_BASE_URL": base_url,
        "GRSAI_DATABASE_URL": os.environ.get("GRSAI_DATABASE_URL", f"sqlite:///{work}/app.db"),
        "GRSAI_MAX_CONCURRENCY": str(args.concurrency),
        "GRSAI_POLL_INTERVAL_S": str(args.poll_interval),
        "GRSAI_POLL_BUDGET_S": "3600",
        "DAGSTER_HOME": str(work / "dagster_home"),
    }
    from grsai_pipeline.cli.run import open_instance, run_until
    from grsai_pipeline.config import load_settings
    from grsai_pipeline.store.accounts import grant_credits
    from grsai_pipeline.store.batches import create_batch
    from grsai_pipeline.store.db import get_engine
    from grsai_pipeline.store.migrate import upgrade_schema

    settings = load_settings()
    engine = get_engine(settings.database_url)
    upgrade_schema(engine)
    user = f"bench-{os.getpid()}"
    grant_credits(engine, user, 10 * args.size)
    tasks = [{"prompt": f"benchmark task {n}", "model": "sora-2"} for n in range(args.size)]
    batch_id = create_batch(engine, user, tasks, settings.price_table).batch_id
    instance = open_instance(settings)
    started = time.monotonic()
    view = run_until(instance, settings, batch_id, until_settled=True, timeout=None, progress=False)
    seconds = time.monotonic() - started
    assert view.status == "settled", view.status
    return {"seconds": seconds, "counts": dict(view.counts)}


def measure(args: argparse.Namespace) -> None:
    """One side, in this (child) process; prints its figures as one JSON line."""
    figures = (run_baseline if args.only == "baseline" else run_pipeline)(args, args.base_url)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(figures | {"peak_rss_mib": round(rss_kib / 1024, 1)}))


def child(args: argparse.Namespace, side: str, size: int, base_url: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--only", side, "--size", str(size),
               "--base-url", base_url, "--concurrency", str(args.concurrency),
               "--poll-interval", str(args.poll_interval)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000", help="batch sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--generation-s", type=float, nargs=2, default=(1.0, 3.0))
    parser.add_argument("--only", choices=["baseline", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        measure(args)
        return

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    simulator = multiprocessing.Process(
        target=serve_quietly, args=(port, simulator_config(tuple(args.generation_s))),
        daemon=True,
    )  # fmt: skip
    simulator.start()
    base_url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base_url}/_sim/stats", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    print(f"concurrency {args.concurrency}, poll interval {args.poll_interval} s, "
          f"generation {args.generation_s[0]}-{args.generation_s[1]} s")  # fmt: skip
    print(f"{'tasks':>7} {'baseline s':>11} {'pipeline s':>11} {'ratio':>6} "
          f"{'base MiB':>9} {'pipe MiB':>9}  requests (baseline / pipeline)")  # fmt: skip
    try:
        for size in (int(n) for n in args.tasks.split(",")):
            httpx.post(f"{base_url}/_sim/reset")
            base = child(args, "baseline", size, base_url)
            stats = httpx.get(f"{base_url}/_sim/stats").json()
            base_requests = stats.get("submit_requests", 0) + stats.get("poll_requests", 0)
            httpx.post(f"{base_url}/_sim/reset")
            pipe = child(args, "pipeline", size, base_url)
            stats = httpx.get(f"{base_url}/_sim/stats").json()
            pipe_requests = stats.get("submit_requests", 0) + stats.get("poll_requests", 0)
            ratio = pipe["seconds"] / base["seconds"]
            print(f"{size:>7} {base['seconds']:>11.1f} {pipe['seconds']:>11.1f} {ratio:>6.2f} "
                  f"{base['peak_rss_mib']:>9} {pipe['peak_rss_mib']:>9}  "
                  f"{base_requests} / {pipe_requests}", flush=True)  # fmt: skip
    finally:
        simulator.terminate()


if __name__ == "__main__":
    main()
